"""4-bit NF4/FP4 quantization with bitsandbytes' names, bytes and states (numerics: kernels/bnb4.py).

``quantize_4bit(A, absmax=None, out=None, blocksize=64, compress_statistics=False, quant_type="nf4")`` returns
``(packed, QuantState)``. ``packed`` is uint8 of shape ``(ceil(n/2), 1)`` (a column, as in bnb), two codes per
byte, the earlier element in the high nibble. With ``quant_storage`` (e.g. torch.bfloat16) the same bytes are
viewed as that dtype, shape ``(ceil(n/2) / itemsize, 1)``.

Double quantization (``compress_statistics=True``): ``offset = mean(absmax)`` (torch float32 mean),
``qabsmax, state2 = quantize_blockwise(absmax - offset, blocksize=256)``; absmax is recovered as
``dynmap[qabsmax] * state2.absmax[i // 256] + offset``. With ``bnb_cpu_compatible=True`` that 8-bit step uses
bnb's native CPU rounding (65536-step grid), which makes the state byte-identical with bnb 0.50.2 on CPU; the
default uses exact nearest-code rounding (the definition). The packed 4-bit bytes are the same either way.

Note: bnb's default ``quant_type`` is "fp4"; edgequant's is "nf4" (what QLoRA uses). Pass it explicitly.
"""

from __future__ import annotations

import numpy as np
import torch

from edgequant.bnb.blockwise import quantize_blockwise, recover_absmax
from edgequant.bnb.checks import check_blocksize, check_finite, check_float_input, check_quant_type
from edgequant.bnb.codes import code_table_np, get_4bit_type, sorted_codes_and_midpoints
from edgequant.bnb.quant_state import QuantState
from edgequant.errors import ConfigError, ShapeError
from edgequant.kernels import bnb4
from edgequant.kernels.parallel import run_ranges

NESTED_BLOCKSIZE = 256


def quantize_4bit_np(
    x: np.ndarray, blocksize: int, quant_type: str, threads: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Flat float32 -> (packed uint8 [ceil(n/2)], absmax float32 [ceil(n/blocksize)])."""
    n = x.shape[0]
    n_blocks = -(-n // blocksize)
    order, mids = sorted_codes_and_midpoints(quant_type)
    o = order.astype(np.int64)
    pair_lut = ((o[:, None] << 4) | o[None, :]).astype(np.uint8).reshape(256)
    packed = np.empty((n + 1) // 2, dtype=np.uint8)
    absmax = np.empty(n_blocks, dtype=np.float32)
    run_ranges(
        bnb4.quantize_4bit, n_blocks, threads, x, blocksize, mids, pair_lut, packed, absmax, min_chunk=64
    )
    return packed, absmax


def quantize_4bit(
    A: torch.Tensor,
    absmax: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    blocksize: int = 64,
    compress_statistics: bool = False,
    quant_type: str = "nf4",
    quant_storage: torch.dtype = torch.uint8,
    *,
    bnb_cpu_compatible: bool = False,
    threads: int | None = None,
    name: str = "A",
) -> tuple[torch.Tensor, QuantState]:
    """Quantize A to packed NF4/FP4 codes and a QuantState (see the module docstring)."""
    check_blocksize(blocksize)
    check_quant_type(quant_type)
    check_float_input(A, name)
    a32 = A.detach().to("cpu", torch.float32).contiguous()
    check_finite(a32, name)
    packed_np, absmax_np = quantize_4bit_np(a32.reshape(-1).numpy(), blocksize, quant_type, threads)
    packed = torch.from_numpy(packed_np).unsqueeze(1)
    if quant_storage != torch.uint8:
        itemsize = torch.empty((), dtype=quant_storage).element_size()
        if packed.numel() % itemsize:
            raise ShapeError(
                f"{name}: {packed.numel()} packed bytes cannot be viewed as {quant_storage} "
                f"({itemsize} bytes each); use quant_storage=torch.uint8"
            )
        packed = packed.reshape(-1).view(quant_storage).unsqueeze(1)
    am = torch.from_numpy(absmax_np)
    code = get_4bit_type(quant_type)
    if compress_statistics:
        offset = am.mean()
        qabsmax, state2 = quantize_blockwise(
            am - offset, blocksize=NESTED_BLOCKSIZE, bnb_cpu_compatible=bnb_cpu_compatible, threads=threads
        )
        state = QuantState(
            absmax=qabsmax,
            shape=A.shape,
            code=code,
            blocksize=blocksize,
            quant_type=quant_type,
            dtype=A.dtype,
            offset=offset,
            state2=state2,
        )
    else:
        state = QuantState(
            absmax=am, shape=A.shape, code=code, blocksize=blocksize, quant_type=quant_type, dtype=A.dtype
        )
    if out is not None:
        packed = out.copy_(packed)
    if absmax is not None:
        state.absmax = absmax.copy_(state.absmax)
    return packed, state


def quantize_nf4(A: torch.Tensor, blocksize: int = 64, compress_statistics: bool = False, **kw):
    return quantize_4bit(
        A, blocksize=blocksize, compress_statistics=compress_statistics, quant_type="nf4", **kw
    )


def quantize_fp4(A: torch.Tensor, blocksize: int = 64, compress_statistics: bool = False, **kw):
    return quantize_4bit(
        A, blocksize=blocksize, compress_statistics=compress_statistics, quant_type="fp4", **kw
    )


def packed_bytes(A: torch.Tensor) -> np.ndarray:
    """The packed 4-bit data as a flat uint8 numpy array, whatever its storage dtype."""
    return A.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def check_state_matches(A: torch.Tensor, state: QuantState, name: str = "A") -> int:
    """Validate a packed tensor against its state; returns the element count n."""
    if state.shape is None or state.quant_type is None:
        raise ConfigError(f"{name}: the QuantState has no shape/quant_type; it is not a 4-bit state")
    check_blocksize(state.blocksize, f"{name}: quant_state.blocksize")
    check_quant_type(state.quant_type)
    n = int(np.prod(state.shape)) if len(state.shape) else 1
    nbytes = A.numel() * A.element_size()
    if nbytes != (n + 1) // 2:
        raise ShapeError(
            f"{name}: {nbytes} packed bytes do not fit shape {tuple(state.shape)} "
            f"({(n + 1) // 2} bytes expected)"
        )
    n_blocks = -(-n // state.blocksize)
    if state.absmax.numel() != n_blocks:
        raise ShapeError(
            f"{name}: shape {tuple(state.shape)} in blocks of {state.blocksize} needs {n_blocks} absmax "
            f"values, the state has {state.absmax.numel()}"
        )
    return n


def dequantize_4bit(
    A: torch.Tensor,
    quant_state: QuantState | None = None,
    absmax: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    blocksize: int | None = None,
    quant_type: str = "nf4",
    *,
    bnb_cpu_compatible: bool = False,
    threads: int | None = None,
    name: str = "A",
) -> torch.Tensor:
    """``table[code] * absmax[block]`` (float32) reshaped to ``quant_state.shape`` and cast to its dtype.

    ``bnb_cpu_compatible=True`` returns what bnb 0.50.2 returns on this CPU: on an AVX-512 CPU its native
    kernel indexes blocks as ``row * (K // blocksize) + col // blocksize`` (K = shape[-1]), which is wrong
    when blocks straddle rows (see ``bnb_dequant4bit_is_misindexed``); elsewhere bnb is correct. The default
    follows the definition for every shape and CPU.
    """
    if quant_state is None:
        if absmax is None or out is None:
            raise ConfigError("dequantize_4bit needs quant_state, or both absmax and out")
        quant_state = QuantState(
            absmax=absmax, shape=out.shape, dtype=out.dtype, blocksize=blocksize or 64, quant_type=quant_type
        )
    n = check_state_matches(A, quant_state, name)
    am = recover_absmax(quant_state).contiguous()
    table = code_table_np(quant_state.quant_type)
    flat = np.empty(n, dtype=np.float32)
    pk = packed_bytes(A)
    shape = tuple(quant_state.shape)
    bs = quant_state.blocksize
    if bnb_cpu_compatible and bnb_dequant4bit_is_misindexed(shape, bs, quant_state.dtype):
        k_dim = shape[-1]
        e = np.arange(n, dtype=np.int64)
        codes = np.where(e % 2 == 0, pk[e >> 1] >> 4, pk[e >> 1] & 15)
        blk = (e // k_dim) * (k_dim // bs) + (e % k_dim) // bs
        amn = am.numpy()
        blk = np.minimum(blk, amn.shape[0] - 1)
        flat[:] = table[codes] * amn[blk]
    else:
        n_blocks = -(-n // bs)
        run_ranges(bnb4.dequantize_4bit, n_blocks, threads, pk, am.numpy(), table, bs, n, flat, min_chunk=256)
    result = torch.from_numpy(flat).reshape(shape).to(quant_state.dtype)
    if out is not None:
        return out.copy_(result)
    return result


def bnb_dequant4bit_is_misindexed(
    shape: tuple[int, ...], blocksize: int, dtype: torch.dtype, avx512: bool | None = None
) -> bool:
    """True where bnb 0.50.2's native CPU dequantize_4bit returns wrong values.

    That path runs on AVX-512 CPUs when ``shape[-1] % 16 == 0``, blocksize < 2048 and dtype is fp32/fp16/bf16;
    it is wrong when ``shape[-1] % blocksize != 0``. ``avx512=None`` asks torch about this CPU.
    """
    if avx512 is None:
        avx512 = torch.backends.cpu.get_cpu_capability() == "AVX512"
    if not avx512 or len(shape) == 0:
        return False
    k = shape[-1]
    return (
        k % 16 == 0
        and blocksize < 2048
        and dtype in (torch.float32, torch.float16, torch.bfloat16)
        and k % blocksize != 0
    )


def dequantize_nf4(A: torch.Tensor, quant_state: QuantState, **kw) -> torch.Tensor:
    return dequantize_4bit(A, quant_state, quant_type="nf4", **kw)


def dequantize_fp4(A: torch.Tensor, quant_state: QuantState, **kw) -> torch.Tensor:
    return dequantize_4bit(A, quant_state, quant_type="fp4", **kw)
