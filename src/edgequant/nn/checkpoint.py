"""Save / load quantized models as safetensors in bitsandbytes' state_dict layout (both directions).

The tensors are exactly ``model.state_dict()`` of the quantized model, so the keys are those bitsandbytes and
transformers write: for a 4-bit layer ``<name>.weight`` (packed uint8 column), ``<name>.weight.absmax``,
``.weight.quant_map``, [``.weight.nested_absmax``, ``.weight.nested_quant_map``],
``.weight.quant_state.bitsandbytes__nf4|fp4``; for LLM.int8 ``<name>.weight`` int8, ``<name>.SCB``,
``<name>.weight_format``. Header metadata: ``format = "pt"`` and, when given, ``edgequant_quantization`` (the
config as JSON). Loading infers each layer's kind from its keys, so checkpoints written by bitsandbytes /
transformers (``save_pretrained`` of a ``load_in_4bit`` / ``load_in_8bit`` model) load too; when the file
holds the config, each layer of that kind is rebuilt from it (compute dtype, int8 threshold, granularity...).
"""

from __future__ import annotations

import json
import os

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from edgequant.core.atomic import AtomicFile
from edgequant.errors import ConfigError, FormatError
from edgequant.nn.configs import config_from_dict
from edgequant.nn.handlers import handler_for_checkpoint, registered_handler
from edgequant.nn.quantize import set_submodule

CONFIG_KEY = "edgequant_quantization"


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
        metadata[CONFIG_KEY] = json.dumps(config.to_dict())
    data = safetensors_bytes(tensors, metadata=metadata)
    with AtomicFile(path) as f:
        f.write(data)


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise FormatError(f"{path}: not a readable safetensors file ({exc})") from None


def saved_config(metadata: dict[str, str], path: str | os.PathLike[str] = "checkpoint"):
    """The config ``save_quantized`` wrote into the header, or None when the file has none."""
    if CONFIG_KEY not in metadata:
        return None
    try:
        return config_from_dict(json.loads(metadata[CONFIG_KEY]))
    except (ValueError, TypeError, ConfigError) as exc:
        raise FormatError(
            f"{path}: header entry {CONFIG_KEY!r} is not a quantization config ({exc})"
        ) from None


def prepare_for_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], config=None) -> list[str]:
    """Swap each nn.Linear whose keys in ``tensors`` are a quantized layout for the matching quantized layer.

    A layer whose layout is ``config``'s kind is built from ``config``; any other from its keys alone
    (``LayerHandler.build_for_checkpoint``). Returns the names swapped. The new layers get their weights
    from ``load_state_dict`` afterwards.
    """
    config_handler = registered_handler(config) if config is not None else None
    swapped = []
    for name, mod in list(model.named_modules()):
        if type(mod) is not nn.Linear:
            continue
        prefix = name + "."
        handler = handler_for_checkpoint(tensors, prefix)
        if handler is None:
            continue
        if handler is config_handler:
            new = handler.build(config, mod, name)
        else:
            new = handler.build_for_checkpoint(mod, name, tensors, prefix)
        new.train(mod.training)
        set_submodule(model, name, new)
        swapped.append(name)
    return swapped


def load_quantized(model: nn.Module, path: str | os.PathLike[str], strict: bool = True) -> nn.Module:
    """Load a quantized safetensors checkpoint into a float model of the same architecture (in place)."""
    tensors, metadata = read_safetensors(path)
    prepare_for_state_dict(model, tensors, saved_config(metadata, path))
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
    handler = registered_handler(config)
    if handler is None:
        raise FormatError(f"{type(config).__name__} has no bitsandbytes/transformers equivalent")
    return handler.transformers_entry(config)
