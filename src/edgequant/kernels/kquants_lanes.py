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

# Layout note: the per-lane regions sit at byte offsets 3072..4095, which no per-element region read
# in the same loops shares modulo 4096 (avoids 4K-aliasing stalls between lane stores and loads).
# per-element regions (256 each)
XT = 0  # x, transposed
WT = 256  # weights
WXT = 512  # weight * x
LT = 1024  # codes (result)
LA = 1280  # candidate codes
# per-lane regions (16 each)
AMX = 768  # max |x|
MXV = 784  # signed element with max |x|; for make_qkx: max
MNV = 800  # current min (make_qkx)
ISC = 816  # candidate inverse scale
SLX = 832
SL2 = 848
SCL = 864  # result scale
BEST = 880
BISC = 896  # inverse scale of the best candidate
SUMW = 912
SUMX = 928
SXL = 944
TSC = 960  # candidate scale
TMN = 976  # candidate min
CUR = 992
ACC = 1008  # 1.0 where the candidate was accepted
SW = 1536  # per-lane sum of weights (imatrix paths)
MINS = 1552  # the_min per lane (make_qkx result)
EXTRA = 1568
SCRATCH_SIZE = 1600


def new_scratch():
    return np.zeros(SCRATCH_SIZE, np.float32)


@jit
def load_lanes(S, xr, base, n, lanes):
    """Transpose ``xr[base : base+256]`` (lane j = elements ``n*j .. n*j+n-1``) into ``S[XT]``."""
    for j in range(lanes):
        for i in range(n):
            S[XT + i * lanes + j] = xr[base + n * j + i]


@jit
def load_lanes_w(S, w, base, n, lanes):
    """Transpose ``w[base : base+256]`` into ``S[WT]``."""
    for j in range(lanes):
        for i in range(n):
            S[WT + i * lanes + j] = w[base + n * j + i]


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
            if sl2 > 0 and F(slx * slx) > F(S[BEST + j] * sl2):
                sc = F(slx / sl2)
                S[SCL + j] = sc
                S[BEST + j] = F(sc * slx)
                S[BISC + j] = S[ISC + j]
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
