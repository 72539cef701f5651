"""Exact int8 x int8 -> int32 matmul for LLM.int8 (``out[i, o] = sum_k a[i, k] * w[o, k]``).

Integer sums are exact, so the result equals ``torch._int_mm`` (and bnb's fp32-matmul fallback whenever its
partial sums stay below 2**24, e.g. K <= 1040). Output rows (weight rows) are the parallel dimension; each
weight row is read once for all input rows.
"""

from __future__ import annotations

import numpy as np

from edgequant.kernels.primitives import jit


@jit
def int8_matmul_rows(a, w, out, row_first, row_last):
    m_rows, k_dim = a.shape
    for o in range(row_first, row_last):
        for i in range(m_rows):
            acc = np.int32(0)
            for k in range(k_dim):
                acc += np.int32(a[i, k]) * np.int32(w[o, k])
            out[i, o] = acc
