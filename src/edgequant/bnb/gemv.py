"""``gemv_4bit`` and ``matmul_4bit`` with bitsandbytes 0.50.2's signatures: ``A @ W.T`` for a packed 4-bit W.

``matmul_4bit(A, B, quant_state, out=None, bias=None)`` (bnb's ``bitsandbytes.matmul_4bit``) and
``gemv_4bit(A, B, out=None, transposed_A=False, transposed_B=False, state=None)`` (``bnb.functional``). B is
the packed weight as ``quantize_4bit`` returns it, or its ``.t()``; ``state.shape`` = (N, K) is the truth.

Numerics. bnb on a CPU without AVX512-BF16 computes ``F.linear(A, dequantize_4bit(W).to(A.dtype), bias)``
(its "default" gemm/gemv kernels; float32 ``table[code] * absmax``, cast to A's dtype). edgequant:

- ``matmul_4bit`` with float32 A, no gradient needed: the tiled kernel of ``bnb.matmul.matmul_4bit`` (same
  dequantized values, float32 BLAS on tiles: equal to bnb up to summation order, ~1e-6 relative), then
  ``+ bias`` in float32;
- ``gemv_4bit``, and otherwise (float16/bfloat16 A, or A/bias requiring grad): bnb's definition above,
  bit-identical, with gradients to A and bias (W is frozen).

On an AVX512-BF16 CPU bnb instead repacks W and runs a bf16 kernel (not reproducible bit for bit; see
docs); edgequant does not follow that path. A weight quantized as (K, N) (bnb's deprecated orientation, when
``A.shape[-1] == shape[0] != shape[1]``) is used as ``A @ W``, as bnb does. The kernels run as the custom ops
of ``bnb.ops``, so ``torch.compile(fullgraph=True)`` traces through.
"""

from __future__ import annotations

import warnings

import torch

from edgequant.bnb import ops
from edgequant.bnb.quant_state import QuantState
from edgequant.errors import ConfigError, ShapeError


def _check_state(A: torch.Tensor, state: QuantState | None, fn: str) -> tuple[int, int]:
    if state is None:
        raise ConfigError(f"{fn}: quant_state is None; pass the state quantize_4bit returned")
    if state.shape is None or len(state.shape) != 2:
        raise ConfigError(f"{fn}: quant_state.shape must be 2-D (N, K), got {state.shape}")
    n, k = state.shape
    if A.shape[-1] not in (k, n):
        raise ShapeError(f"{fn}: A {tuple(A.shape)} does not fit a weight of shape {(n, k)}")
    return n, k


def matmul_4bit(
    A: torch.Tensor,
    B: torch.Tensor,
    quant_state: QuantState,
    out: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    fast: bool = True,
) -> torch.Tensor:
    """``A @ W.T + bias`` (shape ``(*A.shape[:-1], N)``, A's dtype); ``fast=False``: always the definition."""
    n, k = _check_state(A, quant_state, "matmul_4bit")
    needs_grad = torch.is_grad_enabled() and (A.requires_grad or (bias is not None and bias.requires_grad))
    if A.shape[-1] == n and n != k:  # bnb: a weight quantized as (K, N), deprecated with this warning
        warnings.warn(
            f"matmul_4bit: weight was quantized from a [K, N] tensor (quant_state.shape={[n, k]}). "
            "Re-quantize from the weight in [N, K] (out_features, in_features) orientation.",
            DeprecationWarning,
            stacklevel=2,
        )
        result = torch.nn.functional.linear(A, ops.dequantize(B, quant_state).to(A.dtype).t(), bias)
    elif fast and A.dtype == torch.float32 and not needs_grad and A.numel() > 0:
        y = ops.matmul(A.reshape(-1, k), B, quant_state)
        if bias is not None:
            y += bias
        result = y.reshape(*A.shape[:-1], n)
    else:
        result = torch.nn.functional.linear(A, ops.dequantize(B, quant_state).to(A.dtype), bias)
    return out.copy_(result) if out is not None else result


def gemv_4bit(
    A: torch.Tensor,
    B: torch.Tensor,
    out: torch.Tensor | None = None,
    transposed_A: bool = False,
    transposed_B: bool = False,
    state: QuantState | None = None,
) -> torch.Tensor:
    """bnb's ``gemv_4bit``: ``A @ W.T`` without bias (``transposed_*`` are accepted and ignored, as bnb).

    Always the definition ``F.linear(A, dequantize_4bit(W).to(A.dtype))``: bit-identical to bnb on a CPU
    without AVX512-BF16, as bnb's own tests expect of it (~1e-8 in float32, tighter than BLAS tiling gives).
    """
    if state is None:
        raise ConfigError("gemv_4bit: state cannot be None; pass the state quantize_4bit returned")
    return matmul_4bit(A, B, state, out=out, fast=False)
