"""8-bit blockwise quantization with bitsandbytes' names, semantics and states.

``quantize_blockwise(A, code=None, absmax=None, out=None, blocksize=4096, nested=False)`` flattens A
row-major, cuts it into blocks of ``blocksize`` (the last may be short) and stores, per element, the
uint8 index of a 256-entry sorted code (default: the signed dynamic map) and per block the float32 absmax.

Two rounding rules (``bnb_cpu_compatible``):

- False (default, the definition; equals bnb's pure-PyTorch kernel and the nearest-code rule its CUDA
  kernels aim at): ``t = clamp(x * (1/absmax), -1, 1)`` (the short tail block divides and stores
  ``max(absmax, 1e-38)``), code = nearest table value, ties to the lower code. An all-zero block stores
  absmax 0 and code 0, as bnb 0.50.2's CPU kernel does (so a single-block tensor's double quantization
  has bnb's bytes).
- True (bnb 0.50.2's native CPU kernel, byte for byte): t is snapped to a 65536-step grid first,
  ``k = floor(((t + 1) * 0.5) * 65535 + 0.5)``, ``g_k = -1 + (2k)/65535`` (float32), and the code is
  the number of midpoints strictly below ``g_k``. The grid has no point at 0, so 0.0 in a non-zero block
  becomes the code just above 0 (131 of the signed map: +2.125e-05 * absmax), and an all-zero block stores
  absmax 0 and code 0.
  bnb's 8-bit optimizers use this quantizer for their states.

``nested=True`` quantizes ``absmax - mean(absmax)`` again with the same blocksize (bnb's behaviour).
Dequantization: ``code[q] * absmax[block]`` (float32 multiply) cast to the state's dtype; nested absmax is
first recovered as ``dequantize_blockwise(qabsmax, state2) + offset`` (float32 add).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from edgequant.bnb.checks import BLOCKSIZES_8BIT, check_blocksize, check_finite, check_float_input
from edgequant.bnb.codes import create_dynamic_map
from edgequant.bnb.quant_state import QuantState
from edgequant.errors import ConfigError, ShapeError
from edgequant.kernels import bnb8
from edgequant.kernels.parallel import run_ranges


def _code_np(code: torch.Tensor | None) -> np.ndarray:
    if code is None:
        code = create_dynamic_map(signed=True)
    c = code.detach().cpu().to(torch.float32).contiguous().numpy()
    if c.shape != (256,):
        raise ShapeError(f"code: an 8-bit code table has 256 entries, got shape {c.shape}")
    if np.any(np.diff(c) < 0):
        raise ConfigError("code: the code table must be sorted ascending (bnb's kernels assume it)")
    return c


def _midpoints(c: np.ndarray) -> np.ndarray:
    return ((c[:-1] + c[1:]) / np.float32(2.0)).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _lut_cached(code_bytes: bytes) -> np.ndarray:
    c = np.frombuffer(code_bytes, dtype=np.float32)
    k = np.arange(65536, dtype=np.float32)
    grid = (np.float32(-1.0) + (np.float32(2.0) * k) / np.float32(65535.0)).astype(np.float32)
    lut = np.searchsorted(_midpoints(c), grid, side="left").astype(np.uint8)
    lut.flags.writeable = False
    return lut


def cpu_lut(code: np.ndarray) -> np.ndarray:
    """The 65536-entry grid -> code table of bnb's native CPU quantizer for a sorted 256-entry code."""
    return _lut_cached(np.ascontiguousarray(code, dtype=np.float32).tobytes())


def _quantize_flat(
    x: np.ndarray, code: np.ndarray, blocksize: int, bnb_cpu_compatible: bool, threads: int | None
) -> tuple[np.ndarray, np.ndarray]:
    n = x.shape[0]
    n_blocks = -(-n // blocksize)
    q = np.empty(n, dtype=np.uint8)
    absmax = np.empty(n_blocks, dtype=np.float32)
    if bnb_cpu_compatible:
        run_ranges(bnb8.quantize_blockwise_lut, n_blocks, threads, x, blocksize, cpu_lut(code), q, absmax)
    else:
        mids = _midpoints(code)
        run_ranges(bnb8.quantize_blockwise_nearest, n_blocks, threads, x, blocksize, mids, q, absmax)
        _zero_blocks_as_bnb(x, blocksize, q, absmax)
    return q, absmax


def _zero_blocks_as_bnb(x: np.ndarray, blocksize: int, q: np.ndarray, absmax: np.ndarray) -> None:
    """An all-zero block has no scale: store absmax 0 and code 0, as bitsandbytes 0.50.2 does (its native CPU
    kernel, which bnb runs on CPU; its pure-PyTorch fallback would store 1e-38 for a short tail block and the
    zero code 127). Most visible in double quantization of a single-block tensor, whose nested input
    ``absmax - mean(absmax)`` is exactly one zero. Both dequantize to zero (-0.0 here)."""
    for b in np.flatnonzero(absmax <= np.float32(1e-38)):
        start = int(b) * blocksize
        block = x[start : start + blocksize]
        if not block.any():
            absmax[b] = 0.0
            q[start : start + blocksize] = 0


def quantize_blockwise(
    A: torch.Tensor,
    code: torch.Tensor | None = None,
    absmax: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    blocksize: int = 4096,
    nested: bool = False,
    *,
    bnb_cpu_compatible: bool = False,
    threads: int | None = None,
    name: str = "A",
) -> tuple[torch.Tensor, QuantState]:
    """Quantize A (float32/16, bf16) blockwise to uint8 codes of A's shape; see the module docstring."""
    check_blocksize(blocksize, allowed=BLOCKSIZES_8BIT)
    check_float_input(A, name)
    a32 = A.detach().to("cpu", torch.float32).contiguous()
    check_finite(a32, name)
    c = _code_np(code)
    q, am = _quantize_flat(a32.reshape(-1).numpy(), c, blocksize, bnb_cpu_compatible, threads)
    q_t = torch.from_numpy(q).reshape(A.shape)
    am_t = torch.from_numpy(am)
    code_t = torch.from_numpy(c.copy())
    if nested:
        offset = am_t.mean()
        qabsmax, state2 = quantize_blockwise(
            am_t - offset, blocksize=blocksize, bnb_cpu_compatible=bnb_cpu_compatible, threads=threads
        )
        state = QuantState(
            absmax=qabsmax, code=code_t, blocksize=blocksize, dtype=A.dtype, offset=offset, state2=state2
        )
    else:
        state = QuantState(absmax=am_t, code=code_t, blocksize=blocksize, dtype=A.dtype)
    if out is not None:
        q_t = out.copy_(q_t)
    if absmax is not None:
        state.absmax = absmax.copy_(state.absmax)
    return q_t, state


def recover_absmax(state: QuantState) -> torch.Tensor:
    """float32 absmax of a state: itself, or ``dequantize_blockwise(codes, state2) + offset`` when nested."""
    if not state.nested:
        return state.absmax.to(torch.float32)
    am = dequantize_blockwise(state.absmax, state.state2)
    am = am.to(torch.float32)
    am += state.offset
    return am


def dequantize_blockwise(
    A: torch.Tensor,
    quant_state: QuantState | None = None,
    absmax: torch.Tensor | None = None,
    code: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    blocksize: int = 4096,
    nested: bool = False,
) -> torch.Tensor:
    """Inverse of quantize_blockwise: ``code[A] * absmax[block]`` in float32, cast to the state's dtype."""
    if quant_state is None and absmax is None:
        raise ConfigError("dequantize_blockwise needs quant_state or absmax")
    if A.dtype != torch.uint8:
        raise ConfigError(f"dequantize_blockwise: A must be uint8 codes, got {A.dtype}")
    if quant_state is None:
        quant_state = QuantState(
            absmax=absmax,
            code=code if code is not None else create_dynamic_map(),
            blocksize=blocksize,
            dtype=torch.float32,
        )
    check_blocksize(quant_state.blocksize, "quant_state.blocksize", BLOCKSIZES_8BIT)
    am = recover_absmax(quant_state).contiguous()
    n = A.numel()
    if am.numel() != -(-n // quant_state.blocksize):
        raise ShapeError(
            f"dequantize_blockwise: {n} codes in blocks of {quant_state.blocksize} need "
            f"{-(-n // quant_state.blocksize)} absmax values, the state has {am.numel()}"
        )
    c = _code_np(quant_state.code)
    res = np.empty(n, dtype=np.float32)
    bnb8.dequantize_blockwise(A.contiguous().reshape(-1).numpy(), am.numpy(), c, quant_state.blocksize, res)
    result = torch.from_numpy(res).reshape(A.shape).to(quant_state.dtype)
    if out is not None:
        return out.copy_(result)
    return result
