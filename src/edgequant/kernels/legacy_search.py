"""Lane-parallel importance-weighted searches of the legacy types Q4_0/Q5_0 and Q4_1/Q5_1 (§3.1, §3.3, §5).

``qx_blocks`` is ``make_qx_quants(32, nmax, x, w)`` and ``qkx_blocks`` is ``make_qkx3_quants(32, nmax, x,
w, -0.9, 0.05, 36, false)``, each run for G 32-weight blocks at once: ``X[i, l]`` and ``W[i, l]`` are
element i of block (lane) l, and ``S`` is float32 scratch of 16 x G whose rows hold the per-lane state.
Each lane performs ggml's sequential float32 algorithm on its own block (same operations, sums in element
order, data-dependent choices as per-lane selects), so the bytes are ggml's while the loops vectorize
across blocks. The driver and the block layouts are in ``legacy``.
"""

from __future__ import annotations

import numpy as np

from edgequant.kernels.primitives import GROUP_MAX_EPS, F, jit
from edgequant.kernels.simd import inline
from edgequant.kernels.simd import nint32 as _nint


@inline
def clamp_code(v, lo, hi):
    """clamp(nearest_int(v), lo, hi) as float32."""
    return F(np.int32(max(lo, min(hi, _nint(v)))))


@jit
def qx_blocks(X, W, nmax, S, G):
    """``make_qx_quants(32, nmax, x, w)`` (§3.1) for G blocks (X[i, l] = element i of block l).

    Writes each lane's scale to S[0], its winning inverse scale to S[1] and max |x| to S[2].
    """
    fnmax = F(nmax)
    lo = np.int32(-nmax)
    hi = np.int32(nmax - 1)
    am, m, scale, best, wis, isc, slx, sl2 = S[2], S[3], S[0], S[4], S[1], S[5], S[6], S[7]
    for l in range(G):
        am[l] = F(0.0)
        m[l] = F(0.0)
    for i in range(32):
        for l in range(G):
            ax = abs(X[i, l])
            gt = ax > am[l]
            am[l] = ax if gt else am[l]
            m[l] = X[i, l] if gt else m[l]
    for step in range(19):  # the initial iscale, then is = -9..-1, 1..9
        t = F(F(0.1) * F(step - 10 if step <= 9 else step - 9))
        for l in range(G):
            isc[l] = F(F(-fnmax) / m[l]) if step == 0 else F(F(-F(fnmax + t)) / m[l])
            slx[l] = F(0.0)
            sl2[l] = F(0.0)
        for i in range(32):
            for l in range(G):
                x = X[i, l]
                fl = clamp_code(F(isc[l] * x), lo, hi)
                slx[l] = F(slx[l] + F(F(W[i, l] * x) * fl))
                sl2[l] = F(sl2[l] + F(F(W[i, l] * fl) * fl))
        for l in range(G):
            if step == 0:
                scale[l] = F(slx[l] / sl2[l]) if sl2[l] != 0 else F(0.0)
                best[l] = F(scale[l] * slx[l])
                wis[l] = isc[l]
            else:
                acc = sl2[l] > 0 and F(slx[l] * slx[l]) > F(best[l] * sl2[l])
                sc = F(slx[l] / sl2[l])
                scale[l] = sc if acc else scale[l]
                best[l] = F(sc * slx[l]) if acc else best[l]
                wis[l] = isc[l] if acc else wis[l]
    for l in range(G):
        scale[l] = F(0.0) if am[l] < GROUP_MAX_EPS else scale[l]


@jit
def qkx_blocks(X, W, nmax, S, G):
    """``make_qkx3_quants(32, nmax, x, w, -0.9, 0.05, 36, false)`` (§3.3) for G blocks.

    Each lane replays the sequential C loop, including an accepted grid point's fitted min replacing
    ``mn`` for the later points. Writes the scale to S[0], the winning inverse scale and the ``mn`` the
    codes were taken with to S[1], S[2], and the stored min (-the_min) to S[3]. A flat block (max <= min)
    needs no special case: its inverse scale is inf, no grid point is accepted (D = 0), and inf * 0 gives
    code 0 and scale 1/inf = 0, which is what the C early return stores.
    """
    fnmax = F(nmax)
    hi = np.int32(nmax)
    scale, wis, wmn, mn, mx, sw, sx, isc = S[0], S[1], S[2], S[3], S[4], S[5], S[6], S[7]
    best, sl, sl2, sxl, cur, ts, tm, dd = S[8], S[9], S[10], S[11], S[12], S[13], S[14], S[15]
    for l in range(G):
        mn[l] = X[0, l]
        mx[l] = X[0, l]
        sw[l] = W[0, l]
        sx[l] = F(W[0, l] * X[0, l])
    for i in range(1, 32):
        for l in range(G):
            x = X[i, l]
            mn[l] = x if x < mn[l] else mn[l]
            mx[l] = x if x > mx[l] else mx[l]
            sw[l] = F(sw[l] + W[i, l])
            sx[l] = F(sx[l] + F(W[i, l] * x))
    for l in range(G):
        m = F(0.0) if mn[l] > 0 else mn[l]
        mn[l] = m
        wmn[l] = m
        isc[l] = F(fnmax / F(mx[l] - m))
        wis[l] = isc[l]
        scale[l] = F(F(1.0) / isc[l])
        best[l] = F(0.0)
    for i in range(32):
        for l in range(G):
            x = X[i, l]
            diff = F(F(F(scale[l] * clamp_code(F(isc[l] * F(x - mn[l])), np.int32(0), hi)) + mn[l]) - x)
            best[l] = F(best[l] + F(W[i, l] * F(diff * diff)))
    for step in range(37):
        rs = F(F(F(-0.9) + F(F(0.05) * F(step))) + fnmax)
        for l in range(G):
            isc[l] = F(rs / F(mx[l] - mn[l]))
            sl[l] = F(0.0)
            sl2[l] = F(0.0)
            sxl[l] = F(0.0)
            cur[l] = F(0.0)
        for i in range(32):
            for l in range(G):
                x = X[i, l]
                fl = clamp_code(F(isc[l] * F(x - mn[l])), np.int32(0), hi)
                wl = F(W[i, l] * fl)
                sl[l] = F(sl[l] + wl)
                sl2[l] = F(sl2[l] + F(wl * fl))
                sxl[l] = F(sxl[l] + F(wl * x))
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
                x = X[i, l]
                fl = clamp_code(F(isc[l] * F(x - mn[l])), np.int32(0), hi)
                diff = F(F(F(ts[l] * fl) + tm[l]) - x)
                cur[l] = F(cur[l] + F(W[i, l] * F(diff * diff)))
        for l in range(G):
            acc = dd[l] > 0 and cur[l] < best[l]
            best[l] = cur[l] if acc else best[l]
            scale[l] = ts[l] if acc else scale[l]
            wis[l] = isc[l] if acc else wis[l]
            wmn[l] = mn[l] if acc else wmn[l]
            mn[l] = tm[l] if acc else mn[l]
