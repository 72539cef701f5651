"""Straight-through estimator primitives (torch; ``grid_fake`` runs numba kernels where it can, no state).

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


class _GridFake(torch.autograd.Function):
    """Fused learned-scale grid fake quantization (LSQ on a fixed integer grid), one pass each way.

    Forward ``y = round(clamp((v − m)/d, qmin, qmax))·d + m`` (``m`` None: no offset), the same float32
    operations in the same order as the unfused expression, a rounded −0 taken as the code +0 (so the values
    are bit-identical to ggml's dequantization of the codes), computed in place in one buffer. Nothing but
    the inputs is saved (``v`` is the weight itself, ``d``/``m`` one value per block): the backward
    recomputes ``u = (v − m)/d`` and gives the STE/LSQ gradients ``∂v = g·1[qmin ≤ u ≤ qmax]``,
    ``∂d = Σ g·(q − u·1[inside])``, ``∂m = Σ g·1[outside]`` (sums over the elements sharing a scale), by the
    unfused graph's formulas so they are bit-identical to it.

    float32 CPU tensors in the block layout (``v`` (…, K), ``d``/``m`` (…, 1)) run the one-pass numba
    kernels of ``kernels.fake_quant`` (same operations, same order, torch's summation order for ∂d/∂m,
    so the same bits); anything else, or a row length whose torch sum order is not reproduced, runs the
    torch code below.
    """

    @staticmethod
    def forward(ctx, v, d, m, qmin: int, qmax: int):
        ctx.qrange = (qmin, qmax)
        ctx.has_m = m is not None
        ctx.save_for_backward(v, d, m if m is not None else d)
        from edgequant.kernels.fake_quant import grid_fake_forward

        y = grid_fake_forward(v, d, m, qmin, qmax)
        if y is not None:
            return y
        u = (v - m) if m is not None else v.clone()
        y = u.div_(d).clamp_(qmin, qmax).round_().add_(0.0).mul_(d)  # + 0.0: code 0 is +0, as ggml's
        return y.add_(m) if m is not None else y

    @staticmethod
    def backward(ctx, grad):
        # The unfused graph's own formulas (mul, clamp, div and sub backward), in its order, so the gradients
        # are bit-identical to it and training follows the same trajectory.
        v, d, m = ctx.saved_tensors
        qmin, qmax = ctx.qrange
        need_d, need_m = ctx.needs_input_grad[1], ctx.has_m and ctx.needs_input_grad[2]
        from edgequant.kernels.fake_quant import grid_fake_backward

        fast = grid_fake_backward(v, d, m if ctx.has_m else None, grad, qmin, qmax, need_d, need_m)
        if fast is not None:
            return (*fast, None, None)
        u = ((v - m) if ctx.has_m else v) / d
        gc = (grad * d).masked_fill_((u < qmin) | (u > qmax), 0.0)  # ∂/∂u: 0 outside [qmin, qmax]
        gv = gc / d
        gd = gm = None
        if ctx.needs_input_grad[1]:
            q = u.clamp(qmin, qmax).round_().mul_(grad)
            gd = q.sum_to_size(d.shape) + gc.neg_().mul_(u.div_(d)).sum_to_size(d.shape)
        if ctx.has_m and ctx.needs_input_grad[2]:
            gm = grad.sum_to_size(m.shape) + gv.neg().sum_to_size(m.shape)
        return gv, gd, gm, None, None


def grid_fake(v: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, qmin: int, qmax: int) -> torch.Tensor:
    """``round(clamp((v − m)/d, qmin, qmax))·d + m`` with STE/LSQ gradients to v, d and m (``_GridFake``)."""
    return _GridFake.apply(v, d, m, qmin, qmax)
