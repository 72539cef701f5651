"""Optimizers with quantized states: Adam8bit / AdamW8bit (bitsandbytes semantics, bit-exact on CPU)."""

from edgequant.optim.adam8bit import Adam8bit, AdamW8bit

__all__ = ["Adam8bit", "AdamW8bit"]
