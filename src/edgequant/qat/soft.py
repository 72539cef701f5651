"""Soft and surrogate-gradient quantizers. Each learns its step like LSQ (same init and gradient scale) and is
exactly LSQ's hard quantizer in eval mode; they differ only in training mode.

Notation: u = clamp(v/s, q_min, q_max), i = ⌊u⌋ (kept ≤ q_max − 1), f = u − i ∈ [0, 1].

* ``TanhQuantizer`` (method ``"tanh"``), DSQ-style (Gong et al. 2019):
  φ(u) = i + ½ + ½·tanh(k(f − ½))/tanh(k/2), v̂ = φ·s. Continuous, passes through every grid point, tends to
  round() as k → ∞. The spec's formula ``s·tanh(k·x/s)·(q_max−q_min)/2`` is one saturating curve
  without steps (it never approaches a quantizer), so we use the per-step tanh of soft-quantization papers.
* ``SigmoidRoundQuantizer`` (method ``"sigmoid"``): forward is the hard round; backward uses the derivative of
  the surrogate r(u) = ⌊u⌋ + σ(p(f − ½)), i.e. ∂/∂u = p·σ'(p(f−½)), and p (init ``spec.softness``) is
  learned through ∂r/∂p = (f − ½)·σ'(p(f−½)). The spec writes the surrogate σ(p(f−½)) itself as "∂round/∂x";
  that is monotone in f, which no derivative of a staircase is, so we read it as the soft rounding function
  and use its derivative.
* ``GumbelQuantizer`` (method ``"gumbel"``): each element picks ⌊u⌋ or ⌊u⌋+1 with a Gumbel-softmax relaxation,
  log-probabilities log(1−f), log f (stochastic rounding: unbiased), temperature τ(t) = τ₀·exp(−λt) set by
  ``set_step(t)``; v̂ = s·Σ_k softmax((log π_k + g_k)/τ)_k · level_k.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgequant.qat.quantizers import LSQQuantizer
from edgequant.qat.ste import grad_scale


def _unit_interval(u: torch.Tensor, qmin: int, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    i = torch.clamp(torch.floor(u.detach()), qmin, qmax - 1)
    return i, u - i


class _SoftRoundQuantizer(LSQQuantizer):
    """LSQ in eval; in training ``soft_round(clamp(v / s, qmin, qmax)) * s`` with the LSQ step s."""

    def soft_round(self, u: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
        raise NotImplementedError

    def fake(self, v):
        if not self.training:
            return super().fake(v)
        qmin, qmax = self.qrange()
        s = grad_scale(self.step, self.grad_factor(v))
        return self.soft_round(torch.clamp(v / s, qmin, qmax), qmin, qmax) * s


class TanhQuantizer(_SoftRoundQuantizer):
    def soft_round(self, u, qmin, qmax):
        i, f = _unit_interval(u, qmin, qmax)
        k = self.spec.softness
        return i + 0.5 + 0.5 * torch.tanh(k * (f - 0.5)) / math.tanh(k / 2)


class _SigmoidRound(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, p):
        f = u - torch.floor(u)
        ctx.save_for_backward(f, p)
        return torch.round(u)

    @staticmethod
    def backward(ctx, grad):
        f, p = ctx.saved_tensors
        sig = torch.sigmoid(p * (f - 0.5))
        dsig = sig * (1 - sig)
        grad_p = (grad * (f - 0.5) * dsig).sum().reshape(p.shape)
        return grad * p * dsig, grad_p


def sigmoid_round(u: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """round(u) with the sigmoid-surrogate gradient (see the module docstring)."""
    return _SigmoidRound.apply(u, p)


class SigmoidRoundQuantizer(_SoftRoundQuantizer):
    def __init__(self, spec, role, shape, name=""):
        super().__init__(spec, role, shape, name)
        self.sharpness = nn.Parameter(torch.tensor(float(spec.softness)))

    def soft_round(self, u, qmin, qmax):
        return sigmoid_round(u, self.sharpness)


class GumbelQuantizer(_SoftRoundQuantizer):
    def __init__(self, spec, role, shape, name=""):
        super().__init__(spec, role, shape, name)
        self.tau = float(spec.tau0)
        self.generator: torch.Generator | None = None  # set for reproducible noise

    def set_step(self, t: int) -> float:
        """τ(t) = τ₀·exp(−λt); returns the new temperature."""
        self.tau = self.spec.tau0 * math.exp(-self.spec.tau_decay * t)
        return self.tau

    def gumbel_noise(self, shape, like: torch.Tensor) -> torch.Tensor:
        e = torch.rand(shape, generator=self.generator, dtype=like.dtype, device=like.device)
        return -torch.log(-torch.log(e.clamp(1e-20, 1.0 - 1e-7)))

    def soft_round(self, u, qmin, qmax):
        i, f = _unit_interval(u, qmin, qmax)
        eps = 1e-6
        logp = torch.stack([torch.log((1 - f).clamp_min(eps)), torch.log(f.clamp_min(eps))], dim=-1)
        w = torch.softmax((logp + self.gumbel_noise(logp.shape, logp)) / self.tau, dim=-1)
        return i + w[..., 1]
