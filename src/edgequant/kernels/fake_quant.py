"""One-pass numba forward and backward of ``qat.ste._GridFake`` (learned-scale grid fake quantization).

Layout: ``v`` viewed as ``(blocks, K)`` rows, one scale ``d`` (and offset ``m``) per row, float32. Each
direction reads the weights once:

* forward, per element: ``y = (rint(clamp((v − m)/d, qmin, qmax)) + 0)·d + m`` (``m`` absent: ``v/d``, no
  ``+ m``), the torch path's float32 operations in its order (``+ 0``: a rounded −0 is the code +0);
* backward, per element: ``u = (v − m)/d``, ``gc = 0`` if ``u < qmin`` or ``u > qmax`` else ``g·d``,
  ``∂v = gc/d``; per row, in the same pass (the row's four addend vectors in an L1 scratch):
  ``∂d = Σ rint(clamp(u))·g + Σ (−gc)·(u/d)`` and ``∂m = Σ g + Σ (−∂v)``.

The sums reproduce torch's CPU order for a contiguous inner reduction of float32 (ATen ``SumKernel.cpp``,
``vectorized_inner_sum`` + ``row_sum``): ``L``-lane vector accumulators (L = 8 with AVX2), four of them
interleaved over the row's ``K // L`` vectors, folded ``((a0 + a1) + a2) + a3``, then a scalar accumulator
from 0 over the ``K mod L`` tail, then the L lanes in order. That order holds while ``K // L < 64`` (no
cascade level) and only for contiguous ``v`` and ``grad`` (torch's intermediates take their strides);
``lane_width`` checks it against ``torch.sum`` once per row length and returns None when it does not match
(an AVX-512 torch sums 16 lanes), so the caller keeps the torch path: the results are bit-identical to the
unfused graph either way, never merely close (no reassociation bound is needed).

Threads: the rows are split over ``torch.get_num_threads()`` threads (``parallel.run_ranges``; GIL-free
serial kernels, no numba threading layer next to torch's OpenMP); rows are independent, so the result does
not depend on the thread count.
"""

from __future__ import annotations

import numpy as np

from edgequant.kernels.parallel import run_ranges
from edgequant.kernels.primitives import F, jit

LANES = 8  # torch's Vectorized<float> width with AVX2 (and its default build); AVX-512's 16 falls back
_WIDTH: dict[int, int | None] = {}


@jit
def _row_sum(t, k, lanes, acc):
    """torch's float32 sum of ``t[:k]`` (contiguous inner reduction, ``lanes``-wide vectors, < 64 vectors);
    ``acc``: (4, lanes) scratch."""
    nvec = k // lanes
    for a in range(4):
        for lane in range(lanes):
            acc[a, lane] = 0.0
    for i in range(nvec):
        a = i % 4 if i < (nvec // 4) * 4 else 0
        for lane in range(lanes):
            acc[a, lane] += t[i * lanes + lane]
    for a in range(1, 4):
        for lane in range(lanes):
            acc[0, lane] += acc[a, lane]
    s = F(0.0)
    for j in range(nvec * lanes, k):
        s += t[j]
    for lane in range(lanes):
        s += acc[0, lane]
    return s


@jit
def _row_sums(x, lanes, out):
    acc = np.empty((4, lanes), np.float32)
    for r in range(x.shape[0]):
        out[r] = _row_sum(x[r], x.shape[1], lanes, acc)


@jit
def _forward(v, d, m, has_m, lo, hi, y, first, last):
    k = v.shape[1]
    for b in range(first, last):
        db = d[b]
        mb = m[b] if has_m else F(0.0)
        for j in range(k):
            u = (v[b, j] - mb) / db if has_m else v[b, j] / db
            c = lo if u < lo else (hi if u > hi else u)
            q = (np.rint(c) + F(0.0)) * db
            y[b, j] = q + mb if has_m else q


@jit
def _backward(v, d, m, g, has_m, need_d, need_m, lo, hi, gv, gd, gm, first, last):
    k = v.shape[1]
    t = np.empty((4, k), np.float32)
    acc = np.empty((4, LANES), np.float32)
    for b in range(first, last):
        db = d[b]
        mb = m[b] if has_m else F(0.0)
        for j in range(k):
            u = (v[b, j] - mb) / db if has_m else v[b, j] / db
            gj = g[b, j]
            gc = F(0.0) if (u < lo or u > hi) else gj * db
            gvj = gc / db
            gv[b, j] = gvj
            c = lo if u < lo else (hi if u > hi else u)
            t[0, j] = np.rint(c) * gj
            t[1, j] = -gc * (u / db)
            t[2, j] = gj
            t[3, j] = -gvj
        if need_d:
            gd[b] = _row_sum(t[0], k, LANES, acc) + _row_sum(t[1], k, LANES, acc)
        if need_m:
            gm[b] = _row_sum(t[2], k, LANES, acc) + _row_sum(t[3], k, LANES, acc)


def lane_width(k: int) -> int | None:
    """The vector width L whose order (module docstring) equals torch's float32 row sum of length ``k``."""
    if k not in _WIDTH:
        import torch

        gen = torch.Generator().manual_seed(k)
        x = torch.randn(64, k, generator=gen) * torch.logspace(-4, 4, k)
        ref = x.sum_to_size(64, 1).numpy()[:, 0]
        _WIDTH[k] = None
        if LANES <= k < 64 * LANES:
            out = np.empty(64, np.float32)
            _row_sums(x.numpy(), LANES, out)
            if np.array_equal(out.view(np.int32), ref.view(np.int32)):
                _WIDTH[k] = LANES
    return _WIDTH[k]


def _rows(v, d, m):
    """(v, d, m) as (blocks, K), (blocks,), (blocks,) float32 C-contiguous numpy arrays, else None."""
    import torch

    per_row = (*v.shape[:-1], 1)
    tensors = (v, d) if m is None else (v, d, m)
    if v.dim() < 1 or not v.is_contiguous():  # a strided v: torch's backward sums in another order
        return None
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors):
        return None
    if tuple(d.shape) != per_row or (m is not None and tuple(m.shape) != per_row):
        return None
    if v.numel() == 0 or lane_width(v.shape[-1]) is None:
        return None
    k = v.shape[-1]
    as2 = [t.detach().contiguous().numpy().reshape(-1, k if i == 0 else 1) for i, t in enumerate(tensors)]
    vv, dd = as2[0], as2[1][:, 0]
    mm = as2[2][:, 0] if m is not None else dd
    return vv, dd, mm


def grid_fake_forward(v, d, m, qmin: int, qmax: int):
    """``_GridFake``'s forward by ``_forward`` (a new tensor), or None unless the layout is (…, K), (…, 1)."""
    import torch

    rows = _rows(v, d, m)
    if rows is None:
        return None
    vv, dd, mm = rows
    y = torch.empty(v.shape, dtype=torch.float32)
    yy = y.numpy().reshape(vv.shape)
    args = (vv, dd, mm, m is not None, F(qmin), F(qmax), yy)
    run_ranges(_forward, vv.shape[0], torch.get_num_threads(), *args, min_chunk=256)
    return y


def grid_fake_backward(v, d, m, grad, qmin: int, qmax: int, need_d: bool, need_m: bool):
    """``_GridFake``'s (∂v, ∂d or None, ∂m or None) by ``_backward``, or None when the torch path must run.

    ``v`` and ``grad`` must be contiguous: torch's intermediates take their strides, and a strided
    intermediate is summed in another order.
    """
    import torch

    rows = _rows(v, d, m)
    if rows is None or grad.dtype != torch.float32 or grad.shape != v.shape:
        return None
    if not grad.is_contiguous():
        return None
    vv, dd, mm = rows
    gg = grad.numpy().reshape(vv.shape)
    gv = torch.empty(v.shape, dtype=torch.float32)
    gd = torch.empty(d.shape, dtype=torch.float32)
    gm = torch.empty(d.shape, dtype=torch.float32)
    outs = (gv.numpy().reshape(vv.shape), gd.numpy().reshape(-1), gm.numpy().reshape(-1))
    args = (vv, dd, mm, gg, m is not None, need_d, need_m, F(qmin), F(qmax), *outs)
    run_ranges(_backward, vv.shape[0], torch.get_num_threads(), *args, min_chunk=256)
    return gv, (gd if need_d else None), (gm if need_m else None)
