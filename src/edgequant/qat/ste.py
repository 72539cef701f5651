"""Straight-through estimator primitives (pure torch, no state).

* ``round_ste(x)``: forward ``round(x)`` (half to even), backward identity.
* ``grad_scale(x, g)``: forward ``x``, backward ``g · grad`` (LSQ's step-gradient scaling).
* ``fake_quant_ste(x, scale, zero, qmin, qmax)``: forward ``(clamp(round(x/scale) + zero, qmin, qmax) −
  zero)·scale``; backward ``grad · 1[qmin ≤ x/scale + zero ≤ qmax]`` for x (passed inside the range, cut
  outside, as the spec's ∂L/∂x = ∂L/∂x_q · 1_{x∈[α,β]}); scale and zero get no gradient (they come from the
  data, see ``MinMaxQuantizer``).
"""

from __future__ import annotations

import torch


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return (x.round() - x).detach() + x


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    y = x * g
    return (x - y).detach() + y


class _FakeQuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero, qmin: int, qmax: int):
        u = x / scale + zero
        ctx.save_for_backward((u >= qmin) & (u <= qmax))
        return (torch.clamp(torch.round(u), qmin, qmax) - zero) * scale

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def fake_quant_ste(
    x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | float, qmin: int, qmax: int
) -> torch.Tensor:
    zero_t = torch.as_tensor(zero, dtype=x.dtype, device=x.device)
    return _FakeQuantSTE.apply(x, scale.detach(), zero_t.detach(), qmin, qmax)


class _FP16RoundSTE(torch.autograd.Function):
    """Round float32 to the nearest fp16 value (IEEE RNE, as ggml's fp16 scale fields); identity gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.to(torch.float16).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad


def fp16_round_ste(x: torch.Tensor) -> torch.Tensor:
    return _FP16RoundSTE.apply(x)


class _Replace(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y):
        return y.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def straight_through(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Forward ``y`` exactly (bits, sign of zero), backward identity to ``x``.

    ``x + (y − x).detach()`` is not exact: ``y − x`` is rounded when |y| > 2|x| (4-bit codes often are), and
    0.0 + (−0.0) loses the sign of zero.
    """
    return _Replace.apply(x, y.detach())
