"""Non-linear 4-bit codecs IQ4_NL and IQ4_XS, byte-exact with ggml (spec §4.13-4.14).

Both map a 4-bit index to the table ``kvalues_iq4nl`` (V) times a scale. Layouts (little-endian):

* IQ4_NL (32 weights, 18 B): ``d`` fp16 | ``qs[16]`` (byte j: index of element j low, j+16 high);
  y = d * V[idx].
* IQ4_XS (256 weights, 136 B): ``d`` fp16 | ``scales_h`` u16 (2 bits per sub-block) | ``scales_l[4]``
  (4 bits per sub-block, even sub-block low nibble) | ``qs[128]`` (sub-block ib at 16*ib, nibbles as
  IQ4_NL); y = (d * (ls - 32)) * V[idx] with ls the 6-bit sub-block scale.

Quantization is ggml's ``quantize_row_iq4_nl_impl`` with ntry = 7 (``quantize_iq4_nl`` and
``quantize_iq4_xs``, the functions llama-quantize runs); w = x*x without an importance vector. The
first pass and the 15 trial inverse scales of a 32-block are 16 independent candidates, evaluated
together (each keeps its own sequential float32 sums), then chosen in ggml's order.

``best_index`` (nearest table entry, exact ties to the upper entry, NaN -> 15) is computed as the
number of midpoints (V[k] + V[k+1]) / 2 that are not above v. This equals ggml's comparison of the
two float32 differences for every float32 v (checked exhaustively over all 2^32 bit patterns: near a
midpoint both differences are exact, elsewhere rounding cannot reorder them).
"""

from __future__ import annotations

import numpy as np

from edgequant.kernels.primitives import GROUP_MAX_EPS, F, get_fp16, jit, nearest_int, put_fp16
from edgequant.kernels.simd import block_absmax as _absmax
from edgequant.kernels.simd import inline, opaque

KVALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float32)
_MID = ((KVALUES[:-1].astype(np.float64) + KVALUES[1:]) / 2).astype(np.float32)  # exact half-integers
_STEP = (KVALUES[1:] - KVALUES[:-1]).astype(np.float32)


@inline
def _index(v):
    """ggml's ``best_index_int8(16, kvalues_iq4nl, v)``."""
    c = 0
    for k in range(15):
        c += 0 if v < _MID[k] else 1
    return c


@inline
def _value(v):
    """``kvalues_iq4nl[best_index(v)]`` as float32, without a table lookup (sums of exact integers)."""
    q = F(-127.0)
    for k in range(15):
        q = F(q + (F(0.0) if v < _MID[k] else _STEP[k]))
    return q


@jit
def _block_scale(xr, xi, s, w, ids, sqx, sq2):
    """Steps 2b-2f of §4.13 for the 32-block at ``s`` with weights ``w``: returns its scale."""
    NC = opaque(16)
    amax, m, _ = _absmax(xr, xi, s, opaque(32))
    if amax < GROUP_MAX_EPS:
        return F(0.0)
    d = F(F(-m) / F(-127.0))
    ids[0] = F(F(1.0) / d)
    for c in range(1, 16):
        ids[c] = F(F(c - 8 - 127) / m)  # id = (itry + V[0]) / max, itry = -7..7
    for c in range(NC):
        sqx[c] = F(0.0)
        sq2[c] = F(0.0)
    for i in range(32):
        x = xr[s + i]
        wi = w[i]
        for c in range(NC):
            q = _value(F(ids[c] * x))
            wq = F(wi * q)
            sqx[c] = F(sqx[c] + F(wq * x))
            sq2[c] = F(sq2[c] + F(wq * q))
    d = F(sqx[0] / sq2[0]) if sq2[0] > 0 else F(0.0)
    best = F(d * sqx[0])
    for c in range(1, 16):
        if sq2[c] > 0 and F(sqx[c] * sqx[c]) > F(best * sq2[c]):
            d = F(sqx[c] / sq2[c])
            best = F(d * sqx[c])
    return d


@inline
def _weights(xr, s, qw, sigma2, w, use_qw):
    B = opaque(32)
    if use_qw:
        for j in range(B):
            x = xr[s + j]
            w[j] = F(qw[s + j] * np.sqrt(F(sigma2 + F(x * x))))
    else:
        for j in range(B):
            w[j] = F(xr[s + j] * xr[s + j])


@inline
def _sigma2(xr, s, sb):
    acc = F(0.0)
    for j in range(sb):
        acc = F(acc + F(xr[s + j] * xr[s + j]))
    return F(acc * F(F(2.0) / F(sb)))


@inline
def _put_indices(xr, s, idl, o, at):
    """Nibbles of best_index(idl * x) for the 32 elements at ``s`` into ``o[at:at+16]``."""
    H = opaque(16)
    for j in range(H):
        a = _index(F(idl * xr[s + j]))
        b = _index(F(idl * xr[s + 16 + j]))
        o[at + j] = np.uint8(a | (b << 4))


@inline
def _put_xs(xr, base, scales, o, off):
    """IQ4_XS's second level: d, the 6-bit sub-block scales and the indices of the super-block at ``base``."""
    max_scale = F(0.0)
    amax_scale = F(0.0)
    for ib in range(8):
        if abs(scales[ib]) > amax_scale:
            amax_scale = abs(scales[ib])
            max_scale = scales[ib]
    d = F(F(-max_scale) / F(32.0))
    put_fp16(o, off, d)
    idd = F(F(1.0) / d) if d != 0 else F(0.0)
    scales_h = 0
    for ib in range(8):
        l = max(-32, min(31, nearest_int(F(idd * scales[ib]))))
        dl = F(d * F(l))  # the unrounded float32 d
        idl = F(F(1.0) / dl) if dl != 0 else F(0.0)
        _put_indices(xr, base + ib * 32, idl, o, off + 8 + 16 * ib)
        l += 32
        if ib % 2 == 0:
            o[off + 4 + ib // 2] = np.uint8(l & 0xF)
        else:
            o[off + 4 + ib // 2] |= np.uint8((l & 0xF) << 4)
        scales_h |= (l >> 4) << (2 * ib)
    o[off + 2] = np.uint8(scales_h & 0xFF)
    o[off + 3] = np.uint8((scales_h >> 8) & 0xFF)


def _codec(xs):
    """The (quantize, dequantize) row kernels of IQ4_XS (``xs``) or IQ4_NL; ``xs`` is constant to numba.

    IQ4_NL is handled as a "super-block" of one 32-block whose scale is stored as is.
    """
    bn = 256 if xs else 32  # weights per block
    bsize = 136 if xs else 18  # bytes per block

    @jit
    def quantize(x, qw, out):
        rows, n = x.shape
        use_qw = qw.shape[0] > 0
        w = np.zeros(32, np.float32)
        sc = np.zeros((3, 16), np.float32)
        scales = np.zeros(8, np.float32)
        for r in range(rows):
            xr = x[r]
            xi = xr.view(np.int32)
            o = out[r]
            for ibl in range(n // bn):
                base = ibl * bn
                off = ibl * bsize
                sigma2 = _sigma2(xr, base, bn) if use_qw else F(0.0)
                for ib in range(bn // 32):
                    s = base + ib * 32
                    _weights(xr, s, qw, sigma2, w, use_qw)
                    scales[ib] = _block_scale(xr, xi, s, w, sc[0], sc[1], sc[2])
                if xs:
                    _put_xs(xr, base, scales, o, off)
                else:
                    put_fp16(o, off, scales[0])
                    idd = F(F(1.0) / scales[0]) if scales[0] != 0 else F(0.0)  # the unrounded scale
                    _put_indices(xr, base, idd, o, off + 2)

    @jit
    def dequantize(data, out):
        rows, n = out.shape
        H = opaque(16)
        for r in range(rows):
            src = data[r]
            y = out[r]
            for ibl in range(n // bn):
                off = ibl * bsize
                d = get_fp16(src, off)
                sh = (np.int64(src[off + 2]) | (np.int64(src[off + 3]) << 8)) if xs else np.int64(0)
                for ib in range(bn // 32):
                    dl = d
                    if xs:
                        ls = ((np.int64(src[off + 4 + ib // 2]) >> (4 * (ib % 2))) & 0xF) | (
                            ((sh >> (2 * ib)) & 3) << 4
                        )
                        dl = F(d * F(ls - 32))
                    q = off + (8 + 16 * ib if xs else 2)
                    s = ibl * bn + ib * 32
                    for j in range(H):
                        b = src[q + j]
                        y[s + j] = F(dl * KVALUES[b & 0xF])
                        y[s + 16 + j] = F(dl * KVALUES[b >> 4])

    return quantize, dequantize


quantize_iq4_nl, dequantize_iq4_nl = _codec(False)
quantize_iq4_xs, dequantize_iq4_xs = _codec(True)
