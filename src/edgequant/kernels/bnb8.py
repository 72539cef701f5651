"""Blockwise 8-bit (bitsandbytes' dynamic map) kernels on flat float32 arrays.

Blocks are consecutive runs of ``blocksize`` elements of the flattened input; the last block may be short.

Two quantizers, both returning uint8 codes and float32 absmax per block:

- ``quantize_blockwise_nearest`` (the definition, = bnb's pure-PyTorch "default" kernel): full blocks use
  ``t = clamp(x * (1 / max(absmax, 1e-38)), -1, 1)`` (float32 reciprocal, then multiply) and store absmax
  unchanged; the short tail block divides, ``t = clamp(x / max(absmax, 1e-38), -1, 1)``, and stores the
  clamped absmax. The code is the number of float32 midpoints ``(c[i] + c[i+1]) / 2`` strictly below t
  (nearest code, a tie goes to the lower code), i.e. ``torch.bucketize(t, mids, right=False)``.
- ``quantize_blockwise_lut`` (bnb's native CPU kernel, bnb 0.50.2): every block uses
  ``t = clamp(x * (1 / absmax), -1, 1)``; t is snapped to a 65536-step grid,
  ``k = floor(((t + 1) * 0.5) * 65535 + 0.5)``, and the code is ``lut[k]`` (see ``bnb.blockwise`` for the
  table). An all-zero block stores absmax 0 and code 0.

Dequantization: ``out[i] = code[q[i]] * absmax[i // blocksize]`` (one float32 multiply).
"""

from __future__ import annotations

import numpy as np

from edgequant.kernels.primitives import jit

_TINY = np.float32(1e-38)


@jit
def _count_below(mids, t):
    # number of midpoints strictly below t (mids sorted ascending): bucketize(right=False)
    lo = 0
    hi = mids.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if mids[mid] < t:
            lo = mid + 1
        else:
            hi = mid
    return lo


@jit
def _block_absmax(x, start, end):
    """max |x[i]| over ``start <= i < end`` (0 for an empty or all-NaN block; NaN is skipped)."""
    am = np.float32(0.0)
    for i in range(start, end):
        a = abs(x[i])
        if a > am:
            am = a
    return am


@jit
def quantize_blockwise_nearest(x, blocksize, mids, q, absmax, first_block, last_block):
    n = x.shape[0]
    one = np.float32(1.0)
    for b in range(first_block, last_block):
        start = b * blocksize
        end = min(start + blocksize, n)
        am = _block_absmax(x, start, end)
        amc = max(am, _TINY)
        if end - start == blocksize:
            absmax[b] = am
            r = one / amc
            for i in range(start, end):
                t = min(max(x[i] * r, -one), one)
                q[i] = _count_below(mids, t)
        else:
            absmax[b] = amc
            for i in range(start, end):
                t = min(max(x[i] / amc, -one), one)
                q[i] = _count_below(mids, t)


@jit
def quantize_blockwise_lut(x, blocksize, lut, q, absmax, first_block, last_block):
    n = x.shape[0]
    one = np.float32(1.0)
    half = np.float32(0.5)
    steps = np.float32(65535.0)
    for b in range(first_block, last_block):
        start = b * blocksize
        end = min(start + blocksize, n)
        am = _block_absmax(x, start, end)
        absmax[b] = am
        if am == 0:
            for i in range(start, end):
                q[i] = 0
            continue
        r = one / am
        for i in range(start, end):
            t = min(max(x[i] * r, -one), one)
            k = np.int64(np.floor(((t + one) * half) * steps + half))
            q[i] = lut[k]


@jit
def dequantize_blockwise(q, absmax, code, blocksize, out):
    n = q.shape[0]
    for i in range(n):
        out[i] = code[q[i]] * absmax[i // blocksize]
