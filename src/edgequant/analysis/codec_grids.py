"""Every codec's reconstruction levels as one affine model, for the error decomposition (``decompose``).

A codec cuts the flattened tensor into groups of ``group_len`` consecutive elements (the last may be short)
that share a scale; element ``e`` of group ``g`` can only be reconstructed as one of the K levels

    y_k = o_g + a_g * c_k,    k = 0..K-1,

with ``c`` the codec's sorted codebook, ``a_g`` its step and ``o_g`` its offset. ``AffineGrid`` holds
``c``, ``a``, ``o`` and the codec's own reconstruction ``dequantize(quantize(W))``. The families:

* **ggml types** (``edgequant.gguf.codecs``; ggml rows are the last dimension): groups are the blocks of the
  legacy types and IQ4_NL (32) and the sub-blocks of the K-quants (16 for Q2_K, Q3_K, Q6_K; 32 for Q4_K,
  Q5_K, IQ4_XS; 256 for Q8_K), whose step is ``d * sc_j``. ``a`` and ``o`` are read off ggml's own decoder:
  the quantized bytes are decoded again with every code of every block set to one code (the scale fields
  untouched), which gives each group's level for that code exactly as ggml decodes it. Symmetric types
  (Q4_0, Q5_0, Q8_0, Q8_1, Q8_K, Q3_K, Q6_K, IQ4_NL, IQ4_XS; c = the signed integer codes or IQ4's
  ``kvalues``) have ``o = 0`` and ``a = y(c_0) / c_0`` (c_0 = -8, -16, -128, -4, -32, -127: the product is
  exact in float32, so ``a`` is ggml's ``d`` or ``d*sc`` exactly); the types with a minimum (Q4_1, Q5_1,
  Q2_K, Q4_K, Q5_K; c = 0..2^b-1) have ``o = y(0)`` (``m`` or ``-dmin*mn``, exact) and
  ``a = (y(c_max) - o) / c_max``. The model is evaluated in float64; ggml's float32 levels differ from it by
  at most one float32 rounding (``tests/unit/analysis/test_decompose.py`` checks the codec's output lies on
  the model's levels).
* **bitsandbytes** NF4/FP4 (``bnb.quantize_4bit``) and blockwise 8-bit (``bnb.quantize_blockwise``, the
  signed dynamic map): groups are the blocks of ``blocksize`` over the row-major flattened tensor,
  ``o = 0``, ``a`` = the block's absmax (recovered from the double-quantized state when ``nested``),
  ``c`` = the sorted distinct values of the code table (FP4's two zeros count once).
* **uniform b-bit** (``Uniform``), in float64, over the tensor viewed as ``[rows, -1]`` (dim 0 = output
  channel): one group (``"tensor"``), one per row (``"channel"``) or runs of ``group_size`` along a row
  (``"group"``). Symmetric (the book's ``clip(round(x*127/alpha), -128, 127)`` for b = 8):
  ``s = max|w|/(2^(b-1)-1)``, ``q = clip(round(w/s), -2^(b-1), 2^(b-1)-1)``, ``y = s*q``; c = the codes,
  ``o = 0``, ``a = s``. Asymmetric: ``s = (max w - min w)/(2^b-1)``, ``z = round(-min w / s)``,
  ``q = clip(round(w/s) + z, 0, 2^b-1)``, ``y = s*(q - z)`` (computed as ``o + s*q``); c = 0..2^b-1,
  ``o = -s*z``, ``a = s``.
  ``round`` is half to even. A constant group has ``s = 0`` and reconstructs as its value (asymmetric,
  ``o`` = that value) or as 0 (symmetric: a group of zeros).
* F32, F16, BF16 have no scale: ``grid`` is None (their error is float rounding only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from edgequant.bnb.blockwise import dequantize_blockwise, quantize_blockwise, recover_absmax
from edgequant.bnb.checks import check_blocksize
from edgequant.bnb.codes import code_table_np, dynamic_map_np
from edgequant.bnb.fourbit import dequantize_4bit, quantize_4bit
from edgequant.errors import ConfigError, ShapeError
from edgequant.gguf.codecs import dequantize, get_codec, quantize

_IQ4_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
_FLOAT_TYPES = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class Uniform:
    """Uniform b-bit quantization in float64 (definitions in the module docstring)."""

    bits: int = 4
    symmetric: bool = True
    granularity: str = "channel"  # "tensor" | "channel" | "group"
    group_size: int = 128

    @property
    def name(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        gran = f"group{self.group_size}" if self.granularity == "group" else self.granularity
        return f"uniform{self.bits}-{kind}-{gran}"


@dataclass(frozen=True)
class Blockwise:
    """bitsandbytes blockwise quantization: ``kind`` "nf4", "fp4" or "int8" (signed dynamic map).

    ``blocksize`` None means bnb's default: 64 for NF4/FP4, 4096 for int8. ``nested``: double quantization
    of the absmax (``compress_statistics`` / ``nested`` in bnb)."""

    kind: str = "nf4"
    blocksize: int | None = None
    nested: bool = False

    @property
    def block(self) -> int:
        return self.blocksize or (4096 if self.kind == "int8" else 64)

    @property
    def name(self) -> str:
        return f"{self.kind}-b{self.block}" + ("-nested" if self.nested else "")


CodecSpec = str | Uniform | Blockwise


@dataclass(frozen=True)
class AffineGrid:
    """Levels ``offset[g] + scale[g] * codebook[k]`` of group ``g = e // group_len`` (module docstring)."""

    codebook: np.ndarray  # float64 [K], ascending, distinct
    scale: np.ndarray  # float64 [G]: a_g
    offset: np.ndarray  # float64 [G]: o_g
    group_len: int

    def per_element(self, values: np.ndarray, n: int) -> np.ndarray:
        """A per-group array repeated over the ``n`` flattened elements."""
        return np.repeat(values, self.group_len)[:n]


def as_float32(w: np.ndarray | torch.Tensor) -> np.ndarray:
    """A C-contiguous float32 numpy copy of ``w`` (torch tensors are detached and moved to the CPU)."""
    if isinstance(w, torch.Tensor):
        w = w.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(np.asarray(w, dtype=np.float32))


def resolve(codec: CodecSpec) -> Uniform | Blockwise | str:
    """``"nf4"``, ``"fp4"``, ``"int8"`` -> ``Blockwise``; any other string -> the ggml type's name."""
    if isinstance(codec, (Uniform, Blockwise)):
        if isinstance(codec, Blockwise) and codec.kind not in ("nf4", "fp4", "int8"):
            raise ConfigError(f"Blockwise kind {codec.kind!r} is unknown; use 'nf4', 'fp4' or 'int8'")
        return codec
    if isinstance(codec, str) and codec.strip().lower() in ("nf4", "fp4", "int8"):
        return Blockwise(codec.strip().lower())
    if not isinstance(codec, str):
        raise ConfigError(
            f"codec must be a ggml type name, 'nf4'/'fp4'/'int8', Uniform or Blockwise; got {codec!r}"
        )
    return get_codec(codec).name


def codec_name(codec: CodecSpec) -> str:
    c = resolve(codec)
    return c if isinstance(c, str) else c.name


def codec_grid(
    w: np.ndarray | torch.Tensor, codec: CodecSpec, imatrix: np.ndarray | None = None
) -> tuple[np.ndarray, AffineGrid | None]:
    """(the codec's reconstruction of float32(w), flattened float64; its ``AffineGrid`` or None)."""
    c = resolve(codec)
    x = as_float32(w)
    if isinstance(c, Uniform):
        return _uniform(x, c)
    if isinstance(c, Blockwise):
        return _bnb(x, c)
    return _ggml(x, c, imatrix)


def reconstruct(
    w: np.ndarray | torch.Tensor, codec: CodecSpec, imatrix: np.ndarray | None = None
) -> np.ndarray | torch.Tensor:
    """``dequantize(quantize(w))`` under ``codec``, with w's shape; a torch tensor in gives one out (w's dtype
    and device), anything else a float32 numpy array."""
    recon, _ = codec_grid(w, codec, imatrix)
    shape = tuple(w.shape)
    if isinstance(w, torch.Tensor):
        return torch.from_numpy(recon.reshape(shape)).to(device=w.device, dtype=w.dtype)
    return recon.reshape(shape).astype(np.float32)


# --- ggml -------------------------------------------------------------------------------------------


def _nib(k: int) -> int:
    return (k & 15) * 0x11


def _plane2(k: int) -> int:
    return (k & 3) * 0x55


def _bit(k: int, bit: int) -> int:
    return 0xFF if k & bit else 0


@dataclass(frozen=True)
class _Layout:
    """Per type: group length, codebook (by code index k), symmetric, and the byte ranges of a block that
    hold codes with the byte each gets when every code of the block is k (layouts: kernels/legacy.py,
    kernels/kquants.py, kernels/kquants_low.py, kernels/iq4.py)."""

    group: int
    codebook: tuple[int, ...]
    symmetric: bool
    regions: tuple[tuple[int, int, Callable[[int], int]], ...]


def _ints(lo: int, hi: int) -> tuple[int, ...]:
    return tuple(range(lo, hi + 1))


_I8 = ((lambda k: (k - 128) & 0xFF),)
_LAYOUTS = {
    "Q4_0": _Layout(32, _ints(-8, 7), True, ((2, 18, _nib),)),
    "Q4_1": _Layout(32, _ints(0, 15), False, ((4, 20, _nib),)),
    "Q5_0": _Layout(32, _ints(-16, 15), True, ((2, 6, lambda k: _bit(k, 16)), (6, 22, _nib))),
    "Q5_1": _Layout(32, _ints(0, 31), False, ((4, 8, lambda k: _bit(k, 16)), (8, 24, _nib))),
    "Q8_0": _Layout(32, _ints(-128, 127), True, ((2, 34, _I8[0]),)),
    "Q8_1": _Layout(32, _ints(-128, 127), True, ((4, 36, _I8[0]),)),
    "Q2_K": _Layout(16, _ints(0, 3), False, ((16, 80, _plane2),)),
    "Q3_K": _Layout(16, _ints(-4, 3), True, ((0, 32, lambda k: _bit(k, 4)), (32, 96, _plane2))),
    "Q4_K": _Layout(32, _ints(0, 15), False, ((16, 144, _nib),)),
    "Q5_K": _Layout(32, _ints(0, 31), False, ((16, 48, lambda k: _bit(k, 16)), (48, 176, _nib))),
    "Q6_K": _Layout(16, _ints(-32, 31), True, ((0, 128, _nib), (128, 192, lambda k: (k >> 4) * 0x55))),
    "Q8_K": _Layout(256, _ints(-128, 127), True, ((4, 260, _I8[0]),)),
    "IQ4_NL": _Layout(32, _IQ4_VALUES, True, ((2, 18, _nib),)),
    "IQ4_XS": _Layout(32, _IQ4_VALUES, True, ((8, 136, _nib),)),
}


def _rows(x: np.ndarray) -> np.ndarray:
    if x.ndim == 0:
        raise ShapeError("a ggml type needs at least a 1-D tensor (rows along the last dimension)")
    return x.reshape(1, -1) if x.ndim == 1 else x.reshape(-1, x.shape[-1])


def _probe(raw: np.ndarray, name: str, layout: _Layout, k: int, shape: tuple[int, int]) -> np.ndarray:
    """Decode ``raw`` with every code set to index k: each element's level for code k (float64, flat)."""
    size = get_codec(name).type_size
    blocks = raw.reshape(raw.shape[0], -1, size).copy()
    for start, stop, byte in layout.regions:
        blocks[..., start:stop] = byte(k)
    return dequantize(blocks.reshape(raw.shape), name, shape).astype(np.float64).reshape(-1)


def _ggml(x: np.ndarray, name: str, imatrix: np.ndarray | None) -> tuple[np.ndarray, AffineGrid | None]:
    rows = _rows(x)
    raw = quantize(rows, name, imatrix)
    recon = dequantize(raw, name, rows.shape).astype(np.float64).reshape(-1)
    if name in _FLOAT_TYPES:
        return recon, None
    layout = _LAYOUTS.get(name)
    if layout is None:
        raise ConfigError(f"{name}: no error model for this ggml type; use one of {', '.join(_LAYOUTS)}")
    book = np.asarray(layout.codebook, np.float64)
    g = layout.group
    if layout.symmetric:
        offset = np.zeros(rows.size // g)
        scale = _probe(raw, name, layout, 0, rows.shape)[::g] / book[0]
    else:
        offset = _probe(raw, name, layout, 0, rows.shape)[::g]
        top = _probe(raw, name, layout, book.size - 1, rows.shape)[::g]
        scale = (top - offset) / book[-1]
    return recon, AffineGrid(book, scale, offset, g)


# --- bitsandbytes -----------------------------------------------------------------------------------


def _bnb(x: np.ndarray, spec: Blockwise) -> tuple[np.ndarray, AffineGrid]:
    bs = check_blocksize(spec.block, "Blockwise.blocksize")
    a = torch.from_numpy(x.reshape(-1).copy())
    if spec.kind == "int8":
        q, state = quantize_blockwise(a, blocksize=bs, nested=spec.nested)
        recon = dequantize_blockwise(q, state)
        table = dynamic_map_np(True)
    else:
        packed, state = quantize_4bit(a, blocksize=bs, compress_statistics=spec.nested, quant_type=spec.kind)
        recon = dequantize_4bit(packed, state)
        table = code_table_np(spec.kind)
    absmax = recover_absmax(state).numpy().astype(np.float64)
    book = np.unique(table.astype(np.float64))
    grid = AffineGrid(book, absmax, np.zeros_like(absmax), bs)
    return recon.numpy().astype(np.float64).reshape(-1), grid


# --- uniform ----------------------------------------------------------------------------------------


def _uniform_groups(x: np.ndarray, spec: Uniform) -> np.ndarray:
    """float64 view [G, group_len] of the tensor's groups."""
    w = x.astype(np.float64)
    if spec.granularity == "tensor":
        return w.reshape(1, -1)
    rows = w.reshape(w.shape[0], -1) if w.ndim > 1 else w.reshape(1, -1)
    if spec.granularity == "channel":
        return rows
    if spec.granularity != "group":
        raise ConfigError(
            f"Uniform granularity {spec.granularity!r} is unknown; use 'tensor', 'channel' or 'group'"
        )
    if spec.group_size < 1 or rows.shape[1] % spec.group_size:
        raise ShapeError(
            f"Uniform group_size {spec.group_size} does not divide the row length {rows.shape[1]}; "
            "pick a divisor or granularity='channel'"
        )
    return rows.reshape(-1, spec.group_size)


def _uniform(x: np.ndarray, spec: Uniform) -> tuple[np.ndarray, AffineGrid]:
    if (
        isinstance(spec.bits, bool)
        or not isinstance(spec.bits, int)
        or not (2 if spec.symmetric else 1) <= spec.bits <= 16
    ):
        raise ConfigError(f"Uniform bits={spec.bits!r} is out of range; use 2..16 (symmetric) or 1..16")
    if x.size == 0:
        raise ShapeError("cannot quantize an empty tensor")
    g = _uniform_groups(x, spec)
    if spec.symmetric:
        qmin, qmax = -(2 ** (spec.bits - 1)), 2 ** (spec.bits - 1) - 1
        s = np.abs(g).max(axis=1) / qmax
        z = np.zeros_like(s)
    else:
        qmin, qmax = 0, 2**spec.bits - 1
        lo, hi = g.min(axis=1), g.max(axis=1)
        s = (hi - lo) / qmax
        z = np.rint(np.divide(-lo, s, out=np.zeros_like(s), where=s > 0))
    # a constant group has s = 0: it reconstructs as its value (asymmetric) or as 0 (symmetric: all zeros)
    offset = -s * z if spec.symmetric else np.where(s > 0, -s * z, g[:, 0])
    safe = np.where(s > 0, s, 1.0)[:, None]
    q = np.where(s[:, None] > 0, np.clip(np.rint(g / safe) + z[:, None], qmin, qmax), 0.0)
    recon = offset[:, None] + s[:, None] * q  # = s*(q - z): the model's own arithmetic, so it is exact
    book = np.arange(qmin, qmax + 1, dtype=np.float64)
    return recon.reshape(-1), AffineGrid(book, s, offset, g.shape[1])
