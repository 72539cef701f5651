"""Legacy 32-weight block codecs Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, byte-exact with ggml (spec §4.1-4.6).

Block layouts (little-endian; ``qs`` byte j holds element j in the low nibble, j+16 in the high one):

* Q4_0 (18 B): ``d`` fp16 | ``qs[16]``; y = (code - 8) * d.
* Q4_1 (20 B): ``d`` fp16 | ``m`` fp16 | ``qs[16]``; y = code * d + m.
* Q5_0 (22 B): ``d`` fp16 | ``qh`` u32 (bit j = 5th bit of code j) | ``qs[16]``; y = (code - 16) * d.
* Q5_1 (24 B): ``d`` fp16 | ``m`` fp16 | ``qh`` u32 | ``qs[16]``; y = code * d + m.
* Q8_0 (34 B): ``d`` fp16 | ``qs[32]`` int8; y = q * d.
* Q8_1 (36 B): ``d`` fp16 | ``s`` fp16 (= fp16(sum(q) * d)) | ``qs[32]`` int8; y = q * d (no ggml decoder).

Without an importance vector the ``_ref`` quantizers run (truncating casts, Q8 ``roundf``); with one,
Q4_0/Q5_0 run ``make_qx_quants`` and Q4_1/Q5_1 ``make_qkx3`` with a row-level sigma2 (§5). Those
searches (``legacy_search``) run on 32 blocks at once, one block per SIMD lane: each lane performs ggml's
sequential float32 algorithm on its own block, so the bytes are ggml's while the loops vectorize across
blocks. Float->int casts follow x86 ``cvttss2si`` (NaN / out of range -> INT_MIN) before wrapping to 8
bits. This module holds the 4/5-bit types; Q8_0 and Q8_1 are in ``legacy_q8`` and re-exported here.
"""

from __future__ import annotations

import numpy as np

from edgequant.kernels.legacy_q8 import (
    FLT_MAX,
    dequantize_q8_0,
    dequantize_q8_1,
    quantize_q8_0,
    quantize_q8_1,
)
from edgequant.kernels.legacy_search import clamp_code, qkx_blocks, qx_blocks
from edgequant.kernels.primitives import (
    GROUP_MAX_EPS,
    F,
    cvt_i32,
    f32_as_i32,
    get_fp16,
    i32_as_f32,
    jit,
    put_fp16,
    wrap_i8,
)
from edgequant.kernels.simd import ABS_MASK as _ABS
from edgequant.kernels.simd import INF_BITS as _INF
from edgequant.kernels.simd import block_absmax as _absmax
from edgequant.kernels.simd import inline, opaque

__all__ = [
    "dequantize_q4_0",
    "dequantize_q4_1",
    "dequantize_q5_0",
    "dequantize_q5_1",
    "dequantize_q8_0",
    "dequantize_q8_1",
    "quantize_q4_0",
    "quantize_q4_1",
    "quantize_q5_0",
    "quantize_q5_1",
    "quantize_q8_0",
    "quantize_q8_1",
]

_G = 32  # blocks searched together (SIMD lanes) by the imatrix paths


@inline
def _sel(a, b, less):
    """The smaller (``less``) or larger of a and b, as ``a if a < b else b`` / ``a if a > b else b``."""
    if less:
        return a if a < b else b
    return a if a > b else b


@inline
def _hred(t, k, less):
    """min (``less``) or max of the 8 values t[k, :] as a balanced tree of ``_sel``."""
    a = _sel(_sel(t[k, 0], t[k, 4], less), _sel(t[k, 1], t[k, 5], less), less)
    return _sel(a, _sel(_sel(t[k, 2], t[k, 6], less), _sel(t[k, 3], t[k, 7], less), less), less)


@inline
def _pack(L, o, qs_at, qh_at, H):
    """Nibbles of codes L[0..31] at ``qs_at``; for Q5 types (qh_at >= 0) the 5th bits as a u32 at qh_at."""
    for j in range(H):
        o[qs_at + j] = np.uint8(
            np.int32(L[j] & np.int32(15)) | np.int32(np.int32(L[j + 16] & np.int32(15)) << 4)
        )
    if qh_at >= 0:
        qh = np.uint32(0)
        for j in range(H):
            qh |= np.uint32(((L[j] >> 4) & 1) << j) | np.uint32(((L[j + 16] >> 4) & 1) << (j + 16))
        for b in range(4):
            o[qh_at + b] = np.uint8((qh >> (8 * b)) & 0xFF)


# --- importance-weighted path (searches in ``legacy_search``) ----------------------------------------


@jit
def _quantize_imat(x, qw, out, nmax, bsize, sym):
    """``quantize_row_q{4,5}_{0,1}_impl``: row sigma2, w = qw*sqrt(sigma2 + x^2), then the search."""
    rows, n = x.shape
    nb = n // 32
    total = rows * nb
    G = opaque(_G)
    H = opaque(16)
    qs_at = (2 if sym else 4) + (4 if nmax == 16 or nmax == 31 else 0)
    qh_at = qs_at - 4 if nmax == 16 or nmax == 31 else -1
    lo = np.int32(-nmax if sym else 0)
    hi = np.int32(nmax - 1 if sym else nmax)
    sig = np.empty(rows, np.float32)
    for r in range(rows):
        acc = F(0.0)
        for j in range(n):
            acc = F(acc + F(x[r, j] * x[r, j]))
        sig[r] = F(acc / F(n))
    X = np.zeros((32, _G), np.float32)
    W = np.zeros((32, _G), np.float32)
    S = np.zeros((16, _G), np.float32)
    L = np.zeros(32, np.int32)
    for g0 in range(0, total, _G):
        for l in range(_G):
            gb = min(g0 + l, total - 1)  # a short last group repeats its last block
            r = gb // nb
            s = (gb % nb) * 32
            for i in range(32):
                xv = x[r, s + i]
                X[i, l] = xv
                W[i, l] = F(qw[s + i] * np.sqrt(F(sig[r] + F(xv * xv))))
        if sym:
            qx_blocks(X, W, nmax, S, G)
        else:
            qkx_blocks(X, W, nmax, S, G)
        for l in range(min(_G, total - g0)):
            gb = g0 + l
            o = out[gb // nb]
            off = (gb % nb) * bsize
            put_fp16(o, off, S[0, l])
            shift = F(0.0) if sym else S[2, l]
            if not sym:
                put_fp16(o, off + 2, S[3, l])
            zero = sym and S[2, l] < GROUP_MAX_EPS  # make_qx_quants: all codes 0
            for i in range(32):  # the codes of the winning candidate, as the C search stored them
                L[i] = 0 if zero else np.int32(clamp_code(F(S[1, l] * F(X[i, l] - shift)), lo, hi)) - lo
            _pack(L, o, off + qs_at, off + qh_at if qh_at >= 0 else -1, H)


# --- reference paths (no importance vector) ---------------------------------------------------------


@jit
def _sym_ref(x, out, nmax, bsize):
    """``quantize_row_q4_0_ref`` / ``q5_0_ref``: d = m/-nmax, codes min(2nmax-1, trunc(x/d + nmax + 0.5))."""
    rows, n = x.shape
    B = opaque(32)
    H = opaque(16)
    L = np.zeros(32, np.int32)
    shift = F(F(nmax) + F(0.5))
    top = np.int32(2 * nmax - 1)
    qs_at = 6 if nmax == 16 else 2
    for r in range(rows):
        xr = x[r]
        xi = xr.view(np.int32)
        o = out[r]
        for ib in range(n // 32):
            s = ib * 32
            off = ib * bsize
            _, m, finite = _absmax(xr, xi, s, B)
            d = F(m / F(-F(nmax)))
            idd = F(F(1.0) / d) if d != 0 else F(0.0)
            put_fp16(o, off, d)
            if finite and abs(idd) <= FLT_MAX:  # |x*id| <= nmax: plain casts are exact
                qh = np.uint32(0)
                for j in range(H):
                    a = min(top, np.int32(F(F(xr[s + j] * idd) + shift)))
                    b = min(top, np.int32(F(F(xr[s + 16 + j] * idd) + shift)))
                    o[off + qs_at + j] = np.uint8(
                        np.int32(a & np.int32(15)) | np.int32(np.int32(b & np.int32(15)) << 4)
                    )
                    qh |= np.uint32(((a >> 4) & 1) << j) | np.uint32(((b >> 4) & 1) << (j + 16))
                if nmax == 16:
                    for k in range(4):
                        o[off + 2 + k] = np.uint8((qh >> (8 * k)) & 0xFF)
                continue
            for j in range(32):
                L[j] = min(top, wrap_i8(cvt_i32(F(F(xr[s + j] * idd) + shift)))) & 0xFF
            _pack(L, o, off + qs_at, off + 2 if nmax == 16 else -1, H)


@jit
def _asym_ref(x, out, nmax, bsize):
    """``quantize_row_q4_1_ref`` / ``q5_1_ref``: d = (max-min)/nmax, m = min, codes trunc((x-min)/d + 0.5).

    min/max come from an element-wise tree over four 8-wide columns (vectorizes; a running min does
    not). Only the sign of a zero extreme depends on the order, and rows holding inf/NaN differ from the
    C scan; those replay the scan.
    """
    rows, n = x.shape
    B = opaque(32)
    H = opaque(16)
    E = opaque(8)
    L = np.zeros(32, np.int32)
    t = np.zeros((2, 8), np.float32)
    fnmax = F(nmax)
    top = np.int32(nmax)
    for r in range(rows):
        xr = x[r]
        o = out[r]
        xi = xr.view(np.int32)
        mb = np.int32(0)
        for j in range(n):
            mb = np.int32(max(mb, np.int32(xi[j] & _ABS)))
        finite = mb < _INF
        for ib in range(n // 32):
            s = ib * 32
            off = ib * bsize
            for k in range(E):
                a = xr[s + k]
                b = xr[s + 8 + k]
                c = xr[s + 16 + k]
                e = xr[s + 24 + k]
                t[0, k] = _sel(_sel(a, b, True), _sel(c, e, True), True)
                t[1, k] = _sel(_sel(a, b, False), _sel(c, e, False), False)
            mn = _hred(t, 0, True)
            mx = _hred(t, 1, False)
            if mn == 0 or mx == 0 or not finite:
                mn = FLT_MAX  # replay the C scan (+-0 ties keep the first zero; inf/NaN rows)
                mx = F(-FLT_MAX)
                for j in range(32):
                    v = xr[s + j]
                    if v < mn:
                        mn = v
                    if v > mx:
                        mx = v
            rng = F(mx - mn)
            d = F(rng / fnmax)
            idd = F(F(1.0) / d) if d != 0 else F(0.0)
            put_fp16(o, off, d)
            put_fp16(o, off + 2, mn)
            if finite and abs(idd) <= FLT_MAX and rng <= FLT_MAX:  # 0 <= (x-mn)*id <= nmax
                if nmax == 15:
                    for j in range(H):
                        a = min(top, np.int32(F(F(F(xr[s + j] - mn) * idd) + F(0.5))))
                        b = min(top, np.int32(F(F(F(xr[s + 16 + j] - mn) * idd) + F(0.5))))
                        o[off + 4 + j] = np.uint8(a | np.int32(b << np.int32(4)))
                    continue
                for j in range(B):
                    L[j] = min(top, np.int32(F(F(F(xr[s + j] - mn) * idd) + F(0.5))))
            else:  # Q4_1: MIN(15, (int8_t)v); Q5_1: (uint8_t)v, no clamp
                for j in range(32):
                    c = cvt_i32(F(F(F(xr[s + j] - mn) * idd) + F(0.5)))
                    L[j] = (min(15, wrap_i8(c)) if nmax == 15 else c) & 0xFF
            _pack(L, o, off + (8 if nmax == 31 else 4), off + 4 if nmax == 31 else -1, H)


# --- dequantizers (ggml's dequantize_row_*) and the row kernels -----------------------------------------


@jit
def _dequantize(data, out, bsize, bits, has_min):
    rows, n = out.shape
    H = opaque(16)
    offset = 0 if has_min else 1 << (bits - 1)
    q_off = (4 if has_min else 2) + (4 if bits == 5 else 0)
    for r in range(rows):
        src = data[r]
        y = out[r]
        for ib in range(n // 32):
            off = ib * bsize
            s = ib * 32
            d = get_fp16(src, off)
            m = get_fp16(src, off + 2) if has_min else F(0.0)
            qh = np.int64(0)
            if bits == 5:
                for b in range(4):
                    qh |= np.int64(src[off + q_off - 4 + b]) << (8 * b)
            if has_min and d != d and m != m:  # two NaN operands: x86 returns the first, (q*d) -> quiet d
                qd = i32_as_f32(np.int32(f32_as_i32(d) | np.int32(0x400000)))
                for j in range(32):
                    y[s + j] = qd
                continue
            for j in range(H):
                b = np.int32(src[off + q_off + j])
                c0 = (b & 0x0F) | np.int32(((qh >> j) & 1) << 4)
                c1 = (b >> 4) | np.int32(((qh >> (j + 16)) & 1) << 4)
                if has_min:
                    y[s + j] = F(F(F(c0) * d) + m)
                    y[s + j + 16] = F(F(F(c1) * d) + m)
                else:
                    y[s + j] = F(F(c0 - offset) * d)
                    y[s + j + 16] = F(F(c1 - offset) * d)


def _codec(nmax, bsize, sym):
    """The (quantize, dequantize) row kernels of one 4/5-bit type; the arguments are constant to numba.

    ``nmax``: 8 (Q4_0), 16 (Q5_0), 15 (Q4_1), 31 (Q5_1); ``sym``: the ``_0`` types (no min).
    """
    bits = 5 if nmax in (16, 31) else 4

    @jit
    def quantize(x, qw, out):
        if qw.shape[0]:
            _quantize_imat(x, qw, out, nmax, bsize, sym)
        elif sym:
            _sym_ref(x, out, nmax, bsize)
        else:
            _asym_ref(x, out, nmax, bsize)

    @jit
    def dequantize(data, out):
        _dequantize(data, out, bsize, bits, not sym)

    return quantize, dequantize


quantize_q4_0, dequantize_q4_0 = _codec(8, 18, True)
quantize_q4_1, dequantize_q4_1 = _codec(15, 20, False)
quantize_q5_0, dequantize_q5_0 = _codec(16, 22, True)
quantize_q5_1, dequantize_q5_1 = _codec(31, 24, False)
