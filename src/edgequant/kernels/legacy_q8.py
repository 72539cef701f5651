"""Legacy 8-bit block codecs Q8_0 and Q8_1, byte-exact with ggml (spec §4.5-4.6); the family: ``legacy``.

Block layouts (32 weights, little-endian):

* Q8_0 (34 B): ``d`` fp16 | ``qs[32]`` int8; y = q * d.
* Q8_1 (36 B): ``d`` fp16 | ``s`` fp16 (= fp16(sum(q) * d)) | ``qs[32]`` int8; y = q * d (no ggml decoder;
  ``s`` is ignored).

Quantization is ``quantize_row_q8_0_ref`` / ``q8_1_ref`` for every input: d = amax/127, q = roundf(x*(1/d))
(C ``roundf``, half away from zero), with d and 1/d float32 and the unrounded d in Q8_1's sum. The
importance vector is ignored (as in ggml). Float->int casts follow x86 ``cvttss2si`` (NaN / out of range
-> INT_MIN) before wrapping to 8 bits.
"""

from __future__ import annotations

import numpy as np

from edgequant.kernels.primitives import (
    F,
    cvt_i32,
    get_fp16,
    i32_as_f32,
    jit,
    put_fp16,
    roundf_away,
    wrap_i8,
)
from edgequant.kernels.simd import ABS_MASK as _ABS
from edgequant.kernels.simd import INF_BITS as _INF
from edgequant.kernels.simd import opaque

FLT_MAX = F(3.4028234663852886e38)


@jit
def _quantize_q8(x, out, bsize, with_sum):
    """``quantize_row_q8_0_ref`` / ``q8_1_ref``: d = amax/127, q = roundf(x/d); Q8_1 adds s = sum(q)*d."""
    rows, n = x.shape
    B = opaque(32)
    qo = bsize - 32
    for r in range(rows):
        xr = x[r]
        xi = xr.view(np.int32)
        o = out[r]
        o8 = o.view(np.int8)
        for ib in range(n // 32):
            s = ib * 32
            off = ib * bsize
            mb = np.int32(0)
            for j in range(B):
                mb = np.int32(max(mb, np.int32(xi[s + j] & _ABS)))
            amax = i32_as_f32(np.int32(mb))
            if mb > _INF:  # NaN: C's MAX(amax, |v|) scan
                amax = F(0.0)
                for j in range(32):
                    v = abs(xr[s + j])
                    amax = amax if amax > v else v
            d = F(amax / F(127.0))
            idd = F(F(1.0) / d) if d != 0 else F(0.0)
            put_fp16(o, off, d)
            sm = 0
            if mb < _INF and abs(idd) <= FLT_MAX:  # finite block, |x*id| <= 127: plain casts are exact
                for j in range(B):
                    v = F(xr[s + j] * idd)
                    a = abs(v)
                    t = np.int32(a)
                    t += np.int32(1) if F(a - F(t)) >= F(0.5) else np.int32(0)
                    t = -t if v < 0 else t
                    o8[off + qo + j] = np.int8(t)
                    sm += t
            else:
                for j in range(32):
                    t = wrap_i8(cvt_i32(roundf_away(F(xr[s + j] * idd))))
                    o8[off + qo + j] = np.int8(t)
                    sm += t
            if with_sum:
                put_fp16(o, off + 2, F(F(sm) * d))


@jit
def _dequantize_q8(data, out, bsize):
    """``dequantize_row_q8_0``: y = f32(q) * d."""
    rows, n = out.shape
    B = opaque(32)
    for r in range(rows):
        src = data[r]
        qs = src.view(np.int8)
        y = out[r]
        for ib in range(n // 32):
            d = get_fp16(src, ib * bsize)
            q = ib * bsize + bsize - 32
            for j in range(B):
                y[ib * 32 + j] = F(F(qs[q + j]) * d)


def _codec(bsize, with_sum):
    """The (quantize, dequantize) row kernels of Q8_1 (``with_sum``) or Q8_0; arguments constant to numba."""

    @jit
    def quantize(x, qw, out):
        _quantize_q8(x, out, bsize, with_sum)

    @jit
    def dequantize(data, out):
        _dequantize_q8(data, out, bsize)

    return quantize, dequantize


quantize_q8_0, dequantize_q8_0 = _codec(34, False)
quantize_q8_1, dequantize_q8_1 = _codec(36, True)
