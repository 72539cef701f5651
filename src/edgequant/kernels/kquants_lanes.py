"""Lane layout for the K-quant kernels: all sub-blocks of a super-block processed side by side.

The sub-blocks of a K-quant super-block are independent searches (§3.1–3.3), so instead of running
``make_qx_quants`` / ``make_q3_quants`` / ``make_qkx`` once per sub-block, these kernels run them for 16
sub-blocks at once: element ``i`` of every sub-block ("lane" ``j``) is handled in the innermost loop,
which LLVM vectorizes across lanes. Each lane still performs exactly the C operation sequence (same
float32 operations, sums sequential in element order); data-dependent choices become per-lane
selects, and the refinement of ``make_q3_quants`` (sequential accept/reject) runs lane by lane. The
results are the ones of the one-at-a-time helpers in ``primitives`` (and of ggml), bit for bit. The
searches are in ``kquants_search``; this module holds the scratch layout, the per-block plumbing
(loading lanes, weights, re-quantization) and the bit packing of codes that several types share.

Everything lives in one float32 scratch array ``S`` (allocated once per kernel call) at constant
offsets, so LLVM sees one base pointer and needs no runtime alias checks. Per-element regions hold a
super-block transposed, ``S[R + i*lanes + j]`` = element ``i`` of lane ``j``: 16 lanes x 16 elements for
Q2_K/Q3_K/Q6_K, 16 lanes x 32 elements (two super-blocks) for Q4_K/Q5_K. Codes are stored as exact
small floats. Inner loops handle two elements per iteration where that makes LLVM's SLP vectorizer
pack the lanes (it declines the one-element form on this target).
"""

from __future__ import annotations

import numpy as np

from edgequant.kernels.primitives import F, jit, nearest_int

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
SIG = _LANE0 + 320  # per-lane sigma2 (imatrix weights)
BMN = _LANE0 + 336  # make_qkx: the min the best candidate's codes were computed with
RQD = _LANE0 + 352  # re-quantization: per-lane scale d*sc
RQM = _LANE0 + 368  # re-quantization: per-lane min dmin*m (0 for symmetric types)
SCRATCH_SIZE = _LANE0 + 384


_MAGIC = F(12582912.0)  # 1.5 * 2^23


@jit
def round_clamp(v, lo, hi):
    """``f32(clamp(nearest_int(v), lo, hi))`` for ``|v| <= 2^22`` (and finite), in float arithmetic.

    Adding 1.5*2^23 rounds to an integer with ties to even, subtracting it back is exact, so this
    equals the bit trick of ``nearest_int`` wherever that trick does not wrap. Only used where ``v`` is
    provably small: ``iscale * x`` with ``|iscale| <= (nmax+1)/max|x|`` over the same group.
    """
    r = F(F(v + _MAGIC) - _MAGIC)
    r = lo if r < lo else r
    return hi if r > hi else r


@jit
def load_lanes(S, xr, base, n, lanes, j0, nsub):
    """Transpose ``nsub`` sub-blocks of ``n`` values at ``xr[base:]`` into lanes ``j0..`` of ``S[XT]``."""
    for j in range(nsub):
        for i in range(n):
            S[XT + i * lanes + j0 + j] = xr[base + n * j + i]


@jit
def load_weights(S, qw, base, n, lanes, j0, nsub, sigma2):
    """The importance vector ``qw[base:]`` into ``S[WT]`` as ``load_lanes`` lays out x, and ``sigma2`` into
    ``S[SIG]`` for those lanes (read by ``imatrix_weights``; Q6_K, which uses ``qw`` as is, passes 0)."""
    for j in range(nsub):
        S[SIG + j0 + j] = sigma2
        for i in range(n):
            S[WT + i * lanes + j0 + j] = qw[base + n * j + i]


@jit
def weights_x(S, count, squares):
    """``S[WXT] = w*x`` for the first ``count`` entries; with ``squares`` first ``S[WT] = x*x``."""
    if squares:
        for k in range(count):
            S[WT + k] = F(S[XT + k] * S[XT + k])
    for k in range(count):
        S[WXT + k] = F(S[WT + k] * S[XT + k])


@jit
def lane_codes(S, L, off, j, n, lanes):
    """Codes of lane ``j`` into ``L[off : off+n]`` in natural order.

    The re-quantized codes ``S[LA]``, or the search codes ``S[LT]`` where the lane's re-quantization
    scale ``S[RQD + j]`` is 0 (the C code skips those sub-blocks and keeps the search codes).
    """
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
    """``S[WT] = qw * sqrt(sigma2 + x*x)`` with the lane's ``S[SIG]`` (``S[WT]`` holds ``qw`` on entry), then
    ``S[SW + j]`` = the sequential sum of lane j's weights."""
    for i in range(n):
        for j in range(lanes):
            k = i * lanes + j
            xv = S[XT + k]
            S[WT + k] = F(S[WT + k] * np.sqrt(F(S[SIG + j] + F(xv * xv))))
    for j in range(lanes):
        S[SW + j] = F(0.0)
    for i in range(n):
        for j in range(lanes):
            S[SW + j] = F(S[SW + j] + S[WT + i * lanes + j])


@jit
def lane_max(S, R, n):
    """``max(0, S[R], ..., S[R+n-1])`` with C's ``if (v > max) max = v`` scan (the ``_ref`` second levels)."""
    mx = F(0.0)
    for j in range(n):
        if S[R + j] > mx:
            mx = S[R + j]
    return mx


@jit
def block_sumsq(xr, base):
    """Sequential ``sum x*x`` over a 256-element super-block."""
    s = F(0.0)
    for i in range(256):
        xv = xr[base + i]
        s = F(s + F(xv * xv))
    return s


# --- code packing (byte layouts in ``kquants`` / ``kquants_low``) ---------------------------------------


@jit
def pack_2bit_planes(L, shift, out, off):
    """§3.7: bits ``shift, shift+1`` of 256 codes into 64 bytes at ``out[off:]``: byte ``32h + l``, bits
    ``2k``, holds element ``128h + 32k + l`` (Q2_K/Q3_K low bits with shift 0, Q6_K's top bits with 4)."""
    for h in range(2):
        b = 128 * h
        for l in range(32):
            v = ((L[b + l] >> shift) & 3) | (((L[b + l + 32] >> shift) & 3) << 2)
            v |= (((L[b + l + 64] >> shift) & 3) << 4) | (((L[b + l + 96] >> shift) & 3) << 6)
            out[off + 32 * h + l] = np.uint8(v)


@jit
def pack_bit_plane(L, bit, out, off):
    """Bit ``bit`` of 256 codes into 32 bytes at ``out[off:]``: bit k of byte l is that of element 32k + l
    (Q3_K's hmask with bit 2, Q5_K's qh with bit 4)."""
    for l in range(32):
        h = 0
        for k in range(8):
            h |= ((L[32 * k + l] >> bit) & 1) << k
        out[off + l] = np.uint8(h)
