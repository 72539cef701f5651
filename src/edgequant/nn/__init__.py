"""Quantized layers and the model transform (bitsandbytes-compatible).

- ``Linear4bit`` (NF4/FP4, double quantization), ``Linear8bitLt`` (LLM.int8 with the mixed decomposition in
  eval and training), ``Int8DynamicLinear`` (int8 weights x per-token/per-tensor int8 activations with
  percentile clipping).
- ``quantize_(model, config)`` with ``NF4Config``, ``FP4Config``, ``Int8Config``, ``Int8DynamicConfig``.
- ``save_quantized`` / ``load_quantized``: safetensors in bitsandbytes' layout.
- LoRA / QLoRA: ``LoraConfig``, ``apply_lora`` (adapters on nn.Linear, Linear4bit or Linear8bitLt bases),
  ``merge_lora`` and merged exports (safetensors, transformers folder, GGUF), PEFT's adapter format both ways
  (``save_peft_adapter`` / ``load_peft_adapter``), ``enable_gradient_checkpointing``.

Importing this package imports torch and safetensors, nothing heavier (no transformers, no bitsandbytes).
"""

from edgequant.nn.checkpoint import load_quantized, save_quantized, transformers_quantization_config
from edgequant.nn.configs import FP4Config, Int8Config, Int8DynamicConfig, NF4Config, config_from_dict
from edgequant.nn.int8_dynamic import Int8DynamicLinear
from edgequant.nn.linear4bit import Linear4bit
from edgequant.nn.linear8bit import Linear8bitLt
from edgequant.nn.lora import (
    LoraLinear,
    apply_lora,
    lora_modules,
    lora_parameters,
    lora_state_dict,
    select_lora_targets,
)
from edgequant.nn.lora_checkpoint import enable_gradient_checkpointing
from edgequant.nn.lora_config import LoraConfig
from edgequant.nn.lora_export import export_merged_gguf, export_merged_hf
from edgequant.nn.lora_merge import merge_lora, merged_state_dict, save_merged_safetensors
from edgequant.nn.peft_format import load_peft_adapter, read_peft_config, save_peft_adapter
from edgequant.nn.quantize import LayerQuantizeReport, quantize_

__all__ = [
    "FP4Config",
    "Int8Config",
    "Int8DynamicConfig",
    "Int8DynamicLinear",
    "LayerQuantizeReport",
    "Linear4bit",
    "Linear8bitLt",
    "LoraConfig",
    "LoraLinear",
    "NF4Config",
    "apply_lora",
    "config_from_dict",
    "enable_gradient_checkpointing",
    "export_merged_gguf",
    "export_merged_hf",
    "load_peft_adapter",
    "load_quantized",
    "lora_modules",
    "lora_parameters",
    "lora_state_dict",
    "merge_lora",
    "merged_state_dict",
    "quantize_",
    "read_peft_config",
    "save_merged_safetensors",
    "save_peft_adapter",
    "save_quantized",
    "select_lora_targets",
    "transformers_quantization_config",
]
