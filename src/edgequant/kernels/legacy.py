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

from edgequant.kernels.primitives import F, GROUP_MAX_EPS, get_fp16, jit, nearest_int, put_fp16, roundf_away

FLT_MAX = F(3.4028234663852886e38)
_NQX = 24  # make_qx_quants candidates: 1 + 18 grid steps, padded to a vector multiple
_NQKX = 40  # make_qkx3 candidates: 37 grid steps, padded


# --- shared block helpers -------------------------------------------------------------------------------


@jit
def _cvt(t):
    """C float->int32 as x86 does it: truncate toward zero; NaN or out of range -> INT_MIN."""
    if t >= F(-2147483648.0) and t < F(2147483648.0):
        return np.int64(np.int32(t))
    return np.int64(-2147483648)


@jit
def _i8(c):
    """Wrap an integer to int8 (C conversion to int8_t)."""
    return ((c + 128) & 0xFF) - 128


@jit
def _absmax(xr, xi, s):
    """(amax, m) of the 32-block at s with ggml's first-index, strictly-greater scan (§2.7)."""
    mb = 0
    for j in range(32):
        mb = max(mb, xi[s + j] & 0x7FFFFFFF)
    if mb == 0:
        return F(0.0), F(0.0)
    if mb > 0x7F800000:  # a NaN: replay the C scan literally
        amax = F(0.0)
        m = F(0.0)
        for j in range(32):
            ax = abs(xr[s + j])
            if ax > amax:
                amax = ax
                m = xr[s + j]
        return amax, m
    for j in range(32):
        if (xi[s + j] & 0x7FFFFFFF) == mb:
            return abs(xr[s + j]), xr[s + j]
    return F(0.0), F(0.0)


@jit
def _minmax(xr, xi, s):
    """(min, max, finite) of a 32-block as ggml's ``if (v < min) min = v; if (v > max) max = v`` scan."""
    kmin = np.int32(0x7FFFFFFF)
    kmax = np.int32(-0x80000000)
    mb = 0
    for j in range(32):
        b = xi[s + j]
        mb = max(mb, b & 0x7FFFFFFF)
        k = b ^ ((b >> 31) & 0x7FFFFFFF)  # monotone integer key of the float
        kmin = min(kmin, k)
        kmax = max(kmax, k)
    if mb >= 0x7F800000:  # inf or NaN: replay the C scan
        mn = FLT_MAX
        mx = F(-FLT_MAX)
        for j in range(32):
            v = xr[s + j]
            if v < mn:
                mn = v
            if v > mx:
                mx = v
        return mn, mx, False
    mn = xr[s]
    mx = xr[s]
    for j in range(32):  # the elements holding the extreme keys; +-0 ties keep the first zero
        b = xi[s + j]
        k = b ^ ((b >> 31) & 0x7FFFFFFF)
        if k == kmin or ((kmin == -1 or kmin == 0) and (b & 0x7FFFFFFF) == 0):
            mn = xr[s + j]
            break
    for j in range(32):
        b = xi[s + j]
        k = b ^ ((b >> 31) & 0x7FFFFFFF)
        if k == kmax or ((kmax == -1 or kmax == 0) and (b & 0x7FFFFFFF) == 0):
            mx = xr[s + j]
            break
    return mn, mx, True


@jit
def _row_sigma2(xr):
    s = F(0.0)
    for j in range(xr.shape[0]):
        s = F(s + F(xr[j] * xr[j]))
    return F(s / F(xr.shape[0]))


@jit
def _weights(xr, s, qw, sigma2, w):
    for j in range(32):
        x = xr[s + j]
        w[j] = F(qw[s + j] * np.sqrt(F(sigma2 + F(x * x))))


@jit
def _qx_search(xr, xi, s, w, nmax, L, lv, isc, slx, sl2):
    """``make_qx_quants(32, nmax, x, w)`` (§3.1): codes 0..2*nmax-1 into L, returns the scale."""
    amax, m = _absmax(xr, xi, s)
    if amax < GROUP_MAX_EPS:
        for i in range(32):
            L[i] = 0
        return F(0.0)
    fnmax = F(nmax)
    isc[0] = F(F(-fnmax) / m)
    for k in range(1, _NQX):
        step = k - 10 if k <= 9 else k - 9
        isc[k] = F(F(-F(fnmax + F(F(0.1) * F(step)))) / m)
        slx[k] = F(0.0)
        sl2[k] = F(0.0)
    slx[0] = F(0.0)
    sl2[0] = F(0.0)
    for i in range(32):
        x = xr[s + i]
        wi = w[i]
        wx = F(wi * x)
        for k in range(_NQX):
            fl = F(max(-nmax, min(nmax - 1, nearest_int(F(isc[k] * x)))))
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
def _qkx_search(xr, s, w, nmax, L, lv, sc):
    """``make_qkx3_quants(32, nmax, x, w, -0.9, 0.05, 36, false)`` (§3.3); returns (scale, the_min).

    Grid points are evaluated together for the current ``mn``; after an accepted point changes ``mn``
    the remaining points are re-evaluated with the new value, exactly as the sequential C loop sees them.
    """
    fnmax = F(nmax)
    mn = xr[s]
    mx = xr[s]
    sum_w = w[0]
    sum_x = F(sum_w * xr[s])
    for i in range(1, 32):
        x = xr[s + i]
        if x < mn:
            mn = x
        if x > mx:
            mx = x
        sum_w = F(sum_w + w[i])
        sum_x = F(sum_x + F(w[i] * x))
    if mn > 0:
        mn = F(0.0)
    if mx <= mn:
        for i in range(32):
            L[i] = 0
        return F(0.0), F(-mn)
    iscale = F(fnmax / F(mx - mn))
    scale = F(F(1.0) / iscale)
    best = F(0.0)
    for i in range(32):
        x = xr[s + i]
        l = max(0, min(nmax, nearest_int(F(iscale * F(x - mn)))))
        L[i] = l
        diff = F(F(F(scale * F(l)) + mn) - x)
        best = F(best + F(w[i] * F(diff * diff)))
    isc, sl, sl2, sxl, ts, tm, dd, cur = sc[0], sc[1], sc[2], sc[3], sc[4], sc[5], sc[6], sc[7]
    k0 = 0
    while k0 <= 36:
        rng = F(mx - mn)
        for c in range(_NQKX):
            isc[c] = F(F(F(F(-0.9) + F(F(0.05) * F(k0 + c))) + fnmax) / rng)
            sl[c] = F(0.0)
            sl2[c] = F(0.0)
            sxl[c] = F(0.0)
            cur[c] = F(0.0)
        for i in range(32):
            x = xr[s + i]
            xm = F(x - mn)
            wi = w[i]
            for c in range(_NQKX):
                fl = F(max(0, min(nmax, nearest_int(F(isc[c] * xm)))))
                lv[i, c] = fl
                wl = F(wi * fl)
                sl[c] = F(sl[c] + wl)
                sl2[c] = F(sl2[c] + F(wl * fl))
                sxl[c] = F(sxl[c] + F(wl * x))
        for c in range(_NQKX):
            D = F(F(sum_w * sl2[c]) - F(sl[c] * sl[c]))
            t_s = F(F(F(sum_w * sxl[c]) - F(sum_x * sl[c])) / D)
            t_m = F(F(F(sl2[c] * sum_x) - F(sl[c] * sxl[c])) / D)
            if t_m > 0:
                t_m = F(0.0)
                t_s = F(sxl[c] / sl2[c])
            dd[c] = D
            ts[c] = t_s
            tm[c] = t_m
        for i in range(32):
            x = xr[s + i]
            wi = w[i]
            for c in range(_NQKX):
                diff = F(F(F(ts[c] * lv[i, c]) + tm[c]) - x)
                cur[c] = F(cur[c] + F(wi * F(diff * diff)))
        nxt = 37
        for c in range(37 - k0):
            if dd[c] > 0 and cur[c] < best:
                best = cur[c]
                scale = ts[c]
                for i in range(32):
                    L[i] = np.int32(lv[i, c])
                changed = tm[c] != mn
                mn = tm[c]
                if changed:
                    nxt = k0 + c + 1
                    break
        k0 = nxt
    return scale, F(-mn)


@jit
def _pack_nibbles(q, o, off):
    for j in range(16):
        o[off + j] = np.uint8((q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4))


@jit
def _pack_qh(q, o, off):
    qh = 0
    for j in range(32):
        qh |= ((q[j] >> 4) & 1) << j
    for b in range(4):
        o[off + b] = np.uint8((qh >> (8 * b)) & 0xFF)


# --- Q4_0 / Q5_0 (symmetric) ------------------------------------------------------------------------------


@jit
def _quantize_sym(x, qw, out, nmax, bsize, qs_off):
    """Q4_0 (nmax 8) and Q5_0 (nmax 16): ref path or imatrix path; qs at ``qs_off``, qh at 2 for Q5_0."""
    rows, n = x.shape
    q = np.zeros(32, np.int64)
    L = np.zeros(32, np.int64)
    w = np.zeros(32, np.float32)
    lv = np.zeros((32, _NQX), np.float32)
    sc = np.zeros((3, _NQX), np.float32)
    fnmax = F(nmax)
    shift = F(F(nmax) + F(0.5))
    top = 2 * nmax - 1
    for r in range(rows):
        xr = x[r]
        xi = xr.view(np.int32)
        o = out[r]
        sigma2 = _row_sigma2(xr) if qw.shape[0] else F(0.0)
        for ib in range(n // 32):
            s = ib * 32
            off = ib * bsize
            if qw.shape[0]:
                _weights(xr, s, qw, sigma2, w)
                d = _qx_search(xr, xi, s, w, nmax, L, lv, sc[0], sc[1], sc[2])
                put_fp16(o, off, d)
                for j in range(32):
                    q[j] = L[j]
            else:
                amax, m = _absmax(xr, xi, s)
                d = F(m / F(-fnmax))
                idd = F(F(1.0) / d) if d != 0 else F(0.0)
                put_fp16(o, off, d)
                if abs(idd) <= FLT_MAX and amax <= FLT_MAX:  # |x*id| <= nmax: plain casts are exact
                    for j in range(32):
                        q[j] = min(top, np.int64(np.int32(F(F(xr[s + j] * idd) + shift))))
                else:
                    for j in range(32):
                        q[j] = min(top, _i8(_cvt(F(F(xr[s + j] * idd) + shift)))) & 0xFF
            if qs_off == 6:
                _pack_qh(q, o, off + 2)
            _pack_nibbles(q, o, off + qs_off)


@jit
def quantize_q4_0(x, qw, out):
    _quantize_sym(x, qw, out, 8, 18, 2)


@jit
def quantize_q5_0(x, qw, out):
    _quantize_sym(x, qw, out, 16, 22, 6)


# --- Q4_1 / Q5_1 (scale + min) ------------------------------------------------------------------------------


@jit
def _quantize_asym(x, qw, out, nmax, bsize, qs_off):
    """Q4_1 (nmax 15) and Q5_1 (nmax 31); qh at 4 for Q5_1."""
    rows, n = x.shape
    q = np.zeros(32, np.int64)
    w = np.zeros(32, np.float32)
    lv = np.zeros((32, _NQKX), np.float32)
    sc = np.zeros((8, _NQKX), np.float32)
    fnmax = F(nmax)
    for r in range(rows):
        xr = x[r]
        xi = xr.view(np.int32)
        o = out[r]
        sigma2 = _row_sigma2(xr) if qw.shape[0] else F(0.0)
        for ib in range(n // 32):
            s = ib * 32
            off = ib * bsize
            if qw.shape[0]:
                _weights(xr, s, qw, sigma2, w)
                d, the_min = _qkx_search(xr, s, w, nmax, q, lv, sc)
                put_fp16(o, off, d)
                put_fp16(o, off + 2, F(-the_min))
            else:
                mn, mx, finite = _minmax(xr, xi, s)
                rng = F(mx - mn)
                d = F(rng / fnmax)
                idd = F(F(1.0) / d) if d != 0 else F(0.0)
                put_fp16(o, off, d)
                put_fp16(o, off + 2, mn)
                if finite and abs(idd) <= FLT_MAX and rng <= FLT_MAX:  # 0 <= (x-mn)*id <= nmax
                    for j in range(32):
                        q[j] = min(nmax, np.int64(np.int32(F(F(F(xr[s + j] - mn) * idd) + F(0.5)))))
                elif nmax == 15:
                    for j in range(32):
                        q[j] = min(15, _i8(_cvt(F(F(F(xr[s + j] - mn) * idd) + F(0.5))))) & 0xFF
                else:
                    for j in range(32):
                        q[j] = _cvt(F(F(F(xr[s + j] - mn) * idd) + F(0.5))) & 0xFF
            if qs_off == 8:
                _pack_qh(q, o, off + 4)
            _pack_nibbles(q, o, off + qs_off)


@jit
def quantize_q4_1(x, qw, out):
    _quantize_asym(x, qw, out, 15, 20, 4)


@jit
def quantize_q5_1(x, qw, out):
    _quantize_asym(x, qw, out, 31, 24, 8)


# --- Q8_0 / Q8_1 ------------------------------------------------------------------------------------------


@jit
def _quantize_q8(x, out, bsize, with_sum):
    rows, n = x.shape
    q = np.zeros(32, np.int64)
    qo = bsize - 32
    for r in range(rows):
        xr = x[r]
        xi = xr.view(np.int32)
        o = out[r]
        for ib in range(n // 32):
            s = ib * 32
            off = ib * bsize
            mb = 0
            for j in range(32):
                mb = max(mb, xi[s + j] & 0x7FFFFFFF)
            if mb <= 0x7F800000:
                amax = abs(xr.view(np.float32)[s]) if False else np.abs(np.int32(mb)).view(np.float32) if False else F(0.0)
            amax = F(0.0)
            for j in range(32):  # MAX(amax, |v|): vectorizes to maxps, identical for every input
                v = abs(xr[s + j])
                amax = amax if amax > v else v
            d = F(amax / F(127.0))
            idd = F(F(1.0) / d) if d != 0 else F(0.0)
            put_fp16(o, off, d)
            if abs(idd) <= FLT_MAX and amax <= FLT_MAX:  # |x*id| <= 127: roundf without overflow
                for j in range(32):
                    v = F(xr[s + j] * idd)
                    a = abs(v)
                    t = np.int64(np.int32(a))
                    t += 1 if F(a - F(t)) >= F(0.5) else 0
                    q[j] = -t if v < 0 else t
            else:
                for j in range(32):
                    q[j] = _i8(_cvt(roundf_away(F(xr[s + j] * idd))))
            for j in range(32):
                o[off + qo + j] = np.uint8(q[j] & 0xFF)
            if with_sum:
                sm = 0
                for j in range(32):
                    sm += q[j]
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
def _dequantize(data, out, bsize, bits, has_min, q_off):
    rows, n = out.shape
    offset = 1 << (bits - 1) if not has_min else 0
    for r in range(rows):
        src = data[r]
        y = out[r]
        for ib in range(n // 32):
            off = ib * bsize
            d = get_fp16(src, off)
            m = get_fp16(src, off + 2) if has_min else F(0.0)
            qh = 0
            if bits == 5:
                hb = off + (4 if has_min else 2)
                qh = src[hb] | (src[hb + 1] << 8) | (src[hb + 2] << 16) | (np.int64(src[hb + 3]) << 24)
            for j in range(16):
                b = np.int64(src[off + q_off + j])
                c0 = (b & 0x0F) | (((qh >> j) & 1) << 4)
                c1 = (b >> 4) | (((qh >> (j + 16)) & 1) << 4)
                if has_min:
                    y[ib * 32 + j] = F(F(F(c0) * d) + m)
                    y[ib * 32 + j + 16] = F(F(F(c1) * d) + m)
                else:
                    y[ib * 32 + j] = F(F(c0 - offset) * d)
                    y[ib * 32 + j + 16] = F(F(c1 - offset) * d)


@jit
def dequantize_q4_0(data, out):
    _dequantize(data, out, 18, 4, False, 2)


@jit
def dequantize_q4_1(data, out):
    _dequantize(data, out, 20, 4, True, 4)


@jit
def dequantize_q5_0(data, out):
    _dequantize(data, out, 22, 5, False, 6)


@jit
def dequantize_q5_1(data, out):
    _dequantize(data, out, 24, 5, True, 8)


@jit
def _dequantize_q8(data, out, bsize):
    rows, n = out.shape
    for r in range(rows):
        src = data[r]
        qs = src.view(np.int8)
        y = out[r]
        for ib in range(n // 32):
            off = ib * bsize
            d = get_fp16(src, off)
            for j in range(32):
                y[ib * 32 + j] = F(F(qs[off + bsize - 32 + j]) * d)


@jit
def dequantize_q8_0(data, out):
    _dequantize_q8(data, out, 34)


@jit
def dequantize_q8_1(data, out):
    """Not in ggml; the obvious decode y = q * d (``s`` is ignored)."""
    _dequantize_q8(data, out, 36)
