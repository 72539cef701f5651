"""Element-wise float row kernels: F32 (copy), F16 and BF16, bit-exact with ggml's row converters.

F16: IEEE round-to-nearest-even, subnormals exact, overflow -> inf, NaN -> 0x7E00 with sign (ggml's
software path in libggml-base). BF16: round-to-nearest-even on the upper 16 bits, NaN -> quiet.
Stored little-endian, 2 bytes per weight; F32 is 4 bytes per weight.
"""

from __future__ import annotations

import numpy as np

from edgequant.kernels.primitives import (
    fp16_bits_to_fp32,
    fp32_to_bf16_bits,
    fp32_to_fp16_bits,
    i32_as_f32,
    jit,
)


def _codec(kind):
    """The (quantize, dequantize) row kernels of F32 (``kind`` 0, copies), F16 (1) or BF16 (2); ``kind`` is
    constant to numba."""

    @jit
    def quantize(x, qw, out):
        rows, n = x.shape
        for r in range(rows):
            if kind == 0:
                o32 = out[r].view(np.float32)
                for i in range(n):
                    o32[i] = x[r, i]
            else:
                o = out[r].view(np.uint16)
                for i in range(n):
                    o[i] = fp32_to_bf16_bits(x[r, i]) if kind == 2 else fp32_to_fp16_bits(x[r, i])

    @jit
    def dequantize(data, out):
        rows, n = out.shape
        for r in range(rows):
            if kind == 0:
                s32 = data[r].view(np.float32)
                for i in range(n):
                    out[r, i] = s32[i]
            else:
                src = data[r].view(np.uint16)
                for i in range(n):
                    h = src[i]
                    out[r, i] = i32_as_f32(np.int32(np.int64(h) << 16)) if kind == 2 else fp16_bits_to_fp32(h)

    return quantize, dequantize


quantize_f32, dequantize_f32 = _codec(0)
quantize_f16, dequantize_f16 = _codec(1)
quantize_bf16, dequantize_bf16 = _codec(2)


@jit
def first_nonfinite(x):
    """Flat index of the first NaN/Inf in a C-contiguous float32 array, or -1.

    Works on the bits in chunks of 4096: an integer max of the exponent fields vectorizes, where a
    per-element ``isfinite`` branch does not; only a chunk that holds a NaN/Inf is scanned element-wise.
    """
    bits = x.reshape(-1).view(np.int32)
    n = bits.size
    for start in range(0, n, 4096):
        stop = min(n, start + 4096)
        m = np.int32(0)
        for i in range(start, stop):
            m = max(m, np.int32(bits[i] & np.int32(0x7F800000)))
        if m == np.int32(0x7F800000):
            for i in range(start, stop):
                if (bits[i] & np.int32(0x7F800000)) == np.int32(0x7F800000):
                    return i
    return -1


@jit
def rows_with_overflowed_scales(out, type_size, fields):
    """Rows of ggml blocks whose fp16 scale fields (byte offsets in a block) hold inf/NaN (exponent 31)."""
    rows, row_bytes = out.shape
    bad = np.zeros(rows, np.bool_)
    for r in range(rows):
        for b in range(0, row_bytes, type_size):
            for f in fields:
                if (out[r, b + f + 1] & 0x7C) == 0x7C:
                    bad[r] = True
    return np.flatnonzero(bad)
