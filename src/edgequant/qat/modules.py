"""QAT versions of ``nn.Linear`` and ``nn.Conv2d``: the same parameters, fake-quantized in the forward pass.

``QATLinear(linear, weight_spec, act_spec)`` keeps the original ``weight``/``bias`` Parameter objects (an
optimizer built before ``prepare`` keeps working, tied weights stay tied) and adds ``weight_quantizer`` and
``input_quantizer`` (either may be None). ``make_quantizer`` maps a ``QuantSpec.method`` to its class.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from edgequant.qat.bnb_grid import BnbQuantizer
from edgequant.qat.config import QuantSpec
from edgequant.qat.ggml_grid import CodecQuantizer, GGMLGridQuantizer
from edgequant.qat.noise import NoiseQuantizer
from edgequant.qat.quantizers import FakeQuantizer, LSQPlusQuantizer, LSQQuantizer, MinMaxQuantizer
from edgequant.qat.soft import GumbelQuantizer, SigmoidRoundQuantizer, TanhQuantizer

QUANTIZERS: dict[str, type[FakeQuantizer]] = {
    "ste": MinMaxQuantizer,
    "lsq": LSQQuantizer,
    "lsq+": LSQPlusQuantizer,
    "tanh": TanhQuantizer,
    "sigmoid": SigmoidRoundQuantizer,
    "gumbel": GumbelQuantizer,
    "ggml": GGMLGridQuantizer,
    "codec": CodecQuantizer,
    "bnb": BnbQuantizer,
    "noise": NoiseQuantizer,
}


def make_quantizer(spec: QuantSpec, role: str, shape: tuple[int, ...], name: str = "") -> FakeQuantizer:
    return QUANTIZERS[spec.method](spec, role, tuple(shape), name)


class _QATBase(nn.Module):
    def _setup(self, mod: nn.Module, weight_spec, act_spec, name: str, n_in: int) -> None:
        self.weight = mod.weight
        self.bias = mod.bias
        self.weight_quantizer = (
            make_quantizer(weight_spec, "weight", tuple(mod.weight.shape), name + ".weight")
            if weight_spec
            else None
        )
        self.input_quantizer = (
            make_quantizer(act_spec, "activation", (n_in,), name + ".input") if act_spec else None
        )
        for q in (self.weight_quantizer, self.input_quantizer):  # quantizer state: the weight's dtype/device
            if q is not None:
                q.to(device=mod.weight.device, dtype=mod.weight.dtype)
        if self.weight_quantizer is not None:  # weight-driven init now, so the learned params are ready
            self.weight_quantizer(self.weight.detach())

    def quantized_weight(self):
        return self.weight_quantizer(self.weight) if self.weight_quantizer is not None else self.weight

    def quantized_input(self, x):
        return self.input_quantizer(x) if self.input_quantizer is not None else x


class QATLinear(_QATBase):
    def __init__(self, linear: nn.Linear, weight_spec: QuantSpec | None, act_spec: QuantSpec | None, name=""):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._setup(linear, weight_spec, act_spec, name, linear.in_features)

    def forward(self, x):
        return F.linear(self.quantized_input(x), self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


class QATConv2d(_QATBase):
    def __init__(self, conv: nn.Conv2d, weight_spec: QuantSpec | None, act_spec: QuantSpec | None, name=""):
        super().__init__()
        if act_spec is not None and act_spec.granularity == "channel":
            from edgequant.errors import ConfigError  # "channel" means the last dim, the width here

            raise ConfigError(
                f"{name}: per-channel activation quantization of Conv2d inputs is not supported"
            )
        self.stride, self.padding, self.dilation, self.groups = (
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
        )
        self._setup(conv, weight_spec, act_spec, name, conv.in_channels)

    def forward(self, x):
        w = self.quantized_weight()
        return F.conv2d(
            self.quantized_input(x), w, self.bias, self.stride, self.padding, self.dilation, self.groups
        )
