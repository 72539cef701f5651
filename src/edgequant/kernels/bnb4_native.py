"""Batch-1..8 AVX2 kernels of the bitsandbytes-style layers (the C extension ``edgequant._gemv``).

``gemv_4bit``: ``y = x @ W.T`` for a packed NF4/FP4 weight (bitsandbytes layout), decoded inside the dot
product: the 16-entry code table is split into 4 byte planes held in ymm registers; 32 codes (16 bytes)
are decoded with 4 in-lane ``vpshufb`` and 8 unpacks and multiplied into 8-lane float32 accumulators with
FMA, the block's absmax applied per weight (batch 2..8) or per block (batch 1). Output rows are shared
dynamically by the calling thread and ``threads - 1`` pthreads (GIL released; see the C source).

The same extension holds the exact int8 kernel of ``kernels.bnb8_matmul.int8_gemm``.

Numerics of ``gemv_4bit``, bound ``|y - y_ref| <= 2 * gamma_K * sum_k |x_k * w_k|`` against
``y_ref = x @ dequantize_4bit(W).T`` in float32, with ``gamma_K = K u / (1 - K u)``, ``u = 2**-24``:

* batch 2..8: every weight is the float32 product ``w = table[code] * absmax[block]``, bit-identical to
  ``dequantize_4bit``; only the summation order differs (8 lanes x up to 4 partial sums per output, then a
  tree sum; FMA rounds each step once). Both are float32 sums of the same K products, each within
  ``gamma_K * sum |x_k w_k|`` of the exact sum.
* batch 1: ``y = sum_b absmax[b] * (sum_{k in b} table[code_k] * x_k)``, the scale applied once per block
  (4 multiplies fewer per 32 weights), and for blocksizes that are multiples of 64, 64 codes decoded from one
  32-byte load (low nibbles, then high nibbles; no broadcast or variable shift; x in ``permute_x64``'s
  order): the raw kernel at 4096x11008, 1 thread, went from 4.5 to 3.76 ms. A product passes through at most
  ``m = bs/16 + K/bs + 5`` roundings (in-block FMAs, the scaling FMA, the row sums, the tree sum), so ``y`` is
  within ``gamma_m * sum |t s x|`` of the exact ``sum t s x``, which is within ``u * sum |t s x|`` of the
  exact ``sum w x`` (``w = fl(t s)``); with ``m + 2 <= K`` (every K >= 32) that adds up to the same bound.

The result does not depend on the thread count.

Covered: CPU with AVX2 and FMA (checked at run time), the extension built, 1 <= M <= 8, K a multiple of
the blocksize (rows made of whole blocks; every bnb blocksize is a multiple of 32). Everything else returns
None and the caller takes its numba path. ``ENABLED = False`` switches the kernels off (tests use it).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

try:
    from edgequant import _gemv
except ImportError:  # built without a C compiler: the numba paths serve
    _gemv = None

ENABLED = True
MAX_BATCH = 8


@functools.cache
def _cpu_ok() -> bool:
    return _gemv is not None and bool(_gemv.has_avx2())


def available() -> bool:
    """True when the compiled AVX2 kernels can run here (and are not switched off)."""
    return ENABLED and _cpu_ok()


def resolve_threads(threads: int | None) -> int:
    """None -> torch's thread count (as float32 nn.Linear uses); else at least 1."""
    return torch.get_num_threads() if threads is None else max(1, int(threads))


@functools.cache
def _perm32() -> torch.Tensor:
    # decode32's order: vector g, float f holds element 2 * (4g + f % 4) + 1 - f // 4 of a run of 32
    return torch.tensor([2 * (4 * (f // 8) + f % 4) + 1 - (f % 8) // 4 for f in range(32)])


@functools.cache
def _perm64() -> torch.Tensor:
    # row4_batch1's 64-code steps: position 32h + 8g + f holds element 2 (16 (f // 4) + 4g + f % 4) + 1 - h
    return torch.tensor(
        [2 * (16 * (f // 4) + 4 * g + f % 4) + 1 - h for h in range(2) for g in range(4) for f in range(8)]
    )


def permute_x64(x1d: torch.Tensor) -> torch.Tensor:
    """float32 (1, K), K % 64 == 0 -> (1, K) in the batch-1 kernel's order for blocksizes that are multiples
    of 64 (the C kernel's ``permute_x64``; documented and tested here as ``permute_x``)."""
    m, k = x1d.shape
    return x1d.reshape(m, k // 64, 64)[:, :, _perm64()].reshape(m, k).contiguous()


def permute_x(x2d: torch.Tensor) -> torch.Tensor:
    """float32 (M, K), K % 32 == 0 -> (M, K) in the kernel's element order: documents (and tests) the copy
    that the C kernel makes itself (in C: a torch index op here may enter an OpenMP region, which costs
    milliseconds on a loaded machine)."""
    m, k = x2d.shape
    return x2d.reshape(m, k // 32, 32)[:, :, _perm32()].reshape(m, k).contiguous()


class Gemv4Plan:
    """``gemv_4bit``'s weight-side arguments, checked and turned into pointers once (a layer keeps one per
    weight: 0.15 ms a call less at 4096x11008). The arrays are kept alive here; calling the plan only checks
    ``x``. ``plan(x2d, threads)`` is ``gemv_4bit(x2d, ...)``."""

    __slots__ = ("_keep", "blocksize", "k", "n", "ptrs")

    def __init__(self, packed_u8, absmax, table, out_features: int, k: int, blocksize: int) -> None:
        if packed_u8.dtype != np.uint8 or packed_u8.size * 2 < out_features * k:
            raise ValueError("gemv_4bit: packed weight too small for (out_features, K)")
        if absmax.dtype != np.float32 or absmax.size < out_features * k // blocksize:
            raise ValueError("gemv_4bit: absmax must be float32 with one value per block")
        self._keep = (
            np.ascontiguousarray(packed_u8),
            np.ascontiguousarray(absmax),
            np.ascontiguousarray(table, dtype=np.float32),
        )
        self.ptrs = tuple(int(a.ctypes.data) for a in self._keep)
        self.n, self.k, self.blocksize = out_features, k, blocksize

    @staticmethod
    def covers(m: int, k: int, blocksize: int) -> bool:
        """Whether the kernel runs here for a batch of ``m`` rows of length ``k``."""
        return available() and 1 <= m <= MAX_BATCH and k % blocksize == 0 and blocksize % 32 == 0

    def __call__(self, x2d: torch.Tensor, threads: int | None = None) -> torch.Tensor | None:
        m, k = x2d.shape
        if k != self.k or not self.covers(m, k, self.blocksize):
            return None
        if x2d.dtype != torch.float32:
            raise TypeError(f"gemv_4bit needs float32 input, got {x2d.dtype}")
        x2d = x2d.contiguous()
        out = torch.empty((m, self.n), dtype=torch.float32)
        packed, absmax, table = self.ptrs
        _gemv.gemv4(x2d.data_ptr(), m, k, packed, absmax, table, self.blocksize, out.data_ptr(), self.n,
                    resolve_threads(threads))  # fmt: skip
        return out


def gemv_4bit(
    x2d: torch.Tensor,
    packed_u8: np.ndarray,
    absmax: np.ndarray,
    table: np.ndarray,
    out_features: int,
    blocksize: int,
    threads: int | None = None,
) -> torch.Tensor | None:
    """float32 (M, K) x packed (N, K) -> float32 (M, N), or None when the shape or CPU is not covered."""
    m, k = x2d.shape
    if not Gemv4Plan.covers(m, k, blocksize):
        return None
    return Gemv4Plan(packed_u8, absmax, table, out_features, k, blocksize)(x2d, threads)
