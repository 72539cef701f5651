"""Inference matmul with a packed 4-bit weight: ``y = x @ W.T`` without materialising W as a whole.

Batch 1..8 (M <= 8 rows of x) with rows made of whole blocks (K % blocksize == 0), on a CPU with AVX2+FMA:
the fused decode-and-dot kernel of ``kernels.bnb4_native`` (C, the 16-entry table in registers, parallel
over output rows; weights equal ``dequantize_4bit``'s, only the summation order differs; the bound is in
that module's docstring). Everything else (larger batches, K not a multiple of the blocksize, no AVX2, no
compiled extension) takes the tiled path below, which gives the same results within the same bound.

The tiled path: the weight is dequantized ``TILE_ROWS`` output rows at a time into one reused float32
buffer (values exactly ``dequantize_4bit``'s: ``table[code] * absmax[block]``; numba, split over threads)
and each tile is multiplied with torch's float32 BLAS (``torch.mm(tile, x.T)``). Transient memory: one
tile (TILE_ROWS * K * 4 bytes), or the whole float32 weight from batch FULL_TILE_MIN_BATCH on (one large
GEMM beats many small ones there).

The summation order inside a dot product is BLAS's, so results can differ in the last bits from
``F.linear(x, dequantize_4bit(W))``; ``nn.Linear4bit`` uses that definition in training and with grads.
(A fused numba GEMV that decodes inside the dot product measured 59 ms at 4096 x 4096, slower than decode +
BLAS: without fastmath the loop is scalar (vmulss/vaddss, one serial add chain) with a 64-bit idiv for the
block index of every byte; with fastmath the table lookups stay scalar and the vector packing made it 81 ms.)
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from edgequant.bnb.codes import code_table_np
from edgequant.kernels import bnb4, bnb4_native
from edgequant.kernels.parallel import run_ranges

TILE_ROWS = 512
FULL_TILE_MIN_BATCH = (
    16  # from this batch on, one GEMM over the whole dequantized weight is faster than tiles
)


@functools.cache
def _pair64(quant_type: str) -> np.ndarray:
    return bnb4.pair_table(code_table_np(quant_type))


def _dequant_rows_offset(kernel, packed, absmax, table, blocksize, k, tile, r0, first, last):
    kernel(packed, absmax, table, blocksize, k, tile[first:], r0 + first, r0 + last)


def matmul_4bit(
    x2d: torch.Tensor,
    packed_u8: np.ndarray,
    absmax: np.ndarray,
    quant_type: str,
    out_features: int,
    blocksize: int,
    threads: int | None = None,
    tile_rows: int | None = None,
) -> torch.Tensor:
    """float32 (M, K) x packed (N, K) -> float32 (M, N)."""
    m, k = x2d.shape
    xf = x2d.detach().to(torch.float32)
    y = bnb4_native.gemv_4bit(
        xf, packed_u8, absmax, code_table_np(quant_type), out_features, blocksize, threads
    )
    if y is not None:
        return y
    if tile_rows is None:
        tile_rows = out_features if m >= FULL_TILE_MIN_BATCH else TILE_ROWS
    xt = xf.T
    out = torch.empty((m, out_features), dtype=torch.float32)
    if k % blocksize == 0:
        kernel, table = bnb4.dequantize_rows_aligned, _pair64(quant_type)
    else:
        kernel, table = bnb4.dequantize_rows, code_table_np(quant_type)
    tile = np.empty((min(tile_rows, out_features), k), dtype=np.float32)
    tile_t = torch.from_numpy(tile)
    for r0 in range(0, out_features, tile_rows):
        r1 = min(r0 + tile_rows, out_features)
        run_ranges(
            _dequant_rows_offset,
            r1 - r0,
            threads,
            kernel,
            packed_u8,
            absmax,
            table,
            blocksize,
            k,
            tile,
            r0,
            min_chunk=16,
        )
        out[:, r0:r1] = torch.mm(tile_t[: r1 - r0], xt).T
    return out
