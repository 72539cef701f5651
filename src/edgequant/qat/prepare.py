"""``prepare(model, QATConfig)`` → train with any loop → ``convert(model)``.

``prepare`` swaps every ``nn.Linear``/``nn.Conv2d`` (except names matching ``config.skip``) for its QAT twin
in place and returns the model. Weight quantizers are initialized from the weights at once; activation
quantizers from ``example_inputs`` when given (one no-grad forward), else from the first training batch.
Build the optimizer after ``prepare`` so it sees the quantizers' learned parameters.

``convert`` bakes the fake-quantized weights into plain ``nn.Linear``/``nn.Conv2d`` modules (the values the
deployed model holds); a module that quantized its input keeps that quantizer, frozen in eval mode, as a
forward pre-hook. To write a GGUF file, export the *prepared* model (``edgequant.qat.export``): the
quantizers know the block scales and codes.

Scopes (progressive scope): ``"weights"`` enables weight quantizers, ``"activations"`` adds input quantizers,
``"all"`` also enables the modules named in ``config.edge_modules`` (e.g. the first and last layer).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from edgequant.errors import ConfigError
from edgequant.nn.quantize import set_submodule
from edgequant.qat.config import QATConfig
from edgequant.qat.modules import QATConv2d, QATLinear, _QATBase
from edgequant.qat.quantizers import FakeQuantizer

SCOPES = ("weights", "activations", "all")


def prepare(model: nn.Module, config: QATConfig, example_inputs=None) -> nn.Module:
    if not isinstance(config, QATConfig):
        raise ConfigError(f"prepare() needs a QATConfig, got {type(config).__name__}")
    targets = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, (nn.Linear, nn.Conv2d)) and not any(s in name for s in config.skip)
    ]
    if not targets:
        raise ConfigError("prepare(): no nn.Linear or nn.Conv2d left to quantize (check QATConfig.skip)")
    for name, mod in targets:
        cls = QATLinear if isinstance(mod, nn.Linear) else QATConv2d
        with torch.no_grad():
            new = cls(mod, config.weight_spec_for(name), config.activation, name)
        new.train(mod.training)
        set_submodule(model, name, new)
    model.qat_config = config
    set_scope(model, "all")
    if example_inputs is not None:
        with torch.no_grad():
            model(example_inputs) if not isinstance(example_inputs, dict) else model(**example_inputs)
    return model


def qat_modules(model: nn.Module) -> Iterator[tuple[str, _QATBase]]:
    for name, mod in model.named_modules():
        if isinstance(mod, _QATBase):
            yield name, mod


def quantizers(model: nn.Module, role: str | None = None) -> Iterator[tuple[str, FakeQuantizer]]:
    for name, mod in model.named_modules():
        if isinstance(mod, FakeQuantizer) and (role is None or mod.role == role):
            yield name, mod


def set_bits(model: nn.Module, bits: int, role: str = "weight") -> None:
    for _, q in quantizers(model, role):
        q.set_bits(bits)


def set_scope(model: nn.Module, scope: str) -> None:
    if scope not in SCOPES:
        raise ConfigError(f"scope {scope!r} is unknown; choose one of {SCOPES}")
    edge = getattr(model, "qat_config", QATConfig()).edge_modules
    for name, mod in qat_modules(model):
        is_edge = any(s in name for s in edge)
        on = scope == "all" or not is_edge
        if mod.weight_quantizer is not None:
            mod.weight_quantizer.enabled = on
        if mod.input_quantizer is not None:
            mod.input_quantizer.enabled = on and scope != "weights"


def _freeze_input_hook(quantizer: FakeQuantizer):
    def hook(module, args):
        return (quantizer(args[0]), *tuple(args[1:]))

    return hook


@torch.no_grad()
def convert(model: nn.Module) -> nn.Module:
    """Replace QAT modules by plain modules holding the fake-quantized weights (in place; returns model)."""
    for name, mod in list(qat_modules(model)):
        w = mod.quantized_weight().detach().clone()
        if isinstance(mod, QATLinear):
            new = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
        else:
            new = nn.Conv2d(
                w.shape[1] * mod.groups,
                w.shape[0],
                tuple(w.shape[2:]),
                stride=mod.stride,
                padding=mod.padding,
                dilation=mod.dilation,
                groups=mod.groups,
                bias=mod.bias is not None,
            )
        new = new.to(device=w.device, dtype=w.dtype)
        new.weight.copy_(w)
        if mod.bias is not None:
            new.bias.copy_(mod.bias.detach())
        if mod.input_quantizer is not None and mod.input_quantizer.enabled:
            new.input_quantizer = mod.input_quantizer.eval().requires_grad_(False)
            new.register_forward_pre_hook(_freeze_input_hook(new.input_quantizer))
        new.train(mod.training)
        set_submodule(model, name, new)
    return model
