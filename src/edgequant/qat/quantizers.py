"""Fake quantizers for weights and activations: the base class, min-max STE, LSQ and LSQ+.

Every quantizer is an ``nn.Module`` whose ``forward(x)`` returns the fake-quantized ``x`` (same shape and
dtype). ``role`` is ``"weight"`` (one scale per slice of ``granularity.weight_view``) or ``"activation"``
(one scale per tensor or per last-dim feature). Learned parameters are created at construction with their
final shape, so an optimizer built right after ``prepare`` sees them; their values are initialized from the
first tensor seen (the weight itself, or the first calibration batch) and again after ``set_bits``.

Grids: symmetric b bits → integers [−Q_N, Q_P] = [−2^(b−1), 2^(b−1)−1]; asymmetric → [0, 2^b−1] plus an
offset.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgequant.qat.config import QuantSpec
from edgequant.qat.granularity import activation_reduce_dims, activation_scale_shape, weight_view
from edgequant.qat.ste import fake_quant_ste, grad_scale, grid_fake, round_ste

_EPS = 1e-8
# Called with each quantizer right after its data-driven init (set by distributed.synchronized_init, so ranks
# agree on an init before the next layer's input depends on it).
INIT_HOOKS: list = []


def _fusable(v: torch.Tensor, s: torch.Tensor) -> bool:
    """``ste.grid_fake`` works in ``v``'s buffer: same dtype, the scale broadcasting into ``v``'s shape."""
    return v.dtype == s.dtype and torch.broadcast_shapes(v.shape, s.shape) == v.shape


class FakeQuantizer(nn.Module):
    """Base: grid bounds, the weight/activation views, enable switch, lazy data-driven initialization."""

    def __init__(self, spec: QuantSpec, role: str, shape: tuple[int, ...], name: str = "") -> None:
        super().__init__()
        self.spec, self.role, self.name = spec, role, name
        self.bits = spec.bits
        self.enabled = True
        self.register_buffer("initialized", torch.zeros((), dtype=torch.uint8))
        self.scale_shape = self._scale_shape(shape)

    # ----- geometry
    def _scale_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.role == "weight":
            return (*tuple(weight_view(torch.empty(shape, device="meta"), *self._gran()).shape[:2]), 1)
        return activation_scale_shape(torch.empty(shape, device="meta"), self.spec.granularity)

    def _gran(self) -> tuple[str, int, str]:
        return self.spec.granularity, self.spec.group_size, self.name or "weight"

    def view(self, x: torch.Tensor) -> torch.Tensor:
        return weight_view(x, *self._gran()) if self.role == "weight" else x

    def reduce(self, v: torch.Tensor, fn) -> torch.Tensor:
        """Per-scale statistic ``fn`` (amax/amin/mean) with the scale's broadcast shape."""
        if self.role == "weight":
            return fn(v, dim=2, keepdim=True)
        dims = activation_reduce_dims(v, self.spec.granularity)
        return fn(v, dim=dims)

    def elements_per_scale(self, v: torch.Tensor) -> int:
        """N in LSQ's gradient scale: elements sharing one scale; for activations per example (the paper's
        N_F, the layer's feature count), so the scale does not depend on the batch size (data-parallel
        shards then get the same gradient as the global batch)."""
        n_scales = max(1, math.prod(self.scale_shape))
        n = v.numel() if self.role == "weight" or v.dim() < 2 else v.numel() // v.shape[0]
        return max(1, n // n_scales)

    def qrange(self) -> tuple[int, int]:
        if self.spec.symmetric:
            return -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        return 0, 2**self.bits - 1

    # ----- behaviour
    def set_bits(self, bits: int) -> None:
        """Change the bit width (progressive schedules); learned ranges re-initialize from the next input."""
        if bits != self.bits:
            self.bits = bits
            self.initialized.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        v = self.view(x)
        if not bool(self.initialized):
            with torch.no_grad():
                self.init_from(v.detach())
                for hook in INIT_HOOKS:
                    hook(self)
            self.initialized.fill_(1)
        return self.fake(v).reshape(x.shape)

    def init_from(self, v: torch.Tensor) -> None:  # overridden by quantizers with learned ranges
        pass

    def fake(self, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"{self.spec.method}, role={self.role}, bits={self.bits}, {self.spec.granularity}"


class MinMaxQuantizer(FakeQuantizer):
    """Min-max fake quantization with the STE (method ``"ste"``).

    Weights: the scale comes from the current values each step (sym: max|w|/Q_P; asym: (max−min)/(2^b−1)
    with a rounded zero point, the range widened to contain 0). Activations: an EMA of the observed min/max
    (``spec.ema``), updated in training mode and used as is in eval mode. The scale is data, not a
    parameter: no gradient flows to it.
    """

    def __init__(self, spec, role, shape, name=""):
        super().__init__(spec, role, shape, name)
        self.register_buffer("running_min", torch.zeros(self.scale_shape))
        self.register_buffer("running_max", torch.zeros(self.scale_shape))

    def init_from(self, v):
        self.running_min.copy_(self.reduce(v, torch.amin))
        self.running_max.copy_(self.reduce(v, torch.amax))

    def fake(self, v):
        if self.role == "weight" or self.training:
            lo, hi = self.reduce(v.detach(), torch.amin), self.reduce(v.detach(), torch.amax)
            if self.role == "activation":
                m = self.spec.ema
                self.running_min.mul_(m).add_(lo, alpha=1 - m)
                self.running_max.mul_(m).add_(hi, alpha=1 - m)
                lo, hi = self.running_min, self.running_max
        else:
            lo, hi = self.running_min, self.running_max
        qmin, qmax = self.qrange()
        if self.spec.symmetric:
            scale = torch.maximum(lo.abs(), hi.abs()).clamp_min(_EPS) / qmax
            return fake_quant_ste(v, scale, 0.0, qmin, qmax)
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        scale = ((hi - lo) / (qmax - qmin)).clamp_min(_EPS)
        zero = torch.clamp(torch.round(-lo / scale), qmin, qmax)
        return fake_quant_ste(v, scale, zero, qmin, qmax)


class LSQQuantizer(FakeQuantizer):
    """Learned step size quantization (LSQ, Esser et al. 2020, "Learned Step Size Quantization", ICLR).

    Forward: ``v̂ = round(clamp(v/s, −Q_N, Q_P))·s``. Gradients (the paper's eq. 3 and the STE for round):

    * ∂v̂/∂v = 1 inside [−Q_N·s, Q_P·s], 0 outside;
    * ∂v̂/∂s = −v/s + round(v/s) inside, −Q_N below, Q_P above; then multiplied by g = 1/√(N·Q_P).

    Step initialization: s = 2·mean|v|/√Q_P per scale (the paper's and the spec's rule). N is the number of
    elements sharing one step (for a per-tensor weight step: the layer's weight count, as in the paper).

    Why not the spec's formulas: the spec (book §8.3.3) writes ∂v̂/∂s = −v/s + ⌊v/s⌋ (floor; the paper has
    round, and floor gives a gradient that is never positive inside the range, so s can only grow from the
    inside elements), and scales the step gradient by √n/‖g_w‖₂, which changes with every batch's gradient
    norm and is not what the paper uses. We follow the paper: round, and the constant g = 1/√(N·Q_P) (tested
    in tests/unit/qat/test_lsq.py against the closed form).
    """

    def __init__(self, spec, role, shape, name=""):
        super().__init__(spec, role, shape, name)
        self.step = nn.Parameter(torch.ones(self.scale_shape))

    def init_from(self, v):
        qp = self.qrange()[1]
        if self.spec.init == "minmax":  # the round-to-nearest PTQ scale: QAT starts from PTQ
            self.step.copy_((self.reduce(v.abs(), torch.amax) / qp).clamp_min(_EPS))
            return
        self.step.copy_((2 * self.reduce(v.abs(), torch.mean) / math.sqrt(qp)).clamp_min(_EPS))

    def grad_factor(self, v: torch.Tensor) -> float:
        return 1.0 / math.sqrt(self.elements_per_scale(v) * self.qrange()[1])

    def fake(self, v):
        qn, qp = self.qrange()
        s = grad_scale(self.step, self.grad_factor(v))
        if _fusable(v, s):  # fused, bit-identical to the expression below
            return grid_fake(v, s, None, qn, qp)
        return round_ste(torch.clamp(v / s, qn, qp)) * s


class LSQPlusQuantizer(LSQQuantizer):
    """LSQ+ (Bhalgat et al. 2020): learned step s and offset β, for activations that are not centred at 0.

    Forward ``v̂ = round(clamp((v−β)/s, q_min, q_max))·s + β``. Gradients: ∂v̂/∂v = 1 inside; ∂v̂/∂s as LSQ on
    u = (v−β)/s; ∂v̂/∂β = 0 inside and 1 outside (the clamp fixes the code, β shifts the value). Both s and β
    gradients are scaled by g = 1/√(N·q_max). Initialization (min-max, the paper's simpler option): s =
    (max−min)/ (q_max−q_min), β = min − q_min·s, so the observed range maps onto the grid.
    """

    def __init__(self, spec, role, shape, name=""):
        super().__init__(spec, role, shape, name)
        self.offset = nn.Parameter(torch.zeros(self.scale_shape))

    def init_from(self, v):
        qmin, qmax = self.qrange()
        lo, hi = self.reduce(v, torch.amin), self.reduce(v, torch.amax)
        s = ((hi - lo) / (qmax - qmin)).clamp_min(_EPS)
        self.step.copy_(s)
        self.offset.copy_(lo - qmin * s)

    def fake(self, v):
        qmin, qmax = self.qrange()
        g = self.grad_factor(v)
        s, beta = grad_scale(self.step, g), grad_scale(self.offset, g)
        if _fusable(v, s):
            return grid_fake(v, s, beta, qmin, qmax)
        return round_ste(torch.clamp((v - beta) / s, qmin, qmax)) * s + beta
