"""K-quant row kernels (Q2_K … Q6_K, Q8_K), byte-exact with llama.cpp's ``quantize_q*_K``.

Without an importance vector the ``quantize_row_q*_K_ref`` algorithms run; with one the ``*_impl``
algorithms (``shared/reference/ggml-quants.md`` §4.7–4.12, §5). Q2_K, Q3_K and Q6_K (16-weight
sub-blocks) live in ``kquants_low`` and are re-exported here; the per-sub-block searches run
lane-parallel (``kquants_lanes``, ``kquants_search``). Every float is float32 and every sum
sequential (§2.1); integer stores wrap to uint8/int8 exactly where the C code stores into them.
Exact for finite inputs (the public API rejects NaN/inf by default).

Block layouts (256 weights, little-endian; Q2_K, Q3_K, Q6_K in ``kquants_low``):

* Q4_K, 144 bytes: ``d`` fp16 @0, ``dmin`` fp16 @2, ``scales[12]`` @4 (eight 6-bit scales and mins,
  §3.6), ``qs[128]`` @16 (byte ``32c+l``: low nibble = element ``64c+l``, high = ``64c+32+l``).
  ``y = (d*sc)*q - dmin*mn``.
* Q5_K, 176 bytes: ``d`` @0, ``dmin`` @2, ``scales[12]`` @4, ``qh[32]`` @16 (bit ``i//32`` of byte
  ``i%32`` = 5th bit), ``qs[128]`` @48 (low 4 bits, Q4_K layout).
* Q8_K, 292 bytes: ``d`` **f32** @0, ``qs[256]`` int8 @4, ``bsums[16]`` int16 @260. ``y = d*q``.
  No imatrix (``quantize_row_q8_K_ref``); an all-zero block writes zero ``bsums`` (ggml leaves them
  untouched).
"""

from __future__ import annotations

import numpy as np

from edgequant.kernels import kquants_lanes as lanes
from edgequant.kernels.kquants_low import (
    dequantize_q2_k,
    dequantize_q3_k,
    dequantize_q6_k,
    quantize_q2_k,
    quantize_q3_k,
    quantize_q6_k,
)
from edgequant.kernels.kquants_search import qkx_lanes, qp_quants_u8
from edgequant.kernels.primitives import (
    F,
    f32_as_i32,
    get_fp16,
    get_u16,
    i32_as_f32,
    jit,
    nearest_int,
    put_fp16,
)

__all__ = [
    "dequantize_q2_k",
    "dequantize_q3_k",
    "dequantize_q4_k",
    "dequantize_q5_k",
    "dequantize_q6_k",
    "dequantize_q8_k",
    "quantize_q2_k",
    "quantize_q3_k",
    "quantize_q4_k",
    "quantize_q5_k",
    "quantize_q6_k",
    "quantize_q8_k",
]

QK_K = 256


# --- Q4_K / Q5_K --------------------------------------------------------------------------------------


@jit
def get_scale_min_k4(j, S, so):
    """§3.6: (scale, min) of sub-block j from the 12 packed bytes at ``S[so:]``."""
    if j < 4:
        return np.int32(S[so + j]) & 63, np.int32(S[so + j + 4]) & 63
    sc = (np.int32(S[so + j + 4]) & 0xF) | ((np.int32(S[so + j - 4]) >> 6) << 4)
    mn = (np.int32(S[so + j + 4]) >> 4) | ((np.int32(S[so + j]) >> 6) << 4)
    return sc, mn


@jit
def _q45_load(S, x, qw, use_qw, g, nb, j0):
    """Super-block ``g`` (row-major over the tensor) into lanes ``j0..j0+7`` (x, and qw/sigma2 if used)."""
    xr = x[g // nb]
    base = (g % nb) * QK_K
    lanes.load_lanes(S, xr, base, 32, 16, j0, 8)
    if use_qw:
        lanes.load_weights(S, qw, base, 32, 16, j0, 8, F(F(F(2.0) * lanes.block_sumsq(xr, base)) / F(256.0)))


@jit
def _q45_search(S, use_qw, nmax, rmin, rdelta, nstep):
    """Weights and the ``make_qkx`` search for the 16 loaded sub-blocks (two super-blocks)."""
    if use_qw:
        lanes.imatrix_weights(S, 32, 16)
        qkx_lanes(S, 32, nmax, 16, F(-0.9), F(0.05), 36, False)
        return
    for j in range(16):
        S[lanes.SW + j] = F(0.0)
    for i in range(32):
        for j in range(16):
            xv = S[lanes.XT + 16 * i + j]
            S[lanes.SW + j] = F(S[lanes.SW + j] + F(xv * xv))  # per-sub-block sum of squares
    for j in range(16):
        S[lanes.SW + j] = np.sqrt(F(S[lanes.SW + j] / F(32.0)))  # av_x
    for i in range(32):
        for j in range(16):
            k = 16 * i + j
            S[lanes.WT + k] = F(S[lanes.SW + j] + abs(S[lanes.XT + k]))
    qkx_lanes(S, 32, nmax, 16, rmin, rdelta, nstep, False)


@jit
def _q45_scales(S, use_qw, orow, o, j0, clamp63, Ls, Lm):
    """Scales/mins of lanes ``j0..j0+7``: 6-bit packing, fp16 d/dmin, per-lane re-quantization scales."""
    if not use_qw:
        max_scale = lanes.lane_max(S, lanes.SCL + j0, 8)
        max_min = lanes.lane_max(S, lanes.MINS + j0, 8)
        inv_scale = F(F(63.0) / max_scale) if max_scale > 0 else F(0.0)
        inv_min = F(F(63.0) / max_min) if max_min > 0 else F(0.0)
        for j in range(8):
            Ls[j] = min(63, nearest_int(F(inv_scale * S[lanes.SCL + j0 + j])) & 0xFF)
            Lm[j] = min(63, nearest_int(F(inv_min * S[lanes.MINS + j0 + j])) & 0xFF)
        dval = F(max_scale / F(63.0))
        mval = F(max_min / F(63.0))
    else:
        dval = qp_quants_u8(8, 63, S, lanes.SCL + j0, S, lanes.SW + j0, Ls)
        mval = qp_quants_u8(8, 63, S, lanes.MINS + j0, S, lanes.SW + j0, Lm)
        if clamp63:
            for j in range(8):
                Ls[j] = min(63, Ls[j])
                Lm[j] = min(63, Lm[j])
    so = o + 4
    for j in range(8):
        ls = Ls[j]
        lm = Lm[j]
        if j < 4:
            orow[so + j] = np.uint8(ls & 0xFF)
            orow[so + j + 4] = np.uint8(lm & 0xFF)
        else:
            orow[so + j + 4] = np.uint8(((ls & 0xF) | ((lm & 0xF) << 4)) & 0xFF)
            orow[so + j - 4] = np.uint8((np.int32(orow[so + j - 4]) | ((ls >> 4) << 6)) & 0xFF)
            orow[so + j] = np.uint8((np.int32(orow[so + j]) | ((lm >> 4) << 6)) & 0xFF)
    d = put_fp16(orow, o, dval)
    dmin = put_fp16(orow, o + 2, mval)
    for j in range(8):
        sc, mn = get_scale_min_k4(j, orow, so)
        S[lanes.RQD + j0 + j] = F(d * F(sc))
        S[lanes.RQM + j0 + j] = F(dmin * F(mn))


def _q45_codec(q5):
    """The (quantize, dequantize) row kernels of Q5_K (``q5``) or Q4_K; ``q5`` is constant to numba."""
    nmax = 31 if q5 else 15
    bsize = 176 if q5 else 144
    qs = 48 if q5 else 16  # offset of the low nibbles

    @jit
    def quantize(x, qw, out):
        rows, n = x.shape
        nb = n // QK_K
        total = rows * nb
        use_qw = qw.shape[0] > 0
        S = np.zeros(lanes.SCRATCH_SIZE, np.float32)
        L = np.zeros(2 * QK_K, np.int32)
        Ls = np.zeros(8, np.int32)
        Lm = np.zeros(8, np.int32)
        for g in range(0, total, 2):  # two super-blocks per search: 16 lanes
            g2 = g + 1 if g + 1 < total else g
            _q45_load(S, x, qw, use_qw, g, nb, 0)
            _q45_load(S, x, qw, use_qw, g2, nb, 8)
            if q5:
                _q45_search(S, use_qw, 31, F(-0.5), F(0.1), 15)
            else:
                _q45_search(S, use_qw, 15, F(-1.0), F(0.1), 20)
            for half in range(2):
                gg = g + half if half == 0 or g2 != g else g
                _q45_scales(S, use_qw, out[gg // nb], (gg % nb) * bsize, 8 * half, q5, Ls, Lm)
            # codes: lanes 0-7 (super-block g) into L[:256], lanes 8-15 (g2) into L[256:]
            lanes.requant_lanes(S, 32, 16, 0, nmax)
            for j in range(16):
                lanes.lane_codes(S, L, 32 * j, j, 32, 16)
            for half in range(g2 - g + 1):
                gg = g + half
                orow = out[gg // nb]
                o = (gg % nb) * bsize
                Lh = L[QK_K * half :]
                if q5:
                    lanes.pack_bit_plane(Lh, 4, orow, o + 16)  # qh: the 5th bits
                for c in range(4):
                    for l in range(32):
                        lo = Lh[64 * c + l] & 15
                        orow[o + qs + 32 * c + l] = np.uint8(lo | ((Lh[64 * c + 32 + l] & 15) << 4))

    @jit
    def dequantize(data, out):
        for r in range(out.shape[0]):
            src = data[r]
            y = out[r]
            for b in range(out.shape[1] // QK_K):
                o = b * bsize
                d = get_fp16(src, o)
                dmin = get_fp16(src, o + 2)
                for j in range(8):
                    sc, mn = get_scale_min_k4(j, src, o + 4)
                    d1 = F(d * F(sc))
                    m1 = F(dmin * F(mn))
                    c = j >> 1
                    shift = 4 * (j & 1)
                    for l in range(32):
                        q = (np.int32(src[o + qs + 32 * c + l]) >> shift) & 15
                        if q5:
                            q += 16 * ((np.int32(src[o + 16 + l]) >> j) & 1)
                        y[b * QK_K + 32 * j + l] = F(F(d1 * F(q)) - m1)

    return quantize, dequantize


quantize_q4_k, dequantize_q4_k = _q45_codec(False)
quantize_q5_k, dequantize_q5_k = _q45_codec(True)


# --- Q8_K ---------------------------------------------------------------------------------------------


@jit
def quantize_q8_k(x, qw, out):
    """Q8_K, 292-byte blocks: d **f32** @0, qs[256] int8 @4, bsums[16] int16 @260 (imatrix ignored)."""
    rows, n = x.shape
    nb = n // QK_K
    q = np.zeros(QK_K, np.int32)
    for r in range(rows):
        for b in range(nb):
            xb = x[r, b * QK_K : (b + 1) * QK_K]
            ob = out[r, b * 292 : (b + 1) * 292]
            # max |x| as an integer max over the magnitude bits (same order as the floats; NaN is
            # skipped like C's ``fabsf(x) > amax`` skips it)
            amax = np.int32(0)
            for i in range(QK_K):
                a = np.int32(np.int32(f32_as_i32(xb[i])) & np.int32(0x7FFFFFFF))
                amax = max(amax, np.int32(0) if a > np.int32(0x7F800000) else a)
            if amax == 0:
                for k in range(292):
                    ob[k] = 0
                continue
            m = F(0.0)
            for i in range(QK_K):  # the first element with the largest magnitude
                if (np.int32(f32_as_i32(xb[i])) & 0x7FFFFFFF) == amax:
                    m = xb[i]
                    break
            iscale = F(F(-127.0) / m)
            for i in range(QK_K):
                q[i] = ((min(127, nearest_int(F(iscale * xb[i]))) + 128) & 0xFF) - 128  # int8_t store
            for i in range(QK_K):
                ob[4 + i] = np.uint8(q[i] & 0xFF)
            for j in range(16):
                s = 0
                for ii in range(16):
                    s += q[16 * j + ii]
                ob[260 + 2 * j] = np.uint8(s & 0xFF)
                ob[261 + 2 * j] = np.uint8((s >> 8) & 0xFF)
            bits = np.int64(f32_as_i32(F(F(1.0) / iscale)))
            for k in range(4):
                ob[k] = np.uint8((bits >> (8 * k)) & 0xFF)


@jit
def dequantize_q8_k(data, out):
    """Q8_K blocks to float32: ``y = d*q``."""
    rows, n = out.shape
    nb = n // QK_K
    for r in range(rows):
        src = data[r]
        y = out[r]
        for b in range(nb):
            o = b * 292
            bits = np.int64(get_u16(src, o)) | (np.int64(get_u16(src, o + 2)) << 16)
            d = i32_as_f32(np.int32(bits - (1 << 32) if bits >= (1 << 31) else bits))
            for i in range(QK_K):
                q = np.int32(src[o + 4 + i])
                q = q - 256 if q > 127 else q
                y[b * QK_K + i] = F(d * F(q))
