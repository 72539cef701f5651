"""Int8DynamicLinear: int8 weights (per output row) x int8 activations quantized at run time.

Weights: ``sw[o] = max_k |W[o, k]| / 127`` (float32), ``Wq = clamp(round(W / sw[o]), -127, 127)`` int8
(an all-zero row gets sw = 1).

Activations, x flattened to (M, K), per forward:

- ``clip`` = the percentile of |x| (per token: each row; per tensor: all of x), defined as the k-th smallest
  |x| with ``k = max(1, ceil(p / 100 * n))`` over the n values (p = 100 gives the max). Default p = 99.9:
  the largest 0.1 % are clipped, which keeps one activation outlier from crushing the resolution of the rest.
- ``sx = clip / 127`` (a zero clip gives sx = 1), ``Xq = clamp(round(x / sx), -127, 127)`` int8.
- ``y = float32(Xq @ Wq.T) * sx[i] * sw[o]`` (exact int32 sums; two float32 multiplies in that order),
  ``+ bias``, cast to x's dtype.

Backward (weights frozen): straight-through on the activation quantizer, ``grad_x = grad_y @ (Wq * sw)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgequant.errors import ConfigError
from edgequant.nn.linear8bit import int8_matmul
from edgequant.nn.quantized_linear import QuantizedLinear, check_finite

GRANULARITIES = ("per_token", "per_tensor")


def percentile_abs(x2: torch.Tensor, percentile: float, per_token: bool) -> torch.Tensor:
    """k-th smallest |x| with k = max(1, ceil(p/100 * n)), per row (M,) or for the whole tensor (1,)."""
    a = x2.abs().float()
    if not per_token:
        a = a.reshape(1, -1)
    n = a.shape[1]
    k = max(1, math.ceil(percentile / 100.0 * n))
    if k >= n:
        return a.max(dim=1).values
    return a.kthvalue(k, dim=1).values


def quantize_activations(
    x2: torch.Tensor, percentile: float, per_token: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    clip = percentile_abs(x2, percentile, per_token)
    sx = torch.where(clip > 0, clip / 127.0, torch.ones_like(clip))
    sx_col = sx.unsqueeze(-1) if per_token else sx.reshape(1, 1)
    xq = torch.clamp(torch.round(x2.float() / sx_col), -127, 127).to(torch.int8)
    return xq, sx_col.expand(x2.shape[0], 1)


def quantize_weight_rows(w: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    check_finite(w, name, "int8 quantization needs finite weights")
    w = w.detach().float()
    am = w.abs().max(dim=1).values
    sw = torch.where(am > 0, am / 127.0, torch.ones_like(am))
    wq = torch.clamp(torch.round(w / sw.unsqueeze(-1)), -127, 127).to(torch.int8)
    return wq, sw


class _DynInt8(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, bias, module):
        xq, sx = quantize_activations(x2, module.percentile, module.granularity == "per_token")
        acc = int8_matmul(xq, module.weight.data, module.threads)
        y = acc.float() * sx * module.weight_scale.unsqueeze(0)
        if bias is not None:
            y = y + bias.float()
        ctx.module = module
        ctx.has_bias = bias is not None
        return y.to(x2.dtype)

    @staticmethod
    def backward(ctx, grad_y):
        grad_x = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_y @ ctx.module.dequantize().to(grad_y.dtype)
        if ctx.has_bias and ctx.needs_input_grad[1]:
            grad_b = grad_y.sum(0)
        return grad_x, grad_b, None


class Int8DynamicLinear(QuantizedLinear):
    """Linear with int8 weights and dynamically quantized int8 activations (see the module docstring)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        granularity: str = "per_token",
        percentile: float = 99.9,
        *,
        weight: torch.Tensor | None = None,
        threads: int | None = None,
        name: str = "",
    ):
        super().__init__()
        weight = self._init_linear(in_features, out_features, bias, weight, name)
        if granularity not in GRANULARITIES:
            raise ConfigError(f"Int8DynamicLinear {name}: granularity {granularity!r} not in {GRANULARITIES}")
        if not 0.0 < percentile <= 100.0:
            raise ConfigError(f"Int8DynamicLinear {name}: percentile {percentile} must be in (0, 100]")
        self.granularity, self.percentile = granularity, float(percentile)
        self.threads = threads
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.set_weight(weight)

    def set_weight(self, weight: torch.Tensor) -> None:
        self._check_weight_shape(weight)
        wq, sw = quantize_weight_rows(weight, self.weight_name)
        self.weight = nn.Parameter(wq, requires_grad=False)
        self.weight_scale = sw

    def dequantize(self) -> torch.Tensor:
        return self.weight.data.float() * self.weight_scale.unsqueeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        y = _DynInt8.apply(x.reshape(-1, self.in_features), self.bias, self)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"granularity={self.granularity}, percentile={self.percentile}"
        )

    def _load_weight(self, state_dict, prefix, where):
        """Checks only (nn.Module copies ``weight`` and the ``weight_scale`` buffer): int8 codes, one scale a
        row, both of this layer's shape."""
        wkey, skey = prefix + "weight", prefix + "weight_scale"
        self._check_int8_rows(state_dict, wkey, skey, where, "Int8DynamicLinear's")
        return None
