"""Lane-parallel K-quant scale searches: the sub-blocks of one super-block searched side by side.

The sub-blocks of a K-quant super-block are independent searches (§3.1–3.3), so instead of running
``make_qx_quants`` / ``make_qkx`` once per sub-block, these kernels run them for all sub-blocks at once:
element ``i`` of every sub-block ("lane" ``j``) is processed in the innermost loop, where LLVM
vectorizes across lanes. Each lane still performs exactly the C operation sequence (same f32 ops,
same sequential sums in element order); data-dependent choices become per-lane selects. Results are
identical to the one-at-a-time helpers in ``primitives``.

Everything lives in one float32 scratch array ``S`` (allocated once per kernel call) at constant
offsets, so LLVM sees one base pointer and needs no runtime alias checks. Per-element regions hold
a super-block transposed: ``S[R + i*lanes + j]`` is element ``i`` of sub-block ``j`` (``n*lanes == 256``
for every K-quant: 16x16 for Q2_K/Q3_K/Q6_K, 32x8 for Q4_K/Q5_K). Codes are stored as exact small
floats. Per-lane regions have 16 slots.
"""

from __future__ import annotations

import numpy as np

from edgequant.kernels.primitives import GROUP_MAX_EPS, F, jit, nearest_int

# Layout (float32 indices). Per-element regions hold up to 512 entries (32 elements x 16 lanes for
# Q4_K/Q5_K, which search two super-blocks at once; 16 x 16 = 256 for the others). The hot per-lane
# regions start at byte offset 3072 modulo 4096, where the 256-entry layouts read no element data, so
# lane stores do not alias element loads modulo 4096 (4K-aliasing stalls).
XT = 0  # x, transposed
WT = 512  # weights
WXT = 1024  # weight * x
LT = 1536  # codes (result)
LA = 2048  # candidate codes
_LANE0 = 2816  # 11264 bytes = 2*4096 + 3072
AMX = _LANE0 + 0  # max |x|
MXV = _LANE0 + 16  # signed element with max |x|; for make_qkx: max
MNV = _LANE0 + 32  # current min (make_qkx)
ISC = _LANE0 + 48  # candidate inverse scale
SLX = _LANE0 + 64  # make_qkx: sum_l
SL2 = _LANE0 + 80
SCL = _LANE0 + 96  # result scale
BEST = _LANE0 + 112
BISC = _LANE0 + 128  # inverse scale of the best candidate
SUMW = _LANE0 + 144
SUMX = _LANE0 + 160
SXL = _LANE0 + 176
TSC = _LANE0 + 192  # candidate scale
TMN = _LANE0 + 208  # candidate min
CUR = _LANE0 + 224
ACC = _LANE0 + 240  # 1.0 where the candidate was accepted
SW = _LANE0 + 256  # per-lane sum of weights
MINS = _LANE0 + 272  # the_min per lane (make_qkx result)
DEAD = _LANE0 + 288  # make_qkx: 1.0 where max == min
DPOS = _LANE0 + 304  # make_qkx: 1.0 where D > 0
SIG = _LANE0 + 320  # per-lane sigma2 (imatrix weights)
BMN = _LANE0 + 336  # make_qkx: the min the best candidate's codes were computed with
RQD = _LANE0 + 352  # re-quantization: per-lane scale d*sc
RQM = _LANE0 + 368  # re-quantization: per-lane min dmin*m (0 for symmetric types)
SCRATCH_SIZE = _LANE0 + 384


def new_scratch():
    return np.zeros(SCRATCH_SIZE, np.float32)


@jit
def load_lanes(S, xr, base, n, lanes, j0, nsub):
    """Transpose ``nsub`` sub-blocks of ``n`` values from ``xr[base:]`` into lanes ``j0..`` of ``S[XT]``."""
    for j in range(nsub):
        for i in range(n):
            S[XT + i * lanes + j0 + j] = xr[base + n * j + i]


@jit
def load_lanes_w(S, w, base, n, lanes, j0, nsub):
    """Same as ``load_lanes`` into ``S[WT]`` (importance weights)."""
    for j in range(nsub):
        for i in range(n):
            S[WT + i * lanes + j0 + j] = w[base + n * j + i]


@jit
def _qx_sums(S, n, nmax, lanes):
    """Sequential sums of one candidate (``S[ISC]``) per lane: ``S[SLX]`` = sum (w*x)*l, ``S[SL2]`` = sum (w*l)*l."""
    for j in range(lanes):
        S[SLX + j] = F(0.0)
        S[SL2 + j] = F(0.0)
    for i in range(n):
        for j in range(lanes):
            k = i * lanes + j
            l = nearest_int(F(S[ISC + j] * S[XT + k]))
            fl = F(max(-nmax, min(nmax - 1, l)))
            S[SLX + j] = F(S[SLX + j] + F(S[WXT + k] * fl))
            S[SL2 + j] = F(S[SL2 + j] + F(F(S[WT + k] * fl) * fl))


@jit
def qx_lanes(S, n, nmax, lanes):
    """``make_qx_quants`` (§3.1, rmse_type 1) for every lane; weights in ``S[WT]``, ``S[WXT] = w*x``.

    Writes codes ``0..2*nmax-1`` to ``S[LT]`` and scales to ``S[SCL]``.
    """
    fnmax = F(nmax)
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
    for j in range(lanes):
        S[ISC + j] = F(F(-fnmax) / S[MXV + j])
    _qx_sums(S, n, nmax, lanes)
    for j in range(lanes):
        slx = S[SLX + j]
        sl2 = S[SL2 + j]
        sc = F(slx / sl2) if sl2 != 0 else F(0.0)
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
    for i in range(n):
        for j in range(lanes):
            k = i * lanes + j
            l = nearest_int(F(S[BISC + j] * S[XT + k]))
            S[LT + k] = F(max(-nmax, min(nmax - 1, l)) + nmax)
    for j in range(lanes):
        if S[AMX + j] < GROUP_MAX_EPS:
            S[SCL + j] = F(0.0)
            for i in range(n):
                S[LT + i * lanes + j] = F(0.0)


@jit
def q3_lanes(S):
    """``make_q3_quants`` (§3.2, n=16, nmax=4) for 16 lanes; needs ``S[WT] = x*x``, ``S[WXT] = w*x``.

    The max search and the first pass run across lanes; the coordinate-descent refinement, whose
    accept/reject decisions are sequential, runs lane by lane. Codes 0..7 to ``S[LT]``, scales to
    ``S[SCL]``.
    """
    for j in range(16):
        S[AMX + j] = F(0.0)
        S[MXV + j] = F(0.0)
        S[SLX + j] = F(0.0)
        S[SL2 + j] = F(0.0)
    for i in range(16):
        for j in range(16):
            xv = S[XT + i * 16 + j]
            ax = abs(xv)
            a0 = S[AMX + j]
            m0 = S[MXV + j]
            gt = ax > a0
            S[AMX + j] = ax if gt else a0
            S[MXV + j] = xv if gt else m0
    for j in range(16):
        S[ISC + j] = F(F(-4.0) / S[MXV + j])
    for i in range(16):
        for j in range(16):
            k = i * 16 + j
            l = nearest_int(F(S[ISC + j] * S[XT + k]))
            fl = F(max(-4, min(3, l)))
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
                acc = (slx > F(0.0)) & (fn != li) & (sl2n > F(0.0)) & (F(F(slxn * slxn) * suml2) > F(F(sumlx * sumlx) * sl2n))
                c = F(c + (F(1.0) if acc else F(0.0)))
            S[ACC + j] = c
    for j in range(16):
        if S[AMX + j] < GROUP_MAX_EPS:
            S[SCL + j] = F(0.0)
            for i in range(16):
                S[LT + i * 16 + j] = F(0.0)
            continue
        sumlx = S[SLX + j]
        suml2 = S[SL2 + j]
        for _ in range(5 if S[ACC + j] != F(0.0) else 0):
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
        S[SCL + j] = F(sumlx / suml2) if suml2 > 0 else F(0.0)
        for i in range(16):
            S[LT + i * 16 + j] = F(S[LT + i * 16 + j] + F(4.0))


@jit
def qkx_lanes(S, n, nmax, lanes, rmin, rdelta, nstep, use_mad):
    """``make_qkx2/3_quants`` (§3.3) for every lane; weights in ``S[WT]``.

    Writes codes 0..nmax to ``S[LT]``, scales to ``S[SCL]`` and ``the_min`` to ``S[MINS]``. A lane's
    fitted min replaces its running min for its later grid points, as in C. The codes of the best
    candidate are recomputed at the end from its (inverse scale, min) pair, which yields the same
    values the C code copies from ``Laux``.
    """
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
    for step in range(nstep + 1):
        num = F(F(rmin + F(rdelta * F(step))) + fnmax)
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
        for i in range(0, n, 2):  # two elements per iteration: LLVM's SLP vectorizer then packs the lanes
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
def lane_codes(S, L, off, j, n, lanes):
    """Codes of lane ``j`` into ``L[off : off+n]`` (natural order): the search codes ``S[LT]`` where the
    lane's re-quantization scale ``S[RQD + j]`` is 0 (the C code skips those sub-blocks), else ``S[LA]``."""
    src = LT if S[RQD + j] == F(0.0) else LA
    for i in range(n):
        L[off + i] = np.int32(S[src + i * lanes + j])


@jit
def requant_lanes(S, n, lanes, lo, hi):
    """``S[LA] = clamp(nearest_int((x + m) / d), lo, hi) - lo`` per lane (``d = S[RQD]``, ``m = S[RQM]``).

    The C re-quantization loops with the stored (fp16-rounded) scales; ``m = +0.0`` for Q3_K/Q6_K, where
    ``x + 0`` can only change the sign of a zero, which ``nearest_int`` maps to 0 either way.
    """
    for i in range(0, n, 2):
        for j in range(lanes):
            d = S[RQD + j]
            m = S[RQM + j]
            k = i * lanes + j
            S[LA + k] = F(max(lo, min(hi, nearest_int(F(F(S[XT + k] + m) / d)))) - lo)
            k2 = k + lanes
            S[LA + k2] = F(max(lo, min(hi, nearest_int(F(F(S[XT + k2] + m) / d)))) - lo)


@jit
def imatrix_weights(S, n, lanes):
    """``S[WT] = qw * sqrt(sigma2 + x*x)`` with the lane's ``S[SIG]`` (``S[WT]`` holds ``qw`` on entry)."""
    for i in range(n):
        for j in range(lanes):
            k = i * lanes + j
            xv = S[XT + k]
            S[WT + k] = F(S[WT + k] * np.sqrt(F(S[SIG + j] + F(xv * xv))))


@jit
def lane_weight_sums(S, n, lanes):
    """``S[SW + j]`` = sequential sum of lane j's weights."""
    for j in range(lanes):
        S[SW + j] = F(0.0)
    for i in range(n):
        for j in range(lanes):
            S[SW + j] = F(S[SW + j] + S[WT + i * lanes + j])


@jit
def block_sumsq(xr, base):
    """Sequential ``sum x*x`` over a 256-element super-block."""
    s = F(0.0)
    for i in range(256):
        xv = xr[base + i]
        s = F(s + F(xv * xv))
    return s
