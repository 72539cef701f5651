"""Merge LoRA adapters into their base layers, and export the merged model as float safetensors.

Merging computes, per adapter, ``W' = W_base + (B @ A) * scaling`` in float32, where ``W_base`` is the plain
weight of an ``nn.Linear`` or ``dequantize()`` of a quantized base (as PEFT's ``Linear4bit.merge`` does with
``bnb.functional.dequantize_4bit``), and replaces the ``LoraLinear`` by a plain ``nn.Linear`` holding ``W'``
and the base's bias. To get a quantized model back, run ``quantize_`` on the merged model (re-quantizing
``W'`` rounds it again: the merged 4-bit model is not the 4-bit base plus an exact update).

``merged_state_dict`` gives the float checkpoint of a model whose Linear layers may still be adapters or
quantized modules: each becomes ``<module>.weight`` (float) + ``<module>.bias``, so the keys are the original
transformers model's keys, ready for ``save_pretrained``-style files and for HF -> GGUF conversion.
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import save
from torch import nn

from edgequant.core.atomic import AtomicFile
from edgequant.errors import ConfigError, NonFiniteError
from edgequant.nn.lora import LoraLinear, base_weight, is_quantized_linear, lora_modules


def merged_weight(module: LoraLinear) -> torch.Tensor:
    """``W_base + (B @ A) * scaling`` as float32 (out x in)."""
    return base_weight(module.base_layer).float() + module.delta_weight()


def _plain_linear(weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> nn.Linear:
    out_features, in_features = weight.shape
    layer = nn.Linear(in_features, out_features, bias=bias is not None, device=weight.device, dtype=dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias.detach())
    layer.requires_grad_(False)
    return layer


def merge_lora(model: nn.Module, *, dtype: torch.dtype = torch.float32) -> list[str]:
    """Replace every ``LoraLinear`` in ``model`` by an ``nn.Linear`` with the merged weight (in place).

    Returns the merged module names. Raises ``NonFiniteError`` naming the layer if a merged weight is not
    finite (nothing is replaced then).
    """
    modules = lora_modules(model)
    if not modules:
        raise ConfigError("the model has no LoRA adapters to merge")
    replacements = {}
    for name, m in modules.items():
        w = merged_weight(m)
        if not torch.isfinite(w).all():
            raise NonFiniteError(
                f"merging the LoRA adapter of {name!r} gives NaN/Inf weights; check the adapter"
            )
        replacements[name] = _plain_linear(w, getattr(m.base_layer, "bias", None), dtype)
    for name, layer in replacements.items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, layer)
    return list(replacements)


def merged_state_dict(model: nn.Module, *, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The float state dict of ``model``, adapters merged and quantized Linears dequantized (not in place).

    Tensors that share storage (tied embeddings) are kept once, under the first name in module order (the
    transformers convention: ``lm_head.weight`` is dropped when tied to ``model.embed_tokens.weight``).
    """
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    special: set[str] = set()

    def put(key: str, t: torch.Tensor, cast: bool) -> None:
        ident = (t.untyped_storage().data_ptr(), t.storage_offset())
        if t.numel() and ident in seen:
            return
        seen.add(ident)
        t = t.detach()
        out[key] = (t.to(dtype) if cast and t.is_floating_point() else t).contiguous().cpu()

    for name, module in model.named_modules():
        if any(name == s or name.startswith(s + ".") for s in special):
            continue
        prefix = f"{name}." if name else ""
        if isinstance(module, LoraLinear) or is_quantized_linear(module):
            special.add(name)
            base = module.base_layer if isinstance(module, LoraLinear) else module
            w = merged_weight(module) if isinstance(module, LoraLinear) else base_weight(module).float()
            if not torch.isfinite(w).all():
                raise NonFiniteError(f"the merged weight of {name!r} holds NaN/Inf; check the adapter")
            put(prefix + "weight", w, True)
            if getattr(base, "bias", None) is not None:
                put(prefix + "bias", base.bias, True)
            continue
        for key, p in module.named_parameters(recurse=False):
            put(prefix + key, p, True)
        persistent = set(module._buffers) - module._non_persistent_buffers_set
        for key, b in module.named_buffers(recurse=False):
            if key in persistent:
                put(prefix + key, b, True)
    return out


def save_merged_safetensors(
    model: nn.Module, path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32
) -> list[str]:
    """Write ``merged_state_dict(model, dtype)`` to ``path`` (safetensors, metadata ``format: pt``, atomic).

    Returns the tensor names. The file loads into the original (unquantized, adapter-free) model class with
    ``load_state_dict`` (tied weights re-tied by the model).
    """
    tensors = merged_state_dict(model, dtype=dtype)
    data = save(tensors, metadata={"format": "pt"})
    with AtomicFile(path) as f:
        f.write(data)
    return list(tensors)
