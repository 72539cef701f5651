"""edgequant's 4-bit dequantization and matmul as PyTorch custom ops, so ``torch.compile`` can trace callers.

The numba kernels behind ``dequantize_4bit`` and ``bnb.matmul.matmul_4bit`` work on numpy arrays, which
dynamo cannot trace (``fullgraph=True`` fails). ``edgequant::dequantize_4bit`` and ``edgequant::matmul_4bit``
wrap them as opaque ops with shape-only fake implementations; the values are exactly those of the eager
functions (``fourbit.dequantize_4bit``: float32 ``table[code] * absmax`` cast to ``dtype``; the matmul: the
tiled float32 kernel). A QuantState goes in as its tensors: ``absmax`` (float32, or uint8 codes when nested,
then with ``nested`` = [nested absmax, nested code, offset] and ``nested_blocksize``).
"""

from __future__ import annotations

import torch

from edgequant.bnb import matmul as _fast
from edgequant.bnb.blockwise import recover_absmax
from edgequant.bnb.fourbit import dequantize_4bit, packed_bytes
from edgequant.bnb.quant_state import QuantState


def _state(absmax, shape, blocksize, quant_type, dtype, nested, nested_blocksize):
    """A QuantState from the op arguments; ``nested`` is [] or [nested_absmax, nested_code, offset]."""
    state2 = offset = None
    if nested:
        state2 = QuantState(absmax=nested[0], code=nested[1], blocksize=nested_blocksize, dtype=torch.float32)
        offset = nested[2]
    return QuantState(
        absmax=absmax,
        shape=shape,
        blocksize=blocksize,
        quant_type=quant_type,
        dtype=dtype,
        offset=offset,
        state2=state2,
    )


@torch.library.custom_op("edgequant::dequantize_4bit", mutates_args=())
def dequantize_4bit_op(
    A: torch.Tensor,
    absmax: torch.Tensor,
    shape: list[int],
    blocksize: int,
    quant_type: str,
    dtype: torch.dtype,
    nested: list[torch.Tensor],
    nested_blocksize: int,
) -> torch.Tensor:
    return dequantize_4bit(A, _state(absmax, shape, blocksize, quant_type, dtype, nested, nested_blocksize))


@dequantize_4bit_op.register_fake
def _(A, absmax, shape, blocksize, quant_type, dtype, nested, nested_blocksize):
    return A.new_empty(shape, dtype=dtype)


@torch.library.custom_op("edgequant::matmul_4bit", mutates_args=())
def matmul_4bit_op(
    x2d: torch.Tensor, A: torch.Tensor, absmax: torch.Tensor, shape: list[int],
    blocksize: int, quant_type: str, nested: list[torch.Tensor], nested_blocksize: int,
) -> torch.Tensor:  # fmt: skip
    st = _state(absmax, shape, blocksize, quant_type, torch.float32, nested, nested_blocksize)
    am = recover_absmax(st).contiguous().numpy()
    return _fast.matmul_4bit(x2d, packed_bytes(A), am, quant_type, shape[0], blocksize)


@matmul_4bit_op.register_fake
def _(x2d, A, absmax, shape, blocksize, quant_type, nested, nested_blocksize):
    return x2d.new_empty((x2d.shape[0], shape[0]), dtype=torch.float32)


def _args(qs: QuantState) -> tuple:
    nested = [qs.state2.absmax, qs.state2.code, qs.offset] if qs.nested else []
    return (
        qs.absmax,
        list(qs.shape),
        qs.blocksize,
        qs.quant_type,
        nested,
        qs.state2.blocksize if qs.nested else 0,
    )


def dequantize(A: torch.Tensor, qs: QuantState) -> torch.Tensor:
    """``dequantize_4bit(A, qs)`` through the custom op."""
    absmax, shape, bs, qt, nested, nested_bs = _args(qs)
    return dequantize_4bit_op(A, absmax, shape, bs, qt, qs.dtype, nested, nested_bs)


def matmul(x2d: torch.Tensor, A: torch.Tensor, qs: QuantState) -> torch.Tensor:
    """float32 (M, K) @ dequantized W (N, K).T -> float32 (M, N) through the custom op."""
    return matmul_4bit_op(x2d, A, *_args(qs))
