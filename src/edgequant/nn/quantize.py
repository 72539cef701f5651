"""``quantize_(model, config)``: replace nn.Linear layers in place (torchao-style verb).

Works on any nn.Module tree, Hugging Face transformers models included (their ``nn.Linear`` projections;
``Conv1D`` of GPT-2 is not an nn.Linear and is left alone). Returns a LayerQuantizeReport naming every layer
and what happened to it, with its relative weight error. Which layer a config makes: ``nn.handlers``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch
from torch import nn

from edgequant.nn.configs import _LayerSelection
from edgequant.nn.handlers import handler_for


@dataclass
class LayerQuantizeReport:
    """Per layer: quantized (with relative weight error), kept in float (error above threshold) or skipped."""

    quantized: dict[str, float] = field(default_factory=dict)
    kept_high_precision: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


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


def quantize_(model: nn.Module, config) -> LayerQuantizeReport:
    """Replace the selected nn.Linear modules of ``model`` in place; see configs.py for the options."""
    handler = handler_for(config)
    report = LayerQuantizeReport()
    targets = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]
    for name, linear in targets:
        if not selected(name, config):
            report.skipped.append(name)
            continue
        with torch.no_grad():
            new = handler.build(config, linear, name)
        err = relative_weight_error(linear.weight, new)
        if config.keep_high_precision_above is not None and err > config.keep_high_precision_above:
            report.kept_high_precision[name] = err
            continue
        new.train(linear.training)
        set_submodule(model, name, new)
        report.quantized[name] = err
    return report


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the qualified name ``name`` of ``model`` (``"layers.0.mlp"``), in place."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
