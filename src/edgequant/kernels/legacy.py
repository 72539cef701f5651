"""Legacy 32-weight block codecs Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, byte-exact with ggml (spec §4.1-4.6).

Block layouts (little-endian; ``qs`` byte j holds element j in the low nibble, j+16 in the high one):

* Q4_0 (18 B): ``d`` fp16 | ``qs[16]``; y = (code - 8) * d.
* Q4_1 (20 B): ``d`` fp16 | ``m`` fp16 | ``qs[16]``; y = code * d + m.
* Q5_0 (22 B): ``d`` fp16 | ``qh`` u32 (bit j = 5th bit of code j) | ``qs[16]``; y = (code - 16) * d.
* Q5_1 (24 B): ``d`` fp16 | ``m`` fp16 | ``qh`` u32 | ``qs[16]``; y = code * d + m.
* Q8_0 (34 B): ``d`` fp16 | ``qs[32]`` int8; y = q * d.
* Q8_1 (36 B): ``d`` fp16 | ``s`` fp16 (= fp16(sum(q) * d)) | ``qs[32]`` int8; y = q * d (no ggml decoder).

Without an importance vector the ``_ref`` quantizers run (truncating casts, Q8 ``roundf``); with one,
Q4_0/Q5_0 use ``make_qx_quants`` and Q4_1/Q5_1 ``make_qkx3`` with a row-level sigma2 (§5). The searches
here evaluate all grid candidates of a block at once (each candidate keeps its own sequential float32
sums, so the arithmetic is exactly ggml's) and then pick the winner in ggml's order.
Float->int casts follow x86 ``cvttss2si`` (NaN / out of range -> INT_MIN) before wrapping to 8 bits.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from edgequant.kernels.primitives import F, GROUP_MAX_EPS, f32_as_i32, get_fp16, i32_as_f32, jit, nearest_int, put_fp16, roundf_away

inline = njit(cache=True, nogil=True, fastmath=False, error_model="numpy", inline="always")
"""Small block helpers are inlined at numba-IR level: a call per block costs more than the block's work,
and inside the caller LLVM can see that block offsets are non-negative, so the loops vectorize."""

FLT_MAX = F(3.4028234663852886e38)
_ABS = np.int32(0x7FFFFFFF)
_INF = np.int32(0x7F800000)
INF32 = F(np.inf)
_NQX = 32  # make_qx_quants candidates: 1 + 18 grid steps, padded to a multiple of 16 lanes
_G = 32  # blocks searched together by the make_qkx3 lanes


# --- shared block helpers -------------------------------------------------------------------------------


@intrinsic
def opaque(typingctx, v):
    """Return the integer ``v`` unchanged but hidden from the optimizer (an empty inline asm).

    numba disables LLVM's SLP vectorizer, and a loop with a constant trip count of 16 or 32 is fully
    unrolled into scalar code before the loop vectorizer sees it. Loops over ``opaque(32)`` stay loops
    and get vectorized.
    """
    if not isinstance(v, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        ty = context.get_value_type(sig.args[0])
        return builder.call(ir.InlineAsm(ir.FunctionType(ty, [ty]), "", "=r,0"), [args[0]])

    return v(v), codegen


@jit
def _cvt(t):
    """C float->int32 as x86 does it: truncate toward zero; NaN or out of range -> INT_MIN."""
    if t >= F(-2147483648.0) and t < F(2147483648.0):
        return np.int64(np.int32(t))
    return np.int64(-2147483648)


@inline
def _nint(v):
    """``nearest_int`` (the exact ggml bit trick, wrap-around included) kept in int32 so it vectorizes."""
    return np.int32(np.int32(f32_as_i32(F(v + F(12582912.0))) & np.int32(0x7FFFFF)) - np.int32(0x400000))


@jit
def _i8(c):
    """Wrap an integer to int8 (C conversion to int8_t)."""
    return ((c + 128) & 0xFF) - 128


@inline
def _absmax(xr, xi, s, B):
    """(amax, m, finite) of the block at s: ggml's first-index, strictly-greater scan (§2.7).

    One vectorized pass takes the largest magnitude among positive and among negative elements; only a
    tie between +a and -a, or an inf/NaN in the block (``finite`` False), needs the literal scan.
    """
    mp = np.int32(0)
    mq = np.int32(0)
    for j in range(B):
        b = xi[s + j]
        a = np.int32(b & _ABS)
        mp = np.int32(max(mp, a if b >= 0 else np.int32(0)))
        mq = np.int32(max(mq, np.int32(0) if b >= 0 else a))
    finite = mp < _INF and mq < _INF
    if finite:
        if mp > mq:
            v = i32_as_f32(np.int32(mp))
            return v, v, True
        if mq > mp:
            v = i32_as_f32(np.int32(mq))
            return v, -v, True
        if mp == 0:
            return F(0.0), F(0.0), True
    amax = F(0.0)
    m = F(0.0)
    for j in range(B):
        ax = abs(xr[s + j])
        if ax > amax:
            amax = ax
            m = xr[s + j]
    return amax, m, finite


@jit
def _row_sigma2(xr):
    s = F(0.0)
    for j in range(xr.shape[0]):
        s = F(s + F(xr[j] * xr[j]))
    return F(s / F(xr.shape[0]))


@inline
def _weights(xr, s, qw, sigma2, w, B):
    for j in range(B):
        x = xr[s + j]
        w[j] = F(qw[s + j] * np.sqrt(F(sigma2 + F(x * x))))


@jit
def _qx_search(xr, xi, s, w, nmax, L, lv, sc):
    """``make_qx_quants(32, nmax, x, w)`` (§3.1): codes 0..2*nmax-1 into L, returns the scale."""
    B = opaque(32)
    NC = opaque(_NQX)
    isc, slx, sl2 = sc[0], sc[1], sc[2]
    amax, m, _ = _absmax(xr, xi, s, B)
    if amax < GROUP_MAX_EPS:
        for i in range(32):
            L[i] = 0
        return F(0.0)
    fnmax = F(nmax)
    lo = np.int32(-nmax)
    hi = np.int32(nmax - 1)
    isc[0] = F(F(-fnmax) / m)
    for k in range(1, 19):
        step = k - 10 if k <= 9 else k - 9
        isc[k] = F(F(-F(fnmax + F(F(0.1) * F(step)))) / m)
    for k in range(NC):
        slx[k] = F(0.0)
        sl2[k] = F(0.0)
    for i in range(32):
        x = xr[s + i]
        wi = w[i]
        wx = F(wi * x)
        for k in range(NC):
            fl = F(np.int32(max(lo, min(hi, _nint(F(isc[k] * x))))))
            lv[i, k] = fl
            slx[k] = F(slx[k] + F(wx * fl))
            sl2[k] = F(sl2[k] + F(F(wi * fl) * fl))
    scale = F(slx[0] / sl2[0]) if sl2[0] != 0 else F(0.0)
    best = F(scale * slx[0])
    win = 0
    for k in range(1, 19):
        if sl2[k] > 0 and F(slx[k] * slx[k]) > F(best * sl2[k]):
            scale = F(slx[k] / sl2[k])
            best = F(scale * slx[k])
            win = k
    for i in range(32):
        L[i] = np.int32(lv[i, win]) + nmax
    return scale


@jit
def _qkx_lanes(X, W, nmax, LV, S, G):
    """``make_qkx3_quants(32, nmax, x, w, -0.9, 0.05, 36, false)`` (§3.3) for G blocks at once.

    ``X``/``W`` hold element i of block l at [i, l]. Every lane runs the sequential C algorithm on its
    own block (same operations, same order), so the search vectorizes across blocks, including the
    accepted grid point's fitted min replacing ``mn`` for the later points. Results in ``S`` rows:
    0 ``mn`` (as returned: -the_min), 5 scale, 14/15 the winning (iscale, mn) that reproduce the codes,
    16 degenerate flag (max <= min: scale 0, codes 0, min = row 17).
    """
    fnmax = F(nmax)
    hi = np.int32(nmax)
    mn, mx, sw, sx, isn, scale, best, sl = S[0], S[1], S[2], S[3], S[4], S[5], S[6], S[7]
    sl2, sxl, cur, ts, tm, dd, wis, wmn, deg, mn0 = S[8], S[9], S[10], S[11], S[12], S[13], S[14], S[15], S[16], S[17]
    for l in range(G):
        mn[l] = X[0, l]
        mx[l] = X[0, l]
        sw[l] = W[0, l]
        sx[l] = F(W[0, l] * X[0, l])
    for i in range(1, 32):
        for l in range(G):
            xv = X[i, l]
            wv = W[i, l]
            mn[l] = xv if xv < mn[l] else mn[l]
            mx[l] = xv if xv > mx[l] else mx[l]
            sw[l] = F(sw[l] + wv)
            sx[l] = F(sx[l] + F(wv * xv))
    for l in range(G):
        m = F(0.0) if mn[l] > 0 else mn[l]
        mn[l] = m
        mn0[l] = m
        deg[l] = F(1.0) if mx[l] <= m else F(0.0)
        isc = F(fnmax / F(mx[l] - m))
        isn[l] = isc
        wis[l] = isc
        wmn[l] = m
        scale[l] = F(F(1.0) / isc)
        best[l] = F(0.0)
    for i in range(32):
        for l in range(G):
            xv = X[i, l]
            fl = F(np.int32(max(np.int32(0), min(hi, _nint(F(isn[l] * F(xv - mn[l])))))))
            diff = F(F(F(scale[l] * fl) + mn[l]) - xv)
            best[l] = F(best[l] + F(W[i, l] * F(diff * diff)))
    for step in range(37):
        rs = F(F(F(-0.9) + F(F(0.05) * F(step))) + fnmax)
        for l in range(G):
            isn[l] = F(rs / F(mx[l] - mn[l]))
            sl[l] = F(0.0)
            sl2[l] = F(0.0)
            sxl[l] = F(0.0)
            cur[l] = F(0.0)
        for i in range(32):
            for l in range(G):
                xv = X[i, l]
                fl = F(np.int32(max(np.int32(0), min(hi, _nint(F(isn[l] * F(xv - mn[l])))))))
                LV[i, l] = fl
                wl = F(W[i, l] * fl)
                sl[l] = F(sl[l] + wl)
                sl2[l] = F(sl2[l] + F(wl * fl))
                sxl[l] = F(sxl[l] + F(wl * xv))
        for l in range(G):
            D = F(F(sw[l] * sl2[l]) - F(sl[l] * sl[l]))
            t_s = F(F(F(sw[l] * sxl[l]) - F(sx[l] * sl[l])) / D)
            t_m = F(F(F(sl2[l] * sx[l]) - F(sl[l] * sxl[l])) / D)
            pos = t_m > 0
            ts[l] = F(sxl[l] / sl2[l]) if pos else t_s
            tm[l] = F(0.0) if pos else t_m
            dd[l] = D
        for i in range(32):
            for l in range(G):
                diff = F(F(F(ts[l] * LV[i, l]) + tm[l]) - X[i, l])
                cur[l] = F(cur[l] + F(W[i, l] * F(diff * diff)))
        for l in range(G):
            acc = dd[l] > 0 and cur[l] < best[l]
            best[l] = cur[l] if acc else best[l]
            scale[l] = ts[l] if acc else scale[l]
            wis[l] = isn[l] if acc else wis[l]
            wmn[l] = mn[l] if acc else wmn[l]
            mn[l] = tm[l] if acc else mn[l]
    for i in range(32):
        for l in range(G):
            LV[i, l] = F(np.int32(max(np.int32(0), min(hi, _nint(F(wis[l] * F(X[i, l] - wmn[l])))))))


@inline
def _pack(L, o, qs_at, qh_at, H):
    """Nibbles of codes L[0..31] at ``qs_at``; for Q5 types (qh_at >= 0) the 5th bits as a u32 at qh_at."""
    for j in range(H):
        o[qs_at + j] = np.uint8(np.int32(L[j] & np.int32(15)) | np.int32(np.int32(L[j + 16] & np.int32(15)) << np.int32(4)))
    if qh_at >= 0:
        qh = np.uint32(0)
        for j in range(H):
            qh |= np.uint32(((L[j] >> 4) & 1) << j) | np.uint32(((L[j + 16] >> 4) & 1) << (j + 16))
        for b in range(4):
            o[qh_at + b] = np.uint8((qh >> (8 * b)) & 0xFF)


# --- Q4_0 / Q5_0 (symmetric) ------------------------------------------------------------------------------


@jit
def _quantize_sym(x, qw, out, nmax, bsize):
    """Q4_0 (nmax 8, qs at 2) and Q5_0 (nmax 16, qh at 2, qs at 6): ref or imatrix path."""
    rows, n = x.shape
    B = opaque(32)
    H = opaque(16)
    L = np.zeros(32, np.int32)
    w = np.zeros(32, np.float32)
    lv = np.zeros((32, _NQX), np.float32)
    sc = np.zeros((3, _NQX), np.float32)
    shift = F(F(nmax) + F(0.5))
    top = np.int32(2 * nmax - 1)
    qh_at = 2 if nmax == 16 else -1
    qs_at = 6 if nmax == 16 else 2
    for r in range(rows):
        xr = x[r]
        xi = xr.view(np.int32)
        o = out[r]
        sigma2 = _row_sigma2(xr) if qw.shape[0] else F(0.0)
        for ib in range(n // 32):
            s = ib * 32
            off = ib * bsize
            if qw.shape[0]:
                _weights(xr, s, qw, sigma2, w, B)
                put_fp16(o, off, _qx_search(xr, xi, s, w, nmax, L, lv, sc))
            else:
                amax, m, finite = _absmax(xr, xi, s, B)
                d = F(m / F(-F(nmax)))
                idd = F(F(1.0) / d) if d != 0 else F(0.0)
                put_fp16(o, off, d)
                if finite and abs(idd) <= FLT_MAX:  # |x*id| <= nmax: plain casts are exact
                    for j in range(B):
                        L[j] = min(top, np.int32(F(F(xr[s + j] * idd) + shift)))
                else:
                    for j in range(32):
                        L[j] = min(top, _i8(_cvt(F(F(xr[s + j] * idd) + shift)))) & 0xFF
            _pack(L, o, off + qs_at, off + qh_at if qh_at >= 0 else -1, H)


@jit
def quantize_q4_0(x, qw, out):
    _quantize_sym(x, qw, out, 8, 18)


@jit
def quantize_q5_0(x, qw, out):
    _quantize_sym(x, qw, out, 16, 22)


# --- Q4_1 / Q5_1 (scale + min) ------------------------------------------------------------------------------


@jit
def _asym_ref(x, out, nmax, bsize):
    """``quantize_row_q4_1_ref`` / ``q5_1_ref``: d = (max-min)/nmax, m = min, codes trunc((x-min)/d + 0.5).

    min/max come from an element-wise tree over four 8-wide columns (vectorizes; a running min does
    not). Its selects skip NaN like the C scan's ``v < min`` does; only the sign of a zero extreme and
    the all-inf/all-NaN cases depend on the scan order, and those replay the C scan.
    """
    rows, n = x.shape
    B = opaque(32)
    H = opaque(16)
    E = opaque(8)
    L = np.zeros(32, np.int32)
    t = np.zeros((2, 8), np.float32)
    fnmax = F(nmax)
    top = np.int32(nmax)
    qh_at = 4 if nmax == 31 else -1
    qs_at = 8 if nmax == 31 else 4
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
                p = a if a < b else b
                q = c if c < e else e
                t[0, k] = p if p < q else q
                p = a if a > b else b
                q = c if c > e else e
                t[1, k] = p if p > q else q
            mn = t[0, 0]
            mx = t[1, 0]
            for k in range(1, 8):
                mn = t[0, k] if t[0, k] < mn else mn
                mx = t[1, k] if t[1, k] > mx else mx
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
            fast = finite and abs(idd) <= FLT_MAX and rng <= FLT_MAX  # then 0 <= (x-mn)*id <= nmax
            if fast and nmax == 15:
                for j in range(H):
                    a = min(top, np.int32(F(F(F(xr[s + j] - mn) * idd) + F(0.5))))
                    b = min(top, np.int32(F(F(F(xr[s + 16 + j] - mn) * idd) + F(0.5))))
                    o[off + 4 + j] = np.uint8(a | np.int32(b << np.int32(4)))
                continue
            if fast:
                for j in range(B):
                    L[j] = min(top, np.int32(F(F(F(xr[s + j] - mn) * idd) + F(0.5))))
            elif nmax == 15:
                for j in range(32):
                    L[j] = min(15, _i8(_cvt(F(F(F(xr[s + j] - mn) * idd) + F(0.5))))) & 0xFF
            else:
                for j in range(32):
                    L[j] = _cvt(F(F(F(xr[s + j] - mn) * idd) + F(0.5))) & 0xFF
            _pack(L, o, off + qs_at, off + qh_at if qh_at >= 0 else -1, H)


@jit
def _asym_imat(x, qw, out, nmax, bsize):
    """``quantize_row_q4_1_impl`` / ``q5_1_impl``: row sigma2, w = qw*sqrt(sigma2 + x^2), make_qkx3."""
    rows, n = x.shape
    nb = n // 32
    total = rows * nb
    G = opaque(_G)
    H = opaque(16)
    qh_at = 4 if nmax == 31 else -1
    qs_at = 8 if nmax == 31 else 4
    sig = np.empty(rows, np.float32)
    for r in range(rows):
        sig[r] = _row_sigma2(x[r])
    X = np.zeros((32, _G), np.float32)
    W = np.zeros((32, _G), np.float32)
    LV = np.zeros((32, _G), np.float32)
    S = np.zeros((18, _G), np.float32)
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
        _qkx_lanes(X, W, nmax, LV, S, G)
        for l in range(min(_G, total - g0)):
            gb = g0 + l
            o = out[gb // nb]
            off = (gb % nb) * bsize
            if S[16, l] != 0:
                put_fp16(o, off, F(0.0))
                put_fp16(o, off + 2, S[17, l])
                for i in range(32):
                    L[i] = 0
            else:
                put_fp16(o, off, S[5, l])
                put_fp16(o, off + 2, S[0, l])
                for i in range(32):
                    L[i] = np.int32(LV[i, l])
            _pack(L, o, off + qs_at, off + qh_at if qh_at >= 0 else -1, H)


@jit
def _quantize_asym(x, qw, out, nmax, bsize):
    """Q4_1 (nmax 15, qs at 4) and Q5_1 (nmax 31, qh at 4, qs at 8)."""
    if qw.shape[0]:
        _asym_imat(x, qw, out, nmax, bsize)
    else:
        _asym_ref(x, out, nmax, bsize)


@jit
def quantize_q4_1(x, qw, out):
    _quantize_asym(x, qw, out, 15, 20)


@jit
def quantize_q5_1(x, qw, out):
    _quantize_asym(x, qw, out, 31, 24)


# --- Q8_0 / Q8_1 ------------------------------------------------------------------------------------------


@jit
def _quantize_q8(x, out, bsize, with_sum):
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
                mb = max(mb, xi[s + j] & _ABS)
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
                    t = _i8(_cvt(roundf_away(F(xr[s + j] * idd))))
                    o8[off + qo + j] = np.int8(t)
                    sm += t
            if with_sum:
                put_fp16(o, off + 2, F(F(sm) * d))


@jit
def quantize_q8_0(x, qw, out):
    _quantize_q8(x, out, 34, False)


@jit
def quantize_q8_1(x, qw, out):
    """``quantize_row_q8_1_ref``: Q8_0's codes plus s = fp16(f32(sum of codes) * unrounded d)."""
    _quantize_q8(x, out, 36, True)


# --- dequantizers (ggml's dequantize_row_*) -----------------------------------------------------------------


@jit
def _dequantize(data, out, bsize, bits, has_min):
    rows, n = out.shape
    H = opaque(16)
    offset = (1 << (bits - 1)) if not has_min else 0
    q_off = (2 if not has_min else 4) + (4 if bits == 5 else 0)
    for r in range(rows):
        src = data[r]
        y = out[r]
        for ib in range(n // 32):
            off = ib * bsize
            d = get_fp16(src, off)
            m = get_fp16(src, off + 2) if has_min else F(0.0)
            qh = np.int64(0)
            if bits == 5:
                hb = off + q_off - 4
                qh = np.int64(src[hb]) | (np.int64(src[hb + 1]) << 8) | (np.int64(src[hb + 2]) << 16)
                qh |= np.int64(src[hb + 3]) << 24
            s = ib * 32
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


@jit
def dequantize_q4_0(data, out):
    _dequantize(data, out, 18, 4, False)


@jit
def dequantize_q4_1(data, out):
    _dequantize(data, out, 20, 4, True)


@jit
def dequantize_q5_0(data, out):
    _dequantize(data, out, 22, 5, False)


@jit
def dequantize_q5_1(data, out):
    _dequantize(data, out, 24, 5, True)


@jit
def _dequantize_q8(data, out, bsize):
    rows, n = out.shape
    B = opaque(32)
    for r in range(rows):
        src = data[r]
        qs = src.view(np.int8)
        y = out[r]
        for ib in range(n // 32):
            off = ib * bsize
            d = get_fp16(src, off)
            for j in range(B):
                y[ib * 32 + j] = F(F(qs[off + bsize - 32 + j]) * d)


@jit
def dequantize_q8_0(data, out):
    _dequantize_q8(data, out, 34)


@jit
def dequantize_q8_1(data, out):
    """Not in ggml; the obvious decode y = q * d (``s`` is ignored)."""
    _dequantize_q8(data, out, 36)
