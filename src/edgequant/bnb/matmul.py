"""Inference matmul with a packed 4-bit weight: ``y = x @ W.T`` without materialising W as a whole.

- Batch up to ``GEMV_MAX_ROWS`` and ``K % blocksize == 0``: ``kernels.bnb4.matmul_4bit_aligned`` (reads the
  4-bit codes once per input row; see its docstring for the float32 order: 16 lanes per block segment, then
  ``acc += part * absmax`` block by block).
- Otherwise: the weight is dequantized ``TILE_ROWS`` output rows at a time (exactly ``dequantize_4bit``'s
  values) and multiplied with torch's float32 GEMM, so memory stays at one tile.

Neither is bit-identical to ``F.linear(x, dequantize_4bit(W))`` (different summation order); the training path
of ``nn.Linear4bit`` uses that definition instead.
"""

from __future__ import annotations

import numpy as np
import torch

from edgequant.bnb.codes import code_table_np
from edgequant.kernels import bnb4
from edgequant.kernels.bnb_parallel import run_ranges

GEMV_MAX_ROWS = 4
TILE_ROWS = 256


def matmul_4bit(
    x2d: torch.Tensor,
    packed_u8: np.ndarray,
    absmax: np.ndarray,
    quant_type: str,
    out_features: int,
    blocksize: int,
    threads: int | None = None,
) -> torch.Tensor:
    """float32 (M, K) x packed (N, K) -> float32 (M, N)."""
    m, k = x2d.shape
    table = code_table_np(quant_type)
    xs = x2d.detach().to(torch.float32).contiguous()
    out = torch.empty((m, out_features), dtype=torch.float32)
    if m <= GEMV_MAX_ROWS and k % blocksize == 0 and blocksize % 16 == 0:
        run_ranges(
            bnb4.matmul_4bit_aligned,
            out_features,
            threads,
            xs.numpy(),
            packed_u8,
            absmax,
            table,
            blocksize,
            out.numpy(),
            min_chunk=16,
        )
        return out
    tile = np.empty((min(TILE_ROWS, out_features), k), dtype=np.float32)
    tile_t = torch.from_numpy(tile)
    for r0 in range(0, out_features, TILE_ROWS):
        r1 = min(r0 + TILE_ROWS, out_features)
        rows = r1 - r0
        run_ranges(
            _dequant_rows_offset,
            rows,
            threads,
            packed_u8,
            absmax,
            table,
            blocksize,
            k,
            tile,
            r0,
            min_chunk=16,
        )
        out[:, r0:r1] = xs @ tile_t[:rows].T
    return out


def _dequant_rows_offset(packed, absmax, table, blocksize, k, tile, r0, first, last):
    bnb4.dequantize_rows(packed, absmax, table, blocksize, k, tile[first:], r0 + first, r0 + last)
