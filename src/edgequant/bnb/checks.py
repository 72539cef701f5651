"""Argument checks shared by the bnb functional API; every message names the tensor/option and the fix."""

from __future__ import annotations

import torch

from edgequant.errors import ConfigError, NonFiniteError, ShapeError, UnsupportedTypeError
from edgequant.kernels.floats import first_nonfinite

BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
# 8-bit blockwise: bnb's CPU kernel takes any positive blocksize (its 4-bit ops check BLOCKSIZES); edgequant
# accepts these, which include the 16384 of bnb's own CPU tests.
BLOCKSIZES_8BIT = (*BLOCKSIZES, 8192, 16384, 32768, 65536)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_blocksize(blocksize: int, what: str = "blocksize", allowed: tuple[int, ...] = BLOCKSIZES) -> int:
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize not in allowed:
        raise ConfigError(f"{what}={blocksize!r} is not supported; use one of {allowed}")
    return blocksize


def check_quant_type(quant_type: str) -> str:
    if quant_type not in ("nf4", "fp4"):
        raise UnsupportedTypeError(f"quant_type={quant_type!r} is not supported; use 'nf4' or 'fp4'")
    return quant_type


def check_float_input(A: torch.Tensor, name: str) -> None:
    if not isinstance(A, torch.Tensor):
        raise ConfigError(f"{name}: expected a torch.Tensor, got {type(A).__name__}")
    if A.dtype not in FLOAT_DTYPES:
        raise UnsupportedTypeError(
            f"{name}: dtype {A.dtype} is not supported; use float32, float16 or bfloat16"
        )
    if A.numel() == 0:
        raise ShapeError(f"{name}: tensor of shape {tuple(A.shape)} is empty; nothing to quantize")


def check_finite(A32: torch.Tensor, name: str) -> None:
    """Raise NonFiniteError naming the first NaN/Inf element (flat index and multi-index)."""
    if A32.dtype == torch.float32 and A32.is_contiguous():
        if first_nonfinite(A32.detach().numpy()) < 0:  # numba exponent scan, ~20x faster than torch here
            return
    bad = ~torch.isfinite(A32)
    if bool(bad.any()):
        flat = int(torch.nonzero(bad.reshape(-1))[0])
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), A32.shape)) if A32.dim() else ()
        value = float(A32.reshape(-1)[flat])
        raise NonFiniteError(
            f"{name}: element {idx} (flat index {flat}) is {value}; {int(bad.sum())} non-finite value(s) in "
            f"total. Quantization needs finite weights: fix or mask them first"
        )
