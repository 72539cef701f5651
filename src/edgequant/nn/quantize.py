"""``quantize_(model, config)``: replace nn.Linear layers in place (torchao-style verb).

Works on any nn.Module tree, Hugging Face transformers models included (their ``nn.Linear`` projections;
``Conv1D`` of GPT-2 is not an nn.Linear and is left alone). Returns a QuantizeReport naming every layer and
what happened to it, with its relative weight error.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch
from torch import nn

from edgequant.errors import ConfigError
from edgequant.nn.configs import FP4Config, Int8Config, Int8DynamicConfig, NF4Config, _LayerSelection
from edgequant.nn.int8_dynamic import Int8DynamicLinear
from edgequant.nn.linear4bit import Linear4bit
from edgequant.nn.linear8bit import Linear8bitLt


@dataclass
class QuantizeReport:
    """Per layer: quantized (with relative weight error), kept in float (error above threshold) or skipped."""

    quantized: dict[str, float] = field(default_factory=dict)
    kept_high_precision: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def _build(config, linear: nn.Linear, name: str) -> nn.Module:
    if isinstance(config, NF4Config | FP4Config):
        return Linear4bit.from_linear(
            linear,
            name=name,
            quant_type=config.quant_type,
            blocksize=config.blocksize,
            compress_statistics=config.compress_statistics,
            compute_dtype=getattr(torch, config.compute_dtype),
            bnb_cpu_compatible=config.bnb_cpu_compatible,
        )
    if isinstance(config, Int8Config):
        return Linear8bitLt.from_linear(linear, name=name, threshold=config.threshold)
    if isinstance(config, Int8DynamicConfig):
        return Int8DynamicLinear.from_linear(
            linear, name=name, granularity=config.granularity, percentile=config.percentile
        )
    raise ConfigError(f"quantize_: unsupported config {type(config).__name__}; use NF4Config, FP4Config, ...")


def selected(name: str, config: _LayerSelection) -> bool:
    last = name.rsplit(".", 1)[-1]
    if any(fnmatch.fnmatchcase(last, p) or fnmatch.fnmatchcase(name, p) for p in config.skip_modules):
        return False
    if not any(fnmatch.fnmatchcase(name, p) for p in config.include):
        return False
    return not any(fnmatch.fnmatchcase(name, p) for p in config.exclude)


def relative_weight_error(weight: torch.Tensor, layer: nn.Module) -> float:
    w = weight.detach().float()
    deq = layer.dequantize().float()
    denom = torch.linalg.vector_norm(w)
    return float(torch.linalg.vector_norm(w - deq) / denom) if denom > 0 else 0.0


def quantize_(model: nn.Module, config) -> QuantizeReport:
    """Replace the selected nn.Linear modules of ``model`` in place; see configs.py for the options."""
    if not isinstance(config, _LayerSelection):
        raise ConfigError(
            f"quantize_: config must be NF4Config, FP4Config, Int8Config or Int8DynamicConfig, "
            f"got {type(config).__name__}"
        )
    report = QuantizeReport()
    targets = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]
    for name, linear in targets:
        if not selected(name, config):
            report.skipped.append(name)
            continue
        with torch.no_grad():
            new = _build(config, linear, name)
        err = relative_weight_error(linear.weight, new)
        if config.keep_high_precision_above is not None and err > config.keep_high_precision_above:
            report.kept_high_precision[name] = err
            continue
        new.train(linear.training)
        _set_submodule(model, name, new)
        report.quantized[name] = err
    return report


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
