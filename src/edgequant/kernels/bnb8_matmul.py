"""Exact int8 x int8 -> int32 matmul for LLM.int8 (``out[i, o] = sum_k a[i, k] * w[o, k]``).

Integer sums are exact, so the result equals ``torch._int_mm`` (and bnb's fp32-matmul fallback whenever its
partial sums stay below 2**24, e.g. K <= 1040). Output rows (weight rows) are the parallel dimension; each
weight row is read once for all input rows.

``int8_gemm``: the AVX2 kernel of the C extension (``edgequant._gemv``) for 1 <= M <= 8: int8 widened to
int16 (``vpmovsxbw``), pairs multiplied and added into int32 (``vpmaddwd``, exact for every int8 value,
-128 included), 16 weights per instruction. ``int8_matmul_rows``: the numba kernel, the fallback (no AVX2,
no compiled extension); both give the same int32 (wrapping alike only if a sum leaves int32's range).
"""

from __future__ import annotations

import numpy as np
import torch

from edgequant.kernels.bnb4_native import MAX_BATCH, _gemv, available, resolve_threads
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


def int8_gemm(a: torch.Tensor, w: torch.Tensor, threads: int | None = None) -> torch.Tensor | None:
    """Exact int32 ``a @ w.T`` for int8 a (M, K), w (N, K), or None when M > 8 or the CPU is not covered."""
    m, k = a.shape
    if not available() or not 1 <= m <= MAX_BATCH:
        return None
    if a.dtype != torch.int8 or w.dtype != torch.int8 or w.shape[1] != k:
        raise TypeError(
            f"int8_gemm needs int8 (M, K) x int8 (N, K), got {a.dtype} {w.dtype} {tuple(w.shape)}"
        )
    a16 = a.to(torch.int16).contiguous()
    w = w.contiguous()
    n = w.shape[0]
    out = torch.empty((m, n), dtype=torch.int32)
    _gemv.int8_gemm(a16.data_ptr(), m, k, w.data_ptr(), out.data_ptr(), n, resolve_threads(threads))
    return out
