"""A tensor's quantization error under any codec, split into rounding, clipping, step and code-choice parts.

Every codec is modelled by its levels (``codec_grids.AffineGrid``): element ``e`` of group ``g`` (a block,
sub-block, channel or group sharing one scale) can only become ``o_g + a_g * c_k``. Let ``P_alpha`` send each
element to the nearest level of its group after the group's step ``a_g`` is multiplied by ``alpha_g`` (the
offset ``o_g`` held: the codec's minimum, zero point term or 0), and

    E(alpha) = sum_e (w_e - P_alpha(w_e))^2          (float64, over the flattened float32 tensor)

so ``E(1) = ||W - Q(W; s)||^2`` at the codec's own scales s, and ``E(alpha*) = ||W - Q(W; s*)||^2`` with
``s*_g = alpha*_g * a_g``, ``alpha*_g`` the multiplier with the smallest squared error of group g among
``multipliers`` (default 0.20, 0.21, ..., 2.00; 1.0 is always tried first and kept on ties, so s* = s
unless a multiplier is strictly better; an alpha* at an end of the grid, as for a per-tensor scale set by one
outlier, means the optimum lies beyond it: pass a wider grid). An element is *inside* when it lies in
``[min level, max level]`` of its group at that scale, *outside* (clamped to the end level) otherwise.
With ``total = ||W - W_codec||^2``, ``W_codec = dequantize(quantize(W))`` the codec's actual output:

* ``rounding``    = sum over inside elements at s* of their squared error;
* ``clipping``    = sum over outside elements at s* of their squared error;
* ``step``        = E(1) - E(alpha*) >= 0: what the codec's scales lose against the best multipliers;
* ``code_choice`` = total - E(1): the codec's codes against the nearest level at its own scales. It is 0
  for codecs that round to the nearest level (uniform, NF4/FP4, int8, ggml's reference quantizers) up to the
  float32 rounding of their levels (the model is float64, ggml's decoder float32: |code_choice| is then
  ~1e-7 of total and may be negative); it is positive where a codec picks codes with a scale it does not
  store (ggml's imatrix search for Q4_0/Q5_0 rounds with the unrounded inverse scale, then stores fp16(d)).

so ``total = rounding + clipping + step + code_choice`` exactly: rounding + clipping = E(alpha*) because
inside/outside is a partition of the elements (``test_decompose.py`` sums both sides independently). The
same split at the codec's own scales is ``rounding_at_s + clipping_at_s = E(1)``.

How this differs from the book (section 8.4.1): there ``e_round = w - s*round(w/s)`` is defined for every
element without clamping, ``e_clip = w - s*q_max`` for elements beyond the range, and
``e_scale = ||W - Q(W;s)||^2 - ||W - Q(W;s*)||^2``; the three overlap (a clipped element has both a
rounding and a clipping error, and e_scale is a difference of totals that contains both), so they do not
add up to anything. Here each element's error is counted once (rounding *or* clipping), both are measured
at s*, and the step part is the excess of s over s*. The book's bound ``|e_round| <= s/2`` holds for the
uniform grids; for NF4, FP4, IQ4 and the dynamic map it is half the local gap between levels. Its s* is
an exact argmin; here it is the best of a grid of multipliers, so ``step`` is a lower bound of the loss
against the continuous optimum (with the offset held), and ``rounding + clipping`` an upper bound of the
error there. For the ggml K-quants s is the stored ``d * sc_j`` of a sub-block and s* a multiple of it
(not reachable with 6-bit sc_j in general: a measure of the room left, not a file you could write); for
NF4/FP4/int8 s is the block's absmax. F32/F16/BF16 have no scale: their whole error is ``rounding``.

Cost: one nearest-level pass over the tensor per multiplier; a 512 x 1024 tensor with the default 181
multipliers took 9-17 s (NF4, Q4_K, Q8_0) on the 2-core development machine: pass a coarser grid for big
tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from edgequant.analysis.codec_grids import AffineGrid, CodecSpec, as_float32, codec_grid, codec_name
from edgequant.errors import ConfigError, NonFiniteError

DEFAULT_MULTIPLIERS: tuple[float, ...] = tuple(k / 100 for k in range(20, 201))


@dataclass(frozen=True)
class ErrorDecomposition:
    """The parts of one tensor's squared quantization error (definitions in the module docstring)."""

    codec: str
    n: int
    total: float
    rounding: float
    clipping: float
    step: float
    code_choice: float
    rounding_at_s: float
    clipping_at_s: float
    clipped: int  # elements outside their group's range at s*
    clipped_at_s: int  # ... at the codec's own scales
    group_len: int  # elements per group (0: no scale, F32/F16/BF16)
    multipliers: np.ndarray = field(repr=False)  # alpha*_g per group (empty without a scale)

    def parts(self) -> dict[str, float]:
        """The four parts that sum to ``total``."""
        return {
            "rounding": self.rounding,
            "clipping": self.clipping,
            "step": self.step,
            "code_choice": self.code_choice,
        }

    @property
    def mse(self) -> float:
        """total / n."""
        return self.total / self.n


def project(w: np.ndarray, grid: AffineGrid, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nearest level of each element with group steps ``alpha_g * a_g``, mask of the elements outside their
    group's level range). ``w``: flat float64; ``alpha``: one multiplier per group. A group with step 0 has
    the single level ``o_g``."""
    n = w.size
    book = grid.codebook
    step = grid.per_element(grid.scale * alpha, n)
    off = grid.per_element(grid.offset, n)
    flat = step == 0
    t = (w - off) / np.where(flat, 1.0, step)
    mids = (book[:-1] + book[1:]) / 2
    idx = np.searchsorted(mids, t) if book.size > 1 else np.zeros(n, np.int64)
    q = np.where(flat, off, off + step * book[idx])
    ends = (off + step * book[0], off + step * book[-1])
    lo, hi = np.minimum(*ends), np.maximum(*ends)
    return q, (w < lo) | (w > hi)


def _group_sums(v: np.ndarray, group_len: int) -> np.ndarray:
    return np.add.reduceat(v, np.arange(0, v.size, group_len))


def best_multipliers(
    w: np.ndarray, grid: AffineGrid, multipliers: Sequence[float] = DEFAULT_MULTIPLIERS
) -> np.ndarray:
    """alpha*_g: per group, the multiplier of its step with the smallest squared error (1.0 tried first and
    kept on ties; the others in the order given, a later one replacing only when strictly better)."""
    cands = _check_multipliers(multipliers)
    groups = grid.scale.size
    best_alpha = np.ones(groups)
    best = np.full(groups, np.inf)
    for m in cands:
        q, _ = project(w, grid, np.full(groups, m))
        err = _group_sums((w - q) ** 2, grid.group_len)
        better = err < best
        best[better] = err[better]
        best_alpha[better] = m
    return best_alpha


def _check_multipliers(multipliers: Sequence[float]) -> list[float]:
    m = np.asarray(multipliers, dtype=np.float64).reshape(-1)
    if m.size == 0 or not np.isfinite(m).all() or (m <= 0).any():
        raise ConfigError(
            "multipliers must be a non-empty sequence of finite positive numbers, e.g. 0.2..2.0"
        )
    return [1.0, *(float(v) for v in m if v != 1.0)]


def decompose(
    w: np.ndarray | torch.Tensor,
    codec: CodecSpec,
    *,
    imatrix: np.ndarray | None = None,
    multipliers: Sequence[float] = DEFAULT_MULTIPLIERS,
) -> ErrorDecomposition:
    """Split ``||W - dequantize(quantize(W))||^2`` into rounding, clipping, step and code-choice parts.

    ``w``: numpy array or torch tensor (analysed as float32, the codecs' input; sums in float64).
    ``codec``: a ggml type name ("Q4_K", "IQ4_XS", ...), "nf4" / "fp4" / "int8" (bitsandbytes defaults),
    a ``Blockwise`` or a ``Uniform``. ``imatrix`` goes to the ggml quantizer (it changes the codec's choices;
    the error measured here stays unweighted). ``multipliers``: the search grid of s* (module docstring).
    """
    x = as_float32(w)
    if not np.isfinite(x).all():
        raise NonFiniteError("decompose: the tensor holds NaN/Inf; quantization error is undefined")
    recon, grid = codec_grid(x, codec, imatrix)
    v = x.astype(np.float64).reshape(-1)
    total = float(np.sum((v - recon) ** 2))
    name = codec_name(codec)
    if grid is None:
        return ErrorDecomposition(name, v.size, total, total, 0.0, 0.0, 0.0, total, 0.0, 0, 0, 0, np.ones(0))
    ones = np.ones(grid.scale.size)
    q1, out1 = project(v, grid, ones)
    e1 = (v - q1) ** 2
    alpha = best_multipliers(v, grid, multipliers)
    qs, outs = project(v, grid, alpha)
    es = (v - qs) ** 2
    rounding, clipping = float(np.sum(es[~outs])), float(np.sum(es[outs]))
    e_s, e_star = float(np.sum(e1)), float(np.sum(es))
    return ErrorDecomposition(
        codec=name,
        n=v.size,
        total=total,
        rounding=rounding,
        clipping=clipping,
        step=e_s - e_star,
        code_choice=total - e_s,
        rounding_at_s=float(np.sum(e1[~out1])),
        clipping_at_s=float(np.sum(e1[out1])),
        clipped=int(outs.sum()),
        clipped_at_s=int(out1.sum()),
        group_len=grid.group_len,
        multipliers=alpha,
    )
