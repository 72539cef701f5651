"""Quantized layers and the model transform (bitsandbytes-compatible).

- ``Linear4bit`` (NF4/FP4, double quantization), ``Linear8bitLt`` (LLM.int8 with the mixed decomposition in
  eval and training), ``Int8DynamicLinear`` (int8 weights x per-token/per-tensor int8 activations with
  percentile clipping).
- ``quantize_(model, config)`` with ``NF4Config``, ``FP4Config``, ``Int8Config``, ``Int8DynamicConfig``.
- ``save_quantized`` / ``load_quantized``: safetensors in bitsandbytes' layout.

Importing this package imports torch and safetensors, nothing heavier (no transformers, no bitsandbytes).
"""

from edgequant.nn.checkpoint import load_quantized, save_quantized, transformers_quantization_config
from edgequant.nn.configs import FP4Config, Int8Config, Int8DynamicConfig, NF4Config, config_from_dict
from edgequant.nn.int8_dynamic import Int8DynamicLinear
from edgequant.nn.linear4bit import Linear4bit
from edgequant.nn.linear8bit import Linear8bitLt
from edgequant.nn.quantize import QuantizeReport, quantize_

__all__ = [
    "FP4Config",
    "Int8Config",
    "Int8DynamicConfig",
    "Int8DynamicLinear",
    "Linear4bit",
    "Linear8bitLt",
    "NF4Config",
    "QuantizeReport",
    "config_from_dict",
    "load_quantized",
    "quantize_",
    "save_quantized",
    "transformers_quantization_config",
]
