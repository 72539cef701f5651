"""Quantized layers and the model transform: Linear4bit (NF4/FP4), Linear8bitLt (LLM.int8), quantize_.

Importing this package imports torch and nothing heavier (no transformers, no bitsandbytes).
"""

from edgequant.nn.linear4bit import Linear4bit

__all__ = ["Linear4bit"]
