"""4-bit (NF4/FP4, bitsandbytes layout) quantize, dequantize and dequantize+matmul kernels.

Layout: the weight is flattened row-major; element e sits in byte e // 2, the **high nibble for even e**,
low nibble for odd e. Blocks are consecutive runs of ``blocksize`` flattened elements (they straddle rows when
the row length is not a multiple of the blocksize); ``absmax`` is float32 per block.

Quantize (= bnb's pure-PyTorch quantize_4bit): full blocks ``t = clamp(x * (1 / max(absmax, 1e-38)), -1, 1)``
and store absmax unchanged; the short tail block uses ``t = clamp(x / max(absmax, 1e-38), -1, 1)`` and stores
the clamped absmax. Sorted index = number of float32 midpoints strictly below t (ties go to the lower value);
code = ``order[sorted index]`` (identity for NF4). Odd n: the pad element is t = 0.0.

Dequantize: ``w = table[code] * absmax[block]`` (one float32 multiply).

Row dequantization for the inference matmul (``bnb.matmul``): ``dequantize_rows`` (any geometry) and
``dequantize_rows_aligned`` (rows of whole blocks; a byte decodes to two floats through a 256-entry table).
"""

from __future__ import annotations

import numpy as np

from edgequant.kernels.primitives import jit

_TINY = np.float32(1e-38)


@jit
def block_absmax(x, start, end):
    """max |x[start:end]| (NaN-free input; 8 running maxima, so the order does not change the result)."""
    lanes = np.zeros(8, dtype=np.float32)
    i = start
    while i + 8 <= end:
        for u in range(8):
            lanes[u] = max(lanes[u], abs(x[i + u]))
        i += 8
    am = np.float32(0.0)
    while i < end:
        am = max(am, abs(x[i]))
        i += 1
    for u in range(8):
        am = max(am, lanes[u])
    return am


@jit
def _codes_scaled(x, start, m, r, divide, mids, codes):
    # codes[i] = number of midpoints strictly below clamp(x * r or x / r, -1, 1) (15 compares, vectorized)
    one = np.float32(1.0)
    for i in range(m):
        if divide:
            ti = min(max(x[start + i] / r, -one), one)
        else:
            ti = min(max(x[start + i] * r, -one), one)
        c = 0
        for j in range(15):
            c += np.int64(mids[j] < ti)
        codes[i] = c


@jit
def quantize_4bit(x, blocksize, mids, pair_lut, packed, absmax, first_block, last_block):
    """Quantize blocks [first_block, last_block) of flat float32 x; blocksize must be even.

    ``pair_lut[16 * a + b] = (order[a] << 4) | order[b]`` maps two sorted indices to a packed byte.
    """
    n = x.shape[0]
    one = np.float32(1.0)
    codes = np.empty(blocksize + 2, dtype=np.uint8)
    zero = np.zeros(1, dtype=np.float32)
    zero_code = np.empty(1, dtype=np.uint8)
    _codes_scaled(zero, 0, 1, one, False, mids, zero_code)
    for b in range(first_block, last_block):
        start = b * blocksize
        end = min(start + blocksize, n)
        m = end - start
        am = block_absmax(x, start, end)
        amc = max(am, _TINY)
        if m == blocksize:
            absmax[b] = am
            _codes_scaled(x, start, m, one / amc, False, mids, codes)
        else:
            absmax[b] = amc
            _codes_scaled(x, start, m, amc, True, mids, codes)
            codes[m] = zero_code[0]  # bnb pads an odd count with 0.0
        p0 = start >> 1
        for j in range((m + 1) >> 1):
            packed[p0 + j] = pair_lut[np.int64(codes[2 * j]) * 16 + np.int64(codes[2 * j + 1])]


@jit
def dequantize_4bit(packed, absmax, table, blocksize, n, out, first_block, last_block):
    """out[e] = table[code e] * absmax[e // blocksize] for e in blocks [first_block, last_block)."""
    for b in range(first_block, last_block):
        start = b * blocksize
        end = min(start + blocksize, n)
        s = absmax[b]
        p0 = start >> 1
        for j in range((end - start) >> 1):
            byte = np.int64(packed[p0 + j])
            out[start + 2 * j] = table[byte >> 4] * s
            out[start + 2 * j + 1] = table[byte & 15] * s
        if (end - start) & 1:
            out[end - 1] = table[np.int64(packed[(end - 1) >> 1]) >> 4] * s


def pair_table(table: np.ndarray) -> np.ndarray:
    """256 byte values -> the two float32 values they encode (high nibble first), viewed as uint64."""
    pair = np.empty(512, dtype=np.float32)
    for b in range(256):
        pair[2 * b] = table[b >> 4]
        pair[2 * b + 1] = table[b & 15]
    return pair.view(np.uint64)


@jit
def dequantize_rows_aligned(packed, absmax, pair64, blocksize, k_dim, out, row_first, row_last):
    """Like dequantize_rows for K % blocksize == 0: out[r - row_first, k] = table[code] * absmax[block]."""
    nblk = k_dim // blocksize
    half = blocksize >> 1
    w = np.empty(blocksize, dtype=np.float32)
    w64 = w.view(np.uint64)
    for r in range(row_first, row_last):
        for j in range(nblk):
            blk = r * nblk + j
            p0 = blk * half
            for i in range(half):
                w64[i] = pair64[packed[p0 + i]]
            s = absmax[blk]
            base = j * blocksize
            for i in range(blocksize):
                out[r - row_first, base + i] = w[i] * s


@jit
def dequantize_rows(packed, absmax, table, blocksize, k_dim, out, row_first, row_last):
    """out[r - row_first, :] = dequantized weight row r, for r in [row_first, row_last) (any geometry)."""
    for r in range(row_first, row_last):
        e = r * k_dim
        end = e + k_dim
        k = 0
        while e < end:
            b = e // blocksize
            seg_end = min((b + 1) * blocksize, end)
            s = absmax[b]
            while e < seg_end:
                byte = np.int64(packed[e >> 1])
                c = (byte >> 4) if (e & 1) == 0 else (byte & 15)
                out[r - row_first, k] = table[c] * s
                e += 1
                k += 1
