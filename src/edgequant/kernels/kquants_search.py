"""Lane-parallel versions of the K-quant scale searches (§3.1–3.3); layout in ``kquants_lanes``.

``qx_lanes`` is ``make_qx_quants`` (rmse_type 1), ``q3_lanes`` is ``make_q3_quants``, ``qkx_lanes`` is
``make_qkx2/3_quants``, each run for all lanes of the scratch array ``S`` at once. ``qp_quants_u8`` is
the (scalar) second-level search of the imatrix paths.
"""

from __future__ import annotations

import numpy as np

from edgequant.kernels.kquants_lanes import (
    ACC,
    AMX,
    BEST,
    BISC,
    BMN,
    CUR,
    DEAD,
    ISC,
    LA,
    LT,
    MINS,
    MNV,
    MXV,
    SCL,
    SL2,
    SLX,
    SUMW,
    SUMX,
    SXL,
    TMN,
    TSC,
    WT,
    WXT,
    XT,
    round_clamp,
)
from edgequant.kernels.primitives import GROUP_MAX_EPS, F, jit, nearest_int


@jit
def lane_absmax(S, n, lanes):
    """Per lane, the largest |x| into ``S[AMX]`` and the signed element that has it into ``S[MXV]`` (first
    index wins ties, §2.7)."""
    for j in range(lanes):
        S[AMX + j] = F(0.0)
        S[MXV + j] = F(0.0)
    for i in range(n):
        for j in range(lanes):
            xv = S[XT + i * lanes + j]
            ax = abs(xv)
            a0 = S[AMX + j]
            m0 = S[MXV + j]
            gt = ax > a0
            S[AMX + j] = ax if gt else a0
            S[MXV + j] = xv if gt else m0


@jit
def _qx_sums(S, n, nmax, lanes):
    """Sums of one candidate ``S[ISC]`` per lane: ``S[SLX]`` = sum (w*x)*l, ``S[SL2]`` = sum (w*l)*l."""
    for j in range(lanes):
        S[SLX + j] = F(0.0)
        S[SL2 + j] = F(0.0)
    lo = F(-nmax)
    hi = F(nmax - 1)
    for i in range(0, n, 2):
        for j in range(lanes):
            isc = S[ISC + j]
            k = i * lanes + j
            fl = round_clamp(F(isc * S[XT + k]), lo, hi)
            a = F(S[SLX + j] + F(S[WXT + k] * fl))
            b = F(S[SL2 + j] + F(F(S[WT + k] * fl) * fl))
            k2 = k + lanes
            fl = round_clamp(F(isc * S[XT + k2]), lo, hi)
            S[SLX + j] = F(a + F(S[WXT + k2] * fl))
            S[SL2 + j] = F(b + F(F(S[WT + k2] * fl) * fl))


@jit
def qx_lanes(S, n, nmax, lanes):
    """``make_qx_quants`` (§3.1, rmse_type 1) for every lane; weights in ``S[WT]``, ``S[WXT] = w*x``.

    Writes codes ``0..2*nmax-1`` to ``S[LT]`` and scales to ``S[SCL]``.
    """
    fnmax = F(nmax)
    lane_absmax(S, n, lanes)
    # The first candidate, iscale -nmax/max, is taken as is (scale 0 where sum w*l*l is 0); steps -9..9
    # then replace it where better. Two loops, not one with a first-pass flag: the flag in the lane loop
    # cost Q6_K 7-11 % (bench_codecs_ab).
    for j in range(lanes):
        S[ISC + j] = F(F(-fnmax) / S[MXV + j])
    _qx_sums(S, n, nmax, lanes)
    for j in range(lanes):
        slx = S[SLX + j]
        sl2 = S[SL2 + j]
        sc = F(slx / sl2) if sl2 != F(0.0) else F(0.0)
        S[SCL + j] = sc
        S[BEST + j] = F(sc * slx)
        S[BISC + j] = S[ISC + j]
    for step in range(-9, 10):
        if step == 0:
            continue
        t = F(fnmax + F(F(0.1) * F(step)))
        for j in range(lanes):
            S[ISC + j] = F(F(-t) / S[MXV + j])
        _qx_sums(S, n, nmax, lanes)
        for j in range(lanes):
            slx = S[SLX + j]
            sl2 = S[SL2 + j]
            best = S[BEST + j]
            sc = F(slx / sl2)
            acc = (sl2 > F(0.0)) & (F(slx * slx) > F(best * sl2))
            S[SCL + j] = sc if acc else S[SCL + j]
            S[BEST + j] = F(sc * slx) if acc else best
            S[BISC + j] = S[ISC + j] if acc else S[BISC + j]
    lo = F(-nmax)
    hi = F(nmax - 1)
    for i in range(n):
        for j in range(lanes):
            k = i * lanes + j
            S[LT + k] = F(round_clamp(F(S[BISC + j] * S[XT + k]), lo, hi) + F(nmax))
    for j in range(lanes):
        if S[AMX + j] < GROUP_MAX_EPS:
            S[SCL + j] = F(0.0)
            for i in range(n):
                S[LT + i * lanes + j] = F(0.0)


@jit
def _q3_refine(S):
    """``make_q3_quants``' coordinate descent (up to 5 passes), lane by lane, for the lanes whose probe
    (``S[ACC]``) found a change: accept/reject decisions are sequential within a lane."""
    for j in range(16):
        if S[ACC + j] == F(0.0) or S[AMX + j] < GROUP_MAX_EPS:
            continue
        sumlx = S[SLX + j]
        suml2 = S[SL2 + j]
        for _ in range(5):
            changed = 0
            for i in range(16):
                k = i * 16 + j
                li = S[LT + k]
                wx = S[WXT + k]
                slx = F(sumlx - F(wx * li))
                if slx > 0:
                    w = S[WT + k]
                    sl2 = F(suml2 - F(F(w * li) * li))
                    fn = F(max(-4, min(3, nearest_int(F(F(S[XT + k] * sl2) / slx)))))
                    if fn != li:
                        slx = F(slx + F(wx * fn))
                        sl2 = F(sl2 + F(F(w * fn) * fn))
                        if sl2 > 0 and F(F(slx * slx) * suml2) > F(F(sumlx * sumlx) * sl2):
                            S[LT + k] = fn
                            sumlx = slx
                            suml2 = sl2
                            changed += 1
            if changed == 0:
                break
        S[SLX + j] = sumlx
        S[SL2 + j] = suml2


@jit
def q3_lanes(S):
    """``make_q3_quants`` (§3.2, n=16, nmax=4) for 16 lanes; needs ``S[WT] = x*x``, ``S[WXT] = w*x``.

    The max search and the first pass run across lanes; the coordinate-descent refinement, whose
    accept/reject decisions are sequential, runs lane by lane. Codes 0..7 to ``S[LT]``, scales to
    ``S[SCL]``.
    """
    lane_absmax(S, 16, 16)
    for j in range(16):
        S[SLX + j] = F(0.0)
        S[SL2 + j] = F(0.0)
        S[ISC + j] = F(F(-4.0) / S[MXV + j])
    for i in range(16):
        for j in range(16):
            k = i * 16 + j
            fl = round_clamp(F(S[ISC + j] * S[XT + k]), F(-4.0), F(3.0))
            S[LT + k] = fl
            S[SLX + j] = F(S[SLX + j] + F(S[WXT + k] * fl))
            S[SL2 + j] = F(S[SL2 + j] + F(F(S[WT + k] * fl) * fl))
    # Probe: would the first refinement pass change anything? Until the first accepted change a pass
    # leaves the sums alone, so every element can be tested against the initial sums at once. Most
    # lanes (about 80% on Gaussian data) accept nothing, which ends their refinement exactly as in C.
    for j in range(16):
        S[ACC + j] = F(0.0)
    for i in range(0, 16, 2):
        for j in range(16):
            sumlx = S[SLX + j]
            suml2 = S[SL2 + j]
            c = S[ACC + j]
            for k in (i * 16 + j, i * 16 + 16 + j):
                li = S[LT + k]
                wx = S[WXT + k]
                w = S[WT + k]
                slx = F(sumlx - F(wx * li))
                sl2 = F(suml2 - F(F(w * li) * li))
                fn = F(max(-4, min(3, nearest_int(F(F(S[XT + k] * sl2) / slx)))))
                slxn = F(slx + F(wx * fn))
                sl2n = F(sl2 + F(F(w * fn) * fn))
                better = F(F(slxn * slxn) * suml2) > F(F(sumlx * sumlx) * sl2n)
                acc = (slx > F(0.0)) & (fn != li) & (sl2n > F(0.0)) & better
                c = F(c + (F(1.0) if acc else F(0.0)))
            S[ACC + j] = c
    _q3_refine(S)
    for j in range(16):
        sl2 = S[SL2 + j]
        q = F(S[SLX + j] / sl2)
        S[SCL + j] = q if sl2 > F(0.0) else F(0.0)
        if S[AMX + j] < GROUP_MAX_EPS:  # all-zero sub-block: codes 0, scale 0
            S[SCL + j] = F(0.0)
            for i in range(16):
                S[LT + i * 16 + j] = F(-4.0)
    for k in range(256):
        S[LT + k] = F(S[LT + k] + F(4.0))


@jit
def _qkx_start(S, n, nmax, lanes, use_mad):
    """Per lane: min (at most 0) and max, weight sums, the first candidate ``nmax / (max - min)`` and its
    error in ``S[BEST]``; ``S[DEAD]`` marks lanes with max == min."""
    fnmax = F(nmax)
    for j in range(lanes):
        x0 = S[XT + j]
        w0 = S[WT + j]
        S[MNV + j] = x0
        S[MXV + j] = x0
        S[SUMW + j] = w0
        S[SUMX + j] = F(w0 * x0)
    for i in range(1, n):
        for j in range(lanes):
            k = i * lanes + j
            xv = S[XT + k]
            wv = S[WT + k]
            mn = S[MNV + j]
            mx = S[MXV + j]
            S[MNV + j] = xv if xv < mn else mn
            S[MXV + j] = xv if xv > mx else mx
            S[SUMW + j] = F(S[SUMW + j] + wv)
            S[SUMX + j] = F(S[SUMX + j] + F(wv * xv))
    for j in range(lanes):
        mn = S[MNV + j]
        mn = F(0.0) if mn > 0 else mn
        S[MNV + j] = mn
        S[BMN + j] = mn
        S[MINS + j] = F(-mn)
        S[DEAD + j] = F(1.0) if S[MXV + j] == mn else F(0.0)
        isc = F(fnmax / F(S[MXV + j] - mn))
        S[ISC + j] = isc
        S[BISC + j] = isc
        S[SCL + j] = F(F(1.0) / isc)
        S[BEST + j] = F(0.0)
    for i in range(0, n, 2):
        for j in range(lanes):
            sc = S[SCL + j]
            mn = S[MNV + j]
            isc = S[ISC + j]
            k = i * lanes + j
            xv = S[XT + k]
            fl = F(max(0, min(nmax, nearest_int(F(isc * F(xv - mn))))))
            diff = F(F(F(sc * fl) + mn) - xv)
            err = abs(diff) if use_mad else F(diff * diff)
            b = F(S[BEST + j] + F(S[WT + k] * err))
            k2 = k + lanes
            xv = S[XT + k2]
            fl = F(max(0, min(nmax, nearest_int(F(isc * F(xv - mn))))))
            diff = F(F(F(sc * fl) + mn) - xv)
            err = abs(diff) if use_mad else F(diff * diff)
            S[BEST + j] = F(b + F(S[WT + k2] * err))


@jit
def _qkx_step(S, n, nmax, lanes, num, use_mad):
    """One grid point, inverse scale ``num / (max - mn)``: codes, the weighted least-squares (scale, min),
    its error, and per lane the C acceptance ``cur < best`` (the fitted min then replaces ``mn``)."""
    for j in range(lanes):
        S[ISC + j] = F(num / F(S[MXV + j] - S[MNV + j]))
        S[SLX + j] = F(0.0)
        S[SL2 + j] = F(0.0)
        S[SXL + j] = F(0.0)
    for i in range(n):
        for j in range(lanes):
            k = i * lanes + j
            xv = S[XT + k]
            wv = S[WT + k]
            fl = F(max(0, min(nmax, nearest_int(F(S[ISC + j] * F(xv - S[MNV + j]))))))
            S[LA + k] = fl
            wl = F(wv * fl)
            S[SLX + j] = F(S[SLX + j] + wl)
            S[SL2 + j] = F(S[SL2 + j] + F(wl * fl))
            S[SXL + j] = F(S[SXL + j] + F(wl * xv))
    for j in range(lanes):
        sw = S[SUMW + j]
        sx = S[SUMX + j]
        sl = S[SLX + j]
        sl2 = S[SL2 + j]
        sxl = S[SXL + j]
        dd = F(F(sw * sl2) - F(sl * sl))
        ts = F(F(F(sw * sxl) - F(sx * sl)) / dd)
        tm = F(F(F(sl2 * sx) - F(sl * sxl)) / dd)
        ts0 = F(sxl / sl2)
        pos = tm > F(0.0)
        S[TSC + j] = ts0 if pos else ts
        S[TMN + j] = F(0.0) if pos else tm
        # a lane whose D <= 0 gets an error that can never win
        S[CUR + j] = F(0.0) if dd > F(0.0) else F(np.inf)
    for i in range(0, n, 2):
        for j in range(lanes):
            k = i * lanes + j
            ts = S[TSC + j]
            tm = S[TMN + j]
            diff = F(F(F(ts * S[LA + k]) + tm) - S[XT + k])
            err = abs(diff) if use_mad else F(diff * diff)
            c = F(S[CUR + j] + F(S[WT + k] * err))
            k2 = k + lanes
            diff = F(F(F(ts * S[LA + k2]) + tm) - S[XT + k2])
            err = abs(diff) if use_mad else F(diff * diff)
            S[CUR + j] = F(c + F(S[WT + k2] * err))
    for j in range(lanes):
        if S[CUR + j] < S[BEST + j]:
            S[BEST + j] = S[CUR + j]
            S[SCL + j] = S[TSC + j]
            S[BISC + j] = S[ISC + j]
            S[BMN + j] = S[MNV + j]
            S[MNV + j] = S[TMN + j]


@jit
def _qkx_finish(S, n, nmax, lanes):
    """The best candidate's codes into ``S[LT]``; dead lanes get scale 0 and codes 0, the others their min."""
    for i in range(0, n, 2):
        for j in range(lanes):
            isc = S[BISC + j]
            mn = S[BMN + j]
            k = i * lanes + j
            S[LT + k] = F(max(0, min(nmax, nearest_int(F(isc * F(S[XT + k] - mn))))))
            k2 = k + lanes
            S[LT + k2] = F(max(0, min(nmax, nearest_int(F(isc * F(S[XT + k2] - mn))))))
    for j in range(lanes):
        if S[DEAD + j] != F(0.0):
            S[SCL + j] = F(0.0)
            for i in range(n):
                S[LT + i * lanes + j] = F(0.0)
        else:
            S[MINS + j] = F(-S[MNV + j])


@jit
def qkx_lanes(S, n, nmax, lanes, rmin, rdelta, nstep, use_mad):
    """``make_qkx2/3_quants`` (§3.3) for every lane; weights in ``S[WT]``.

    Writes codes 0..nmax to ``S[LT]``, scales to ``S[SCL]`` and ``the_min`` to ``S[MINS]``. A lane's
    fitted min replaces its running min for its later grid points, as in C. The codes of the best
    candidate are recomputed at the end from its (inverse scale, min) pair, which yields the same
    values the C code copies from ``Laux``. The three phases are separate functions: against the former
    single 123-line body, Q4_K/Q5_K quantize times stayed within noise (0.97-1.06x, 64x4096, best of 7).
    """
    _qkx_start(S, n, nmax, lanes, use_mad)
    fnmax = F(nmax)
    for step in range(nstep + 1):
        _qkx_step(S, n, nmax, lanes, F(F(rmin + F(rdelta * F(step))) + fnmax), use_mad)
    _qkx_finish(S, n, nmax, lanes)


@jit
def qp_quants_u8(n, nmax, x, xo, qw, qo, L):
    """``make_qp_quants`` (§3.4) of ``x[xo:xo+n]``, weights ``qw[qo:qo+n]``, C's ``uint8_t L[]`` semantics.

    The C code stores codes into a uint8 array, so a negative candidate (reachable only when a
    sub-block scale comes out negative) wraps to 256+l and later reads see the wrapped value. This
    mirrors that (a signed-int version differs from ggml on 5-22% of rows when the imatrix has negative
    entries).
    """
    fnmax = F(nmax)
    mx = F(0.0)
    for i in range(n):
        xi = x[xo + i]
        mx = mx if mx > xi else xi  # C's MAX(a, b) = a > b ? a : b
    if mx < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return F(0.0)
    iscale = F(fnmax / mx)
    for i in range(n):
        L[i] = nearest_int(F(iscale * x[xo + i])) & 0xFF
    scale = F(F(1.0) / iscale)
    best = F(0.0)
    for i in range(n):
        diff = F(x[xo + i] - F(scale * F(L[i])))
        best = F(best + F(F(qw[qo + i] * diff) * diff))
    for step in range(-4, 5):
        if step == 0:
            continue
        iscale_is = F(F(F(F(0.1) * F(step)) + fnmax) / mx)
        scale_is = F(F(1.0) / iscale_is)
        mse = F(0.0)
        for i in range(n):
            l = min(nmax, nearest_int(F(iscale_is * x[xo + i])))
            diff = F(x[xo + i] - F(scale_is * F(l)))
            mse = F(mse + F(F(qw[qo + i] * diff) * diff))
        if mse < best:
            best = mse
            iscale = iscale_is
    sumlx = F(0.0)
    suml2 = F(0.0)
    for i in range(n):
        l = min(nmax, nearest_int(F(iscale * x[xo + i])))
        L[i] = l & 0xFF
        fl = F(l)
        sumlx = F(sumlx + F(F(qw[qo + i] * x[xo + i]) * fl))
        suml2 = F(suml2 + F(F(qw[qo + i] * fl) * fl))
    for _ in range(5):
        n_changed = 0
        for i in range(n):
            w = qw[qo + i]
            fli = F(L[i])
            slx = F(sumlx - F(F(w * x[xo + i]) * fli))
            sl2 = F(suml2 - F(F(w * fli) * fli))
            if slx > 0 and sl2 > 0:
                new_l = min(nmax, nearest_int(F(F(x[xo + i] * sl2) / slx)))
                if new_l != L[i]:
                    fn = F(new_l)
                    slx = F(slx + F(F(w * x[xo + i]) * fn))
                    sl2 = F(sl2 + F(F(w * fn) * fn))
                    if F(F(slx * slx) * suml2) > F(F(sumlx * sumlx) * sl2):
                        L[i] = new_l & 0xFF
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    return F(sumlx / suml2) if suml2 > 0 else F(0.0)
