"""Q2_K and Q3_K row kernels, byte-exact with llama.cpp's ``quantize_q2_K`` / ``quantize_q3_K``.

Without an importance vector the ``quantize_row_q*_K_ref`` algorithms run; with one the ``*_impl``
algorithms (``shared/reference/ggml-quants.md`` §4.7, §4.8, §5). Every float is float32 and every
sum sequential (§2.1); integer stores wrap to uint8/int8 exactly where the C code stores into them.
The per-sub-block searches run lane-parallel (``kquants_lanes``).

Block layouts (256 weights, little-endian):

* Q2_K, 84 bytes: ``scales[16]`` @0 (low nibble = 4-bit scale, high nibble = 4-bit min of sub-block
  j), ``qs[64]`` @16 (2-bit codes, byte ``32*(i//128) + i%32`` bits ``2*((i%128)//32)``),
  ``d`` fp16 @80, ``dmin`` fp16 @82. ``y = (d*sc)*q - dmin*mn``.
* Q3_K, 110 bytes: ``hmask[32]`` @0 (bit ``i//32`` of byte ``i%32`` = code >= 4), ``qs[64]`` @32
  (low 2 bits, Q2_K plane layout), ``scales[12]`` @96 (sixteen 6-bit ``u``: low nibbles in bytes 0..7,
  j < 8 low / j >= 8 high; top 2 bits of ``u_j`` at bits ``2*(j//4)`` of byte ``8 + j%4``), ``d`` fp16
  @108. ``y = (d*(u-32)) * (q2 - (0 if hbit else 4))``.
"""

from __future__ import annotations

import numpy as np

from edgequant.kernels.kquants_lanes import (
    MINS,
    RQD,
    RQM,
    SCL,
    SCRATCH_SIZE,
    SIG,
    SW,
    WT,
    WXT,
    XT,
    block_sumsq,
    imatrix_weights,
    lane_codes,
    lane_weight_sums,
    load_lanes,
    load_lanes_w,
    requant_lanes,
)
from edgequant.kernels.kquants_search import q3_lanes, qkx_lanes, qp_quants_u8, qx_lanes
from edgequant.kernels.primitives import (
    F,
    get_fp16,
    jit,
    make_qx_quants,
    nearest_int,
    put_fp16,
)

QK_K = 256


@jit
def pack_2bit_planes(L, out, off):
    """§3.7: the low 2 bits of 256 codes into 64 bytes at ``out[off:]``."""
    for h in range(2):
        b = 128 * h
        for l in range(32):
            v = (L[b + l] & 3) | ((L[b + l + 32] & 3) << 2)
            out[off + 32 * h + l] = np.uint8(v | ((L[b + l + 64] & 3) << 4) | ((L[b + l + 96] & 3) << 6))


# --- Q2_K -------------------------------------------------------------------------------------------


@jit
def quantize_q2_k(x, qw, out):
    """Q2_K, 84-byte blocks: scales[16] (scale | min << 4), qs[64] 2-bit planes, d fp16 @80, dmin fp16 @82."""
    rows, n = x.shape
    nb = n // QK_K
    use_qw = qw.shape[0] > 0
    S = np.zeros(SCRATCH_SIZE, np.float32)
    L = np.zeros(QK_K, np.int32)
    scales = np.zeros(16, np.float32)
    mins = np.zeros(16, np.float32)
    sw = np.zeros(16, np.float32)
    Ls = np.zeros(16, np.int32)
    Lm = np.zeros(16, np.int32)
    sc = np.zeros(16, np.int32)
    for r in range(rows):
        xr = x[r]
        orow = out[r]
        for b in range(nb):
            base = b * QK_K
            o = b * 84
            load_lanes(S, xr, base, 16, 16, 0, 16)
            if not use_qw:
                for k in range(QK_K):
                    S[WT + k] = abs(S[XT + k])
                qkx_lanes(S, 16, 3, 16, F(-0.5), F(0.1), 15, True)
                max_scale = F(0.0)
                max_min = F(0.0)
                for j in range(16):
                    s = S[SCL + j]
                    m = S[MINS + j]
                    scales[j] = s
                    mins[j] = m
                    if s > max_scale:
                        max_scale = s
                    if m > max_min:
                        max_min = m
                if max_scale > 0:
                    iscale = F(F(15.0) / max_scale)
                    for j in range(16):
                        sc[j] = nearest_int(F(iscale * scales[j])) & 0xFF
                    d = put_fp16(orow, o + 80, F(max_scale / F(15.0)))
                else:
                    for j in range(16):
                        sc[j] = 0
                    d = put_fp16(orow, o + 80, F(0.0))
                if max_min > 0:
                    iscale = F(F(15.0) / max_min)
                    for j in range(16):
                        sc[j] = (sc[j] | (nearest_int(F(iscale * mins[j])) << 4)) & 0xFF
                    dmin = put_fp16(orow, o + 82, F(max_min / F(15.0)))
                else:
                    dmin = put_fp16(orow, o + 82, F(0.0))
            else:
                sigma2 = F(block_sumsq(xr, base) / F(256.0))
                load_lanes_w(S, qw, base, 16, 16, 0, 16)
                for j in range(16):
                    S[SIG + j] = sigma2
                imatrix_weights(S, 16, 16)
                lane_weight_sums(S, 16, 16)
                qkx_lanes(S, 16, 3, 16, F(-0.9), F(0.05), 36, False)
                for j in range(16):
                    scales[j] = S[SCL + j]
                    mins[j] = S[MINS + j]
                    sw[j] = S[SW + j]
                dm = qp_quants_u8(16, 15, scales, sw, Ls)
                mm = qp_quants_u8(16, 15, mins, sw, Lm)
                d = put_fp16(orow, o + 80, dm)
                dmin = put_fp16(orow, o + 82, mm)
                for j in range(16):
                    sc[j] = (Ls[j] | (Lm[j] << 4)) & 0xFF
            for j in range(16):
                orow[o + j] = np.uint8(sc[j])
                S[RQD + j] = F(d * F(sc[j] & 0xF))
                S[RQM + j] = F(dmin * F(sc[j] >> 4))
            requant_lanes(S, 16, 16, 0, 3)
            for j in range(16):
                lane_codes(S, L, 16 * j, j, 16, 16)
            pack_2bit_planes(L, orow, o + 16)


@jit
def dequantize_q2_k(data, out):
    """Q2_K blocks to float32: ``y = (d*(sc & 15))*q - dmin*(sc >> 4)``."""
    rows, n = out.shape
    nb = n // QK_K
    for r in range(rows):
        src = data[r]
        y = out[r]
        for b in range(nb):
            o = b * 84
            d = get_fp16(src, o + 80)
            dmin = get_fp16(src, o + 82)
            for j in range(16):
                sc = np.int32(src[o + j])
                dl = F(d * F(sc & 0xF))
                ml = F(dmin * F(sc >> 4))
                q0 = o + 16 + 32 * (j // 8) + 16 * (j % 2)
                shift = 2 * ((j % 8) // 2)
                for l in range(16):
                    q = (np.int32(src[q0 + l]) >> shift) & 3
                    y[b * QK_K + 16 * j + l] = F(F(dl * F(q)) - ml)


# --- Q3_K -------------------------------------------------------------------------------------------


@jit
def quantize_q3_k(x, qw, out):
    """Q3_K, 110-byte blocks: hmask[32], qs[64] 2-bit planes, scales[12] (16 x 6 bits), d fp16 @108."""
    rows, n = x.shape
    nb = n // QK_K
    use_qw = qw.shape[0] > 0
    S = np.zeros(SCRATCH_SIZE, np.float32)
    L = np.zeros(QK_K, np.int32)
    Ls = np.zeros(16, np.int32)
    u = np.zeros(16, np.int32)
    for r in range(rows):
        xr = x[r]
        orow = out[r]
        for b in range(nb):
            base = b * QK_K
            o = b * 110
            load_lanes(S, xr, base, 16, 16, 0, 16)
            if not use_qw:
                for k in range(QK_K):
                    S[WT + k] = F(S[XT + k] * S[XT + k])
                for k in range(QK_K):
                    S[WXT + k] = F(S[WT + k] * S[XT + k])
                q3_lanes(S)
                amax = F(0.0)
                max_scale = F(0.0)
                for j in range(16):
                    s = S[SCL + j]
                    a = abs(s)
                    if a > amax:
                        amax = a
                        max_scale = s
                if max_scale != 0:
                    iscale = F(F(-32.0) / max_scale)
                    for j in range(16):
                        l = ((nearest_int(F(iscale * S[SCL + j])) + 128) & 0xFF) - 128  # int8_t store
                        u[j] = max(-32, min(31, l)) + 32
                    d = put_fp16(orow, o + 108, F(F(1.0) / iscale))
                else:
                    for j in range(16):
                        u[j] = 0
                    d = put_fp16(orow, o + 108, F(0.0))
            else:
                sigma2 = F(F(F(2.0) * block_sumsq(xr, base)) / F(256.0))
                load_lanes_w(S, qw, base, 16, 16, 0, 16)
                for j in range(16):
                    S[SIG + j] = sigma2
                imatrix_weights(S, 16, 16)
                lane_weight_sums(S, 16, 16)
                for k in range(QK_K):
                    S[WXT + k] = F(S[WT + k] * S[XT + k])
                qx_lanes(S, 16, 4, 16)
                d_block = make_qx_quants(16, 32, S, SCL, S, SW, Ls, 0)
                for j in range(16):
                    u[j] = Ls[j]
                d = put_fp16(orow, o + 108, d_block)
            for k in range(12):
                orow[o + 96 + k] = 0
            for j in range(16):
                uj = u[j]
                if j < 8:
                    orow[o + 96 + j] = np.uint8(uj & 0xF)
                else:
                    orow[o + 96 + j - 8] |= np.uint8((uj & 0xF) << 4)
                orow[o + 96 + 8 + j % 4] |= np.uint8((uj >> 4) << (2 * (j // 4)))
            for j in range(16):  # re-quantize with the stored scales
                S[RQD + j] = F(d * F(u[j] - 32))
                S[RQM + j] = F(0.0)
            requant_lanes(S, 16, 16, -4, 3)
            for j in range(16):
                lane_codes(S, L, 16 * j, j, 16, 16)
            for l in range(32):  # hmask: bit k of byte l is the high bit (code >= 4) of element 32k+l
                h = 0
                for k in range(8):
                    h |= ((L[32 * k + l] >> 2) & 1) << k
                orow[o + l] = np.uint8(h)
            pack_2bit_planes(L, orow, o + 32)


@jit
def dequantize_q3_k(data, out):
    """Q3_K blocks to float32: ``y = (d*(u-32)) * (q2 - (0 if hbit else 4))``."""
    rows, n = out.shape
    nb = n // QK_K
    for r in range(rows):
        src = data[r]
        y = out[r]
        for b in range(nb):
            o = b * 110
            d = get_fp16(src, o + 108)
            for j in range(16):
                lo = (np.int32(src[o + 96 + j]) & 15) if j < 8 else (np.int32(src[o + 96 + j - 8]) >> 4)
                hi = (np.int32(src[o + 96 + 8 + j % 4]) >> (2 * (j // 4))) & 3
                dl = F(d * F((lo | (hi << 4)) - 32))
                q0 = o + 32 + 32 * (j // 8) + 16 * (j % 2)
                h0 = o + 16 * (j % 2)
                shift = 2 * ((j % 8) // 2)
                hbit = j // 2
                for l in range(16):
                    q = (np.int32(src[q0 + l]) >> shift) & 3
                    hb = (np.int32(src[h0 + l]) >> hbit) & 1
                    y[b * QK_K + 16 * j + l] = F(dl * F(q - 4 + 4 * hb))
