"""Save / load quantized models as safetensors in bitsandbytes' state_dict layout (both directions).

The tensors are exactly ``model.state_dict()`` of the quantized model, so the keys are those bitsandbytes and
transformers write: for a 4-bit layer ``<name>.weight`` (packed uint8 column), ``<name>.weight.absmax``,
``.weight.quant_map``, [``.weight.nested_absmax``, ``.weight.nested_quant_map``],
``.weight.quant_state.bitsandbytes__nf4|fp4``; for LLM.int8 ``<name>.weight`` int8, ``<name>.SCB``,
``<name>.weight_format``. Header metadata: ``format = "pt"`` and, when given, ``edgequant_quantization`` (the
config as JSON). Loading infers each layer's kind from its keys, so checkpoints written by bitsandbytes /
transformers (``save_pretrained`` of a ``load_in_4bit`` / ``load_in_8bit`` model) load too.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from edgequant.core.atomic import AtomicFile
from edgequant.errors import FormatError
from edgequant.nn.int8_dynamic import Int8DynamicLinear
from edgequant.nn.linear4bit import Linear4bit
from edgequant.nn.linear8bit import Linear8bitLt
from edgequant.nn.quantize import _set_submodule


def save_quantized(model: nn.Module, path: str | os.PathLike[str], config=None) -> None:
    """Write ``model.state_dict()`` to ``path`` atomically (temp file + rename)."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in model.state_dict().items():
        t = v.detach().to("cpu").contiguous()
        if t.untyped_storage().data_ptr() in seen:  # tied weights: safetensors refuses shared storage
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        tensors[k] = t
    metadata = {"format": "pt"}
    if config is not None:
        metadata["edgequant_quantization"] = json.dumps(config.to_dict())
    data = safetensors_bytes(tensors, metadata=metadata)
    with AtomicFile(path) as f:
        f.write(data)


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise FormatError(f"{path}: not a readable safetensors file ({exc})") from None


def prepare_for_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor]) -> list[str]:
    """Swap each nn.Linear whose keys in ``tensors`` are a quantized layout for the matching quantized layer.

    Returns the names swapped. The new layers get their weights from ``load_state_dict`` afterwards.
    """
    swapped = []
    for name, mod in list(model.named_modules()):
        if type(mod) is not nn.Linear:
            continue
        prefix = name + "."
        if any(k.startswith(prefix + "weight.quant_state.bitsandbytes__") for k in tensors):
            qt = next(k for k in tensors if k.startswith(prefix + "weight.quant_state.")).rsplit("__", 1)[-1]
            new: nn.Module = Linear4bit.from_linear(
                mod, name=name, quant_type=qt, compress_statistics=False, blocksize=64
            )
        elif prefix + "SCB" in tensors:
            new = Linear8bitLt.from_linear(mod, name=name)
        elif prefix + "weight_scale" in tensors:
            new = Int8DynamicLinear.from_linear(mod, name=name)
        else:
            continue
        new.train(mod.training)
        _set_submodule(model, name, new)
        swapped.append(name)
    return swapped


def load_quantized(model: nn.Module, path: str | os.PathLike[str], strict: bool = True) -> nn.Module:
    """Load a quantized safetensors checkpoint into a float model of the same architecture (in place)."""
    tensors, _ = read_safetensors(path)
    prepare_for_state_dict(model, tensors)
    result = model.load_state_dict(tensors, strict=False)
    missing = [k for k in result.missing_keys]
    unexpected = [k for k in result.unexpected_keys]
    if strict and (missing or unexpected):
        raise FormatError(
            f"{path}: checkpoint does not fit the model: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}"
        )
    return model


def transformers_quantization_config(config) -> dict:
    """The ``quantization_config`` entry of a transformers ``config.json`` for a checkpoint made with
    ``config``; ``AutoModel*.from_pretrained`` then rebuilds the bnb layers and loads the file."""
    from edgequant.nn.configs import FP4Config, Int8Config, NF4Config

    skip = list(config.skip_modules) or None
    if isinstance(config, NF4Config | FP4Config):
        return {
            "quant_method": "bitsandbytes",
            "load_in_4bit": True,
            "load_in_8bit": False,
            "bnb_4bit_quant_type": config.quant_type,
            "bnb_4bit_use_double_quant": config.compress_statistics,
            "bnb_4bit_compute_dtype": config.compute_dtype,
            "bnb_4bit_quant_storage": "uint8",
            "llm_int8_skip_modules": skip,
        }
    if isinstance(config, Int8Config):
        return {
            "quant_method": "bitsandbytes",
            "load_in_4bit": False,
            "load_in_8bit": True,
            "llm_int8_threshold": config.threshold,
            "llm_int8_has_fp16_weight": False,
            "llm_int8_skip_modules": skip,
        }
    raise FormatError(f"{type(config).__name__} has no bitsandbytes/transformers equivalent")
