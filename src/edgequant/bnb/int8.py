"""LLM.int8's vector-wise functions with bitsandbytes 0.50.2's names, arguments and numerics (CPU).

bnb runs these as pure-PyTorch "default" kernels on CPU, and edgequant's results are bit-identical:

- ``int8_vectorwise_quant(A, threshold=0.0)`` -> ``(CA int8, SCA float32 [rows], outlier_cols | None)``.
  With ``threshold > 0``, elements with ``|A| >= threshold`` (>=, as bnb) are outliers: ``outlier_cols`` is
  the sorted int64 list of columns holding one (an empty tensor if none), the outliers are zeroed before
  ``SCA[i] = max_j |A[i, j]|`` (float32), ``CA = round(A * (127 / SCA[i]))`` (round half to even) and, for
  more than one row, whole outlier columns of CA are zeroed. A itself is not modified.
- ``int8_vectorwise_dequant(A, stats) = A * stats[:, None] * 0.007874015718698502`` (float32(1/127)).
- ``int8_linear_matmul(A, B)``: ``A @ B.T`` in exact int32 for int8 A (..., K) and B (N, K). bnb on a CPU
  without AVX-512 does a float32 matmul cast to int32 (equal while partial sums stay below 2**24); with
  AVX-512 it uses ``torch._int_mm`` (exact). edgequant is always exact: a float64 GEMM, whose sums of int8
  products are exact integers (``nn.Linear8bitLt`` has its own faster exact kernel, ``int8_matmul``).
- ``int8_mm_dequant(A, row_stats, col_stats, out=None, bias=None)``: ``float32(A) * (row_stats[:, None] *
  col_stats[None, :]) * 6.200124e-05`` (bnb's literal), ``+ bias``, cast to float16 (bnb's functional dtype).
"""

from __future__ import annotations

import torch

from edgequant.errors import ConfigError, ShapeError

DEQ_SCALE = 0.007874015718698502  # float32(1/127), bnb's literal
MM_SCALE = 6.200124e-05  # bnb's literal (1/127**2 would be 6.2000124e-05)


def int8_vectorwise_quant(
    A: torch.Tensor, threshold: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Row-wise int8 quantization with LLM.int8's outlier columns (see the module docstring)."""
    if not isinstance(A, torch.Tensor) or not A.is_floating_point() or A.dim() < 2:
        raise ConfigError(
            f"int8_vectorwise_quant: A must be a float tensor of >= 2 dims, got {type(A).__name__}"
        )
    rows = A.numel() // A.shape[-1]
    cols = None
    if threshold > 0.0:
        outliers = A.abs() >= threshold
        cols = torch.argwhere(outliers.any(dim=0)).view(-1)
        if cols.numel():
            A = A.masked_fill(outliers, 0)
    row_stats = torch.max(A.abs(), dim=1).values.float()
    out_row = torch.round(A * (127.0 / row_stats.unsqueeze(-1))).to(torch.int8)
    if rows > 1 and cols is not None:
        out_row[:, cols] = 0
    return out_row, row_stats, cols


def int8_vectorwise_dequant(A: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """float32 ``A * stats[:, None] / 127`` with bnb's reciprocal literal."""
    if A.dtype != torch.int8:
        raise ConfigError(f"int8_vectorwise_dequant: A must be int8, got {A.dtype}")
    return A * stats.view(-1, 1) * DEQ_SCALE


def int8_linear_matmul(
    A: torch.Tensor, B: torch.Tensor, out: torch.Tensor | None = None, dtype: torch.dtype = torch.int32
) -> torch.Tensor:
    """Exact int32 ``A @ B.T`` for int8 A (..., K) and int8 B (N, K) (a float64 GEMM: exact for K < 2**39)."""
    if A.dtype != torch.int8 or B.dtype != torch.int8:
        raise ConfigError(f"int8_linear_matmul: A and B must be int8, got {A.dtype} and {B.dtype}")
    if B.dim() != 2 or A.shape[-1] != B.shape[-1]:
        raise ShapeError(
            f"int8_linear_matmul: A {tuple(A.shape)} and B {tuple(B.shape)} need B (N, K) with A's last dim K"
        )
    if out is not None and out.dtype != torch.int32:
        raise ConfigError(f"int8_linear_matmul: out must be int32, got {out.dtype}")
    result = torch.matmul(A.double(), B.double().t()).to(torch.int32)
    return out.copy_(result) if out is not None else result


def int8_mm_dequant(
    A: torch.Tensor,
    row_stats: torch.Tensor,
    col_stats: torch.Tensor,
    out: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """Dequantize an int32 product of two vector-wise int8 operands (float16 result, as bnb)."""
    for what, t, want in (("A", A, torch.int32), ("row_stats", row_stats, torch.float32)):
        if t.dtype != want:
            raise ConfigError(f"int8_mm_dequant: {what} must be {want}, got {t.dtype}")
    if col_stats.dtype != torch.float32:
        raise ConfigError(f"int8_mm_dequant: col_stats must be torch.float32, got {col_stats.dtype}")
    res = A.view(-1, A.shape[-1]) * (row_stats.reshape(-1).unsqueeze(-1) * col_stats.reshape(-1).unsqueeze(0))
    res = res * MM_SCALE
    if bias is not None:
        res += bias
    res = res.to(dtype)
    return out.copy_(res) if out is not None else res
