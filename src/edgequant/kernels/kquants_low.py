"""Q2_K, Q3_K and Q6_K row kernels (16-weight sub-blocks), byte-exact with llama.cpp's ``quantize_q*_K``.

Without an importance vector the ``quantize_row_q*_K_ref`` algorithms run; with one the ``*_impl``
algorithms (``shared/reference/ggml-quants.md`` §4.7, §4.8, §4.11, §5). Every float is float32 and every
sum sequential (§2.1); integer stores wrap to uint8/int8 exactly where the C code stores into them.
The per-sub-block searches run lane-parallel, one sub-block per lane (``kquants_lanes``); the three
types share the super-block loop and the decoder, and differ in their scale levels and packing.

Block layouts (256 weights, little-endian):

* Q2_K, 84 bytes: ``scales[16]`` @0 (low nibble = 4-bit scale, high nibble = 4-bit min of sub-block
  j), ``qs[64]`` @16 (2-bit codes, byte ``32*(i//128) + i%32`` bits ``2*((i%128)//32)``),
  ``d`` fp16 @80, ``dmin`` fp16 @82. ``y = (d*sc)*q - dmin*mn``.
* Q3_K, 110 bytes: ``hmask[32]`` @0 (bit ``i//32`` of byte ``i%32`` = code >= 4), ``qs[64]`` @32
  (low 2 bits, Q2_K plane layout), ``scales[12]`` @96 (sixteen 6-bit ``u``: low nibbles in bytes 0..7,
  j < 8 low / j >= 8 high; top 2 bits of ``u_j`` at bits ``2*(j//4)`` of byte ``8 + j%4``), ``d`` fp16
  @108. ``y = (d*(u-32)) * (q2 - (0 if hbit else 4))``.
* Q6_K, 210 bytes: ``ql[128]`` @0, ``qh[64]`` @128, ``scales[16]`` int8 @192, ``d`` fp16 @208. Code
  ``L`` (0..63) of element ``128h + 32k + l`` (k = 0..3): low 4 bits in ``ql[64h + 32*(k&1) + l]`` (low
  nibble for k < 2, high for k >= 2), top 2 bits at bit ``2k`` of ``qh[32h + l]`` (the Q2_K plane
  layout). ``y = (d*sc)*(L-32)``.
"""

from __future__ import annotations

import numpy as np

from edgequant.kernels.kquants_lanes import (
    MINS,
    RQD,
    RQM,
    SCL,
    SCRATCH_SIZE,
    SW,
    WT,
    XT,
    block_sumsq,
    imatrix_weights,
    lane_codes,
    lane_max,
    load_lanes,
    load_weights,
    pack_2bit_planes,
    pack_bit_plane,
    requant_lanes,
    weights_x,
)
from edgequant.kernels.kquants_search import q3_lanes, qkx_lanes, qp_quants_u8, qx_lanes
from edgequant.kernels.primitives import (
    GROUP_MAX_EPS,
    F,
    get_fp16,
    jit,
    make_qx_quants,
    nearest_int,
    put_fp16,
    signed_absmax,
)

QK_K = 256


# --- Q2_K -------------------------------------------------------------------------------------------


@jit
def _q2_ref_level(S, R, sc, shift, orow, at):
    """``quantize_row_q2_K_ref``'s second level for the lane values ``S[R:R+16]`` (scales or mins): 4-bit
    codes of ``v * 15/max`` OR-ed into ``sc`` at ``shift``, fp16(max/15) at ``orow[at]`` (0 and no codes when
    no value is positive); returns the stored scale as decoded."""
    mx = lane_max(S, R, 16)
    if mx > 0:
        iscale = F(F(15.0) / mx)
        for j in range(16):
            sc[j] = (sc[j] | (nearest_int(F(iscale * S[R + j])) << shift)) & 0xFF
        return put_fp16(orow, at, F(mx / F(15.0)))
    return put_fp16(orow, at, F(0.0))


@jit
def _q2_scales(S, qw, xr, base, use_qw, orow, o, T):
    """The sub-block searches and the scale level of a Q2_K block: scales[16], d and dmin, ``S[RQD/RQM]``."""
    sc = T[0]
    if not use_qw:
        for k in range(QK_K):
            S[WT + k] = abs(S[XT + k])
        qkx_lanes(S, 16, 3, 16, F(-0.5), F(0.1), 15, True)
        sc[:] = 0
        d = _q2_ref_level(S, SCL, sc, 0, orow, o + 80)
        dmin = _q2_ref_level(S, MINS, sc, 4, orow, o + 82)
    else:
        load_weights(S, qw, base, 16, 16, 0, 16, F(block_sumsq(xr, base) / F(256.0)))
        imatrix_weights(S, 16, 16)
        qkx_lanes(S, 16, 3, 16, F(-0.9), F(0.05), 36, False)
        d = put_fp16(orow, o + 80, qp_quants_u8(16, 15, S, SCL, S, SW, T[1]))
        dmin = put_fp16(orow, o + 82, qp_quants_u8(16, 15, S, MINS, S, SW, T[2]))
        for j in range(16):
            sc[j] = (T[1, j] | (T[2, j] << 4)) & 0xFF
    for j in range(16):
        orow[o + j] = np.uint8(sc[j])
        S[RQD + j] = F(d * F(sc[j] & 0xF))
        S[RQM + j] = F(dmin * F(sc[j] >> 4))


# --- Q3_K -------------------------------------------------------------------------------------------


@jit
def _q3_levels(S, qw, xr, base, use_qw, u):
    """The sub-block searches of Q3_K and the second level: ``u`` = the 6-bit stored scales (biased by
    32); returns the float32 super-block scale d before fp16 rounding."""
    if use_qw:
        load_weights(S, qw, base, 16, 16, 0, 16, F(F(F(2.0) * block_sumsq(xr, base)) / F(256.0)))
        imatrix_weights(S, 16, 16)
        weights_x(S, QK_K, False)
        qx_lanes(S, 16, 4, 16)
        return make_qx_quants(16, 32, S, SCL, S, SW, u, 0)
    weights_x(S, QK_K, True)
    q3_lanes(S)
    _, max_scale = signed_absmax(S, SCL, 16)
    if max_scale == 0:
        u[:] = 0
        return F(0.0)
    iscale = F(F(-32.0) / max_scale)
    for j in range(16):
        l = ((nearest_int(F(iscale * S[SCL + j])) + 128) & 0xFF) - 128  # int8_t store
        u[j] = max(-32, min(31, l)) + 32
    return F(F(1.0) / iscale)


@jit
def _q3_scales(S, qw, xr, base, use_qw, orow, o, T):
    """Q3_K's scales[12] (sixteen 6-bit values), d, and ``S[RQD/RQM]``."""
    u = T[0]
    d = put_fp16(orow, o + 108, _q3_levels(S, qw, xr, base, use_qw, u))
    for k in range(12):  # a loop, not a slice assignment: a slice per block cost Q3_K a few percent
        orow[o + 96 + k] = 0
    for j in range(16):
        uj = u[j]
        if j < 8:
            orow[o + 96 + j] = np.uint8(uj & 0xF)
        else:
            orow[o + 96 + j - 8] |= np.uint8((uj & 0xF) << 4)
        orow[o + 96 + 8 + j % 4] |= np.uint8((uj >> 4) << (2 * (j // 4)))
        S[RQD + j] = F(d * F(uj - 32))  # re-quantize with the stored scales
        S[RQM + j] = F(0.0)


# --- Q6_K -------------------------------------------------------------------------------------------


@jit
def _q6_scales(S, qw, base, use_qw, orow, o):
    """Q6_K's search, int8 scales[16] and d, and ``S[RQD/RQM]``; False for an all-zero block (written as
    210 zero bytes, no codes)."""
    if use_qw:
        load_weights(S, qw, base, 16, 16, 0, 16, F(0.0))  # Q6_K weighs by the importance vector as is
    weights_x(S, QK_K, not use_qw)
    qx_lanes(S, 16, 32, 16)
    max_abs, max_scale = signed_absmax(S, SCL, 16)
    if max_abs < GROUP_MAX_EPS:
        orow[o : o + 210] = 0
        return False
    iscale = F(F(-128.0) / max_scale)
    d = put_fp16(orow, o + 208, F(F(1.0) / iscale))
    for ib in range(16):
        v = min(127, nearest_int(F(iscale * S[SCL + ib])))
        v = ((v + 128) & 0xFF) - 128  # int8_t store
        orow[o + 192 + ib] = np.uint8(v & 0xFF)
        S[RQD + ib] = F(d * F(v))
        S[RQM + ib] = F(0.0)
    return True


@jit
def _q6_pack(L, orow, o):
    """Q6_K's ql nibbles and qh top bits."""
    for h in range(2):
        for l in range(32):
            b = 128 * h + l
            orow[o + 64 * h + l] = np.uint8((L[b] & 15) | ((L[b + 64] & 15) << 4))
            orow[o + 64 * h + 32 + l] = np.uint8((L[b + 32] & 15) | ((L[b + 96] & 15) << 4))
    pack_2bit_planes(L, 4, orow, o + 128)


# --- the row kernels ----------------------------------------------------------------------------------


_BSIZE = {2: 84, 3: 110, 6: 210}  # bytes per block, by kind (2, 3, 6 = Q2_K, Q3_K, Q6_K)


def _codec(kind):
    """The (quantize, dequantize) row kernels of Q2_K, Q3_K or Q6_K (``kind`` 2, 3, 6; constant to numba)."""
    bsize = _BSIZE[kind]
    lo, hi = {2: (0, 3), 3: (-4, 3), 6: (-32, 31)}[kind]  # code range of the re-quantization

    @jit
    def quantize(x, qw, out):
        rows, n = x.shape
        nb = n // QK_K
        use_qw = qw.shape[0] > 0
        S = np.zeros(SCRATCH_SIZE, np.float32)
        L = np.zeros(QK_K, np.int32)
        T = np.zeros((3, 16), np.int32)
        for r in range(rows):
            xr = x[r]
            orow = out[r]
            for b in range(nb):
                base = b * QK_K
                o = b * bsize
                load_lanes(S, xr, base, 16, 16, 0, 16)
                if kind == 2:
                    _q2_scales(S, qw, xr, base, use_qw, orow, o, T)
                elif kind == 3:
                    _q3_scales(S, qw, xr, base, use_qw, orow, o, T)
                elif not _q6_scales(S, qw, base, use_qw, orow, o):
                    continue
                requant_lanes(S, 16, 16, lo, hi)
                for j in range(16):
                    lane_codes(S, L, 16 * j, j, 16, 16)
                if kind == 2:
                    pack_2bit_planes(L, 0, orow, o + 16)
                elif kind == 3:
                    pack_bit_plane(L, 2, orow, o)  # hmask: the high bit (code >= 4)
                    pack_2bit_planes(L, 0, orow, o + 32)
                else:
                    _q6_pack(L, orow, o)

    return quantize, _decoder(kind)


def _decoder(kind):
    """The dequantize row kernel of Q2_K, Q3_K or Q6_K (``kind`` 2, 3, 6; constant to numba).

    Sub-block j's 16 two-bit fields (Q2_K/Q3_K codes, Q6_K's top bits) come from the plane layout: byte
    ``qs + 32*(j//8) + 16*(j%2) + l``, bits ``2*((j%8)//2)``.
    """
    bsize = _BSIZE[kind]
    qs = {2: 16, 3: 32, 6: 128}[kind]  # the 2-bit planes

    @jit
    def dequantize(data, out):
        rows, n = out.shape
        for r in range(rows):
            src = data[r]
            y = out[r]
            for b in range(n // QK_K):
                o = b * bsize
                d = get_fp16(src, o + bsize - 2 if kind != 2 else o + 80)
                dmin = get_fp16(src, o + 82) if kind == 2 else F(0.0)
                for j in range(16):
                    ml = F(0.0)
                    if kind == 2:  # y = (d*(sc & 15))*q - dmin*(sc >> 4)
                        sc = np.int32(src[o + j])
                        dl = F(d * F(sc & 0xF))
                        ml = F(dmin * F(sc >> 4))
                    elif kind == 3:  # y = (d*(u-32)) * (q2 - (0 if hbit else 4))
                        u = np.int32(src[o + 96 + j % 8])
                        u = (u & 15) if j < 8 else (u >> 4)
                        u |= ((np.int32(src[o + 104 + j % 4]) >> (2 * (j // 4))) & 3) << 4
                        dl = F(d * F(u - 32))
                    else:  # y = (d*sc)*(L-32), sc int8
                        sv = np.int32(src[o + 192 + j])
                        dl = F(d * F(sv - 256 if sv > 127 else sv))
                    k = (j % 8) // 2  # the 32-element group within the 128-element half
                    p = 32 * (j // 8) + 16 * (j % 2)  # element (and plane byte) of l = 0 within that half
                    for l in range(16):
                        q = (np.int32(src[o + qs + p + l]) >> (2 * k)) & 3
                        if kind == 2:
                            y[b * QK_K + 16 * j + l] = F(F(dl * F(q)) - ml)
                        elif kind == 3:
                            hb = (np.int32(src[o + 16 * (j % 2) + l]) >> (j // 2)) & 1
                            y[b * QK_K + 16 * j + l] = F(dl * F(q - 4 + 4 * hb))
                        else:
                            ql = np.int32(src[o + 64 * (j // 8) + 32 * (k & 1) + 16 * (j % 2) + l])
                            q = ((ql >> 4) if k >= 2 else (ql & 15)) | (q << 4)
                            y[b * QK_K + 16 * j + l] = F(dl * F(q - 32))

    return dequantize


quantize_q2_k, dequantize_q2_k = _codec(2)
quantize_q3_k, dequantize_q3_k = _codec(3)
quantize_q6_k, dequantize_q6_k = _codec(6)
