"""The ggml block codecs: one registry entry per type, and the public ``quantize`` / ``dequantize``.

A codec is a pair of numba row kernels (``edgequant.kernels.*``) plus the block geometry. The registry names
them through ``KernelRef``s, so looking a codec up imports no kernel module (and so not numba):

* ``quantize_rows(x, qw, out)``: ``x`` float32 (rows, n_per_row) C-contiguous, ``qw`` float32 of length
  n_per_row (importance vector) or length 0 (none), ``out`` uint8 (rows, row_bytes) to fill.
* ``dequantize_rows(data, out)``: ``data`` uint8 (rows, row_bytes), ``out`` float32 (rows, n_per_row).

Kernels release the GIL, so ``threads=N`` splits the rows into N contiguous chunks run on a thread pool
(``kernels.parallel.run_ranges``). Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 without an importance vector run ggml's
``quantize_row_*_ref`` in C when ``kernels.legacy_native`` could build it (same bytes; it spares a
whole-file quantization the start-up of numba), their numba kernels otherwise.
Every path is per row or per block, so the bytes do not depend on the thread count (as in ggml).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from edgequant.errors import ConfigError, NonFiniteError, ShapeError, UnsupportedTypeError
from edgequant.kernels import legacy_native
from edgequant.kernels.parallel import run_ranges

Kernel = Callable[..., None]


class KernelRef:
    """A row kernel named by module and attribute, imported on its first call.

    Importing numba costs about 0.2 CPU-s and the kernel modules more; a whole-file quantization to a legacy
    ftype runs only the C kernels of ``kernels.legacy_native`` and the float copies, so it never pays that.
    Behaves as the kernel itself when called (``resolve()`` returns the kernel)."""

    __slots__ = ("_fn", "module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name, self._fn = module, name, None

    def resolve(self) -> Kernel:
        if self._fn is None:
            import importlib

            self._fn = getattr(importlib.import_module(self.module), self.name)
        return self._fn

    def __call__(self, *args) -> None:
        return self.resolve()(*args)

    def __repr__(self) -> str:
        return f"KernelRef({self.module}.{self.name})"


@dataclass(frozen=True)
class Codec:
    """One ggml tensor type: its GGUF id, block geometry and kernels."""

    name: str
    type_id: int
    block_size: int
    type_size: int
    quantize_rows: Kernel | None
    dequantize_rows: Kernel
    uses_imatrix: bool
    in_files: bool = True  # False for Q8_1/Q8_K: matmul intermediates, never stored in model files
    fp16_scale_fields: tuple[int, ...] = ()  # byte offsets of fp16 scales within a block (for validation)

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size

    def row_bytes(self, n_per_row: int) -> int:
        return (n_per_row // self.block_size) * self.type_size


_REGISTRY: dict[str, Codec] = {}
CODECS = MappingProxyType(_REGISTRY)


def register_codec(codec: Codec) -> Codec:
    if codec.name in _REGISTRY:
        raise RuntimeError(f"codec {codec.name} registered twice")
    _REGISTRY[codec.name] = codec
    return codec


def get_codec(qtype: str | int) -> Codec:
    """Look a codec up by name (case-insensitive, e.g. ``"q4_k"``) or by ggml type id."""
    _ensure_registered()
    if isinstance(qtype, (int, np.integer)):
        for codec in _REGISTRY.values():
            if codec.type_id == int(qtype):
                return codec
        raise UnsupportedTypeError(f"ggml type id {int(qtype)} is not supported; supported: {_names()}")
    key = str(qtype).strip().upper()
    if key in _REGISTRY:
        return _REGISTRY[key]
    hint = ""
    if key.endswith(("_M", "_S", "_L")) and key[:-2] in _REGISTRY:
        hint = f" ('{qtype}' is a file mixture (ftype); the tensor type is '{key[:-2]}')"
    raise UnsupportedTypeError(f"unknown quantization type '{qtype}'{hint}; supported: {_names()}")


def _names() -> str:
    return ", ".join(_REGISTRY)


def codec_names() -> tuple[str, ...]:
    """Every implemented ggml type, in registration order (F32, F16, BF16, Q4_0 ... IQ4_XS)."""
    _ensure_registered()
    return tuple(_REGISTRY)


def _ensure_registered() -> None:
    if not _REGISTRY:
        from edgequant.gguf import registry  # noqa: F401  (registers every codec on import)


def resolve_threads(threads: int | None) -> int:
    if threads is None:
        return 1
    if not isinstance(threads, (int, np.integer)) or threads < 0:
        raise ConfigError(f"threads must be a non-negative integer (0 = all cores), got {threads!r}")
    return int(threads) or (os.cpu_count() or 1)


def first_nonfinite(x: np.ndarray) -> int:
    """Flat index of the first NaN/Inf of a C-contiguous float32 array, or -1 (C when built, else numba)."""
    if legacy_native.available():
        return legacy_native.first_nonfinite(x)
    from edgequant.kernels.floats import first_nonfinite as scan

    return int(scan(x))


def check_finite_rows(x: np.ndarray, what: str = "input") -> None:
    """Raise NonFiniteError naming the first row holding NaN/Inf."""
    _refuse_nonfinite(x, first_nonfinite(x), what)


def _refuse_nonfinite(x: np.ndarray, i: int, what: str = "input") -> None:
    if i >= 0:
        row, col = divmod(int(i), x.shape[-1])
        value = x.reshape(-1)[i]
        raise NonFiniteError(f"{what}: row {row} holds a non-finite value ({value}) at column {col}")


def quantize(
    x: np.ndarray,
    qtype: str,
    imatrix: np.ndarray | None = None,
    *,
    threads: int | None = None,
    check_finite: bool = True,
    warn_overflow: bool = True,
) -> np.ndarray:
    """Quantize float32 rows to ggml blocks, byte-identical to llama.cpp's ``ggml_quantize_chunk``.

    ``x``: float32 array (rows, n_per_row); n_per_row must be a multiple of the type's block size.
    ``imatrix``: None or float32 of length n_per_row (llama-imatrix's per-column mean of squared
    activations), shared by all rows; types that ignore it (Q8_0, F16, BF16, F32) ignore it here too.
    Returns uint8 of shape (rows, row_bytes). Warns (``RuntimeWarning``) when a block's fp16 scale
    overflows to inf/NaN, which llama.cpp writes the same way and then rejects at validation, unless
    ``warn_overflow`` is False (a caller that checks ``nonfinite_scale_rows`` itself: one pass, not two).
    """
    codec = get_codec(qtype)
    if codec.quantize_rows is None:
        raise UnsupportedTypeError(
            f"{codec.name} has no quantizer in ggml_quantize_chunk (activation-only type)"
        )
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ShapeError(f"quantize expects a 2-D array (rows, n_per_row), got shape {x.shape}")
    rows, n = x.shape
    if n % codec.block_size:
        raise ShapeError(f"{codec.name} needs a row length that is a multiple of {codec.block_size}, got {n}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    native = (
        codec.name in legacy_native.TYPES
        and (imatrix is None or not codec.uses_imatrix)
        and legacy_native.available()
    )
    if check_finite and not native:
        check_finite_rows(x)
    out = np.empty((rows, codec.row_bytes(n)), np.uint8)
    if native:  # the C kernels find the first NaN/Inf in the pass they make anyway
        bad = _quantize_native(codec.name, x, out, resolve_threads(threads))
        if check_finite:
            _refuse_nonfinite(x, bad)
    else:
        qw = _imatrix_vector(imatrix, n) if codec.uses_imatrix else np.zeros(0, np.float32)
        kernel = codec.quantize_rows
        run_ranges(lambda a, b: kernel(x[a:b], qw, out[a:b]), rows, resolve_threads(threads))
    if codec.fp16_scale_fields and warn_overflow:
        warn_nonfinite_scales(out, codec)
    return out


def _quantize_native(name: str, x: np.ndarray, out: np.ndarray, threads: int) -> int:
    """``legacy_native.quantize_rows`` over row ranges on ``threads`` threads; the flat index of the first
    NaN/Inf of ``x``, or -1."""
    n = x.shape[1]
    bad: list[int] = []

    def run(a: int, b: int) -> None:
        i = legacy_native.quantize_rows(name, x[a:b], out[a:b])
        if i >= 0:
            bad.append(a * n + i)

    run_ranges(run, x.shape[0], threads)
    return min(bad, default=-1)


def _imatrix_vector(imatrix: np.ndarray | None, n: int) -> np.ndarray:
    if imatrix is None:
        return np.zeros(0, np.float32)
    qw = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1)
    if qw.size != n:
        raise ShapeError(f"imatrix has {qw.size} values but the rows have {n} columns; they must match")
    if not np.isfinite(qw).all():
        raise NonFiniteError(
            f"imatrix holds a non-finite value at column {int(np.flatnonzero(~np.isfinite(qw))[0])}"
        )
    return qw


def nonfinite_scale_rows(out: np.ndarray, codec: Codec) -> np.ndarray:
    """Indices of rows whose fp16 scale fields decode to inf/NaN (what ``ggml_validate_row_data`` rejects):
    the high byte of the field has all five exponent bits set (``& 0x7C == 0x7C``). numpy on strided views
    (no numba: whole-file quantization to a legacy type runs without starting it)."""
    out = np.ascontiguousarray(out)
    rows = out.shape[0] if out.ndim > 1 else 1
    blocks = out.reshape(rows, -1, codec.type_size)
    bad = np.zeros(rows, np.bool_)
    for f in codec.fp16_scale_fields:
        bad |= ((blocks[:, :, f + 1] & 0x7C) == 0x7C).any(axis=1)
    return np.flatnonzero(bad)


def warn_nonfinite_scales(out: np.ndarray, codec: Codec) -> None:
    bad = nonfinite_scale_rows(out, codec)
    if bad.size:
        warnings.warn(
            f"{codec.name}: {bad.size} row(s) (first: row {bad[0]}) have an fp16 scale that overflowed to "
            "inf/NaN; ggml produces the same bytes and llama.cpp rejects them at validation. "
            "Values this large need F32/F16/BF16 or Q8_0.",
            RuntimeWarning,
            stacklevel=3,
        )


def dequantize(
    data: np.ndarray, qtype: str, shape: tuple[int, ...], *, threads: int | None = None
) -> np.ndarray:
    """Decode ggml blocks to float32 of ``shape`` (last dimension = n_per_row), bit-exact with ggml's
    to_float."""
    codec = get_codec(qtype)
    shape = tuple(int(s) for s in shape)
    if not shape or shape[-1] % codec.block_size:
        raise ShapeError(
            f"{codec.name}: shape {shape} has a last dimension that is not a multiple of {codec.block_size}"
        )
    n = shape[-1]
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    raw = np.asarray(data)
    if raw.dtype != np.uint8:
        raw = raw.view(np.uint8)
    expect = rows * codec.row_bytes(n)
    if raw.size != expect:
        raise ShapeError(f"{codec.name}: {raw.size} bytes given, shape {shape} needs {expect}")
    raw = np.ascontiguousarray(raw).reshape(rows, codec.row_bytes(n))
    out = np.empty((rows, n), np.float32)
    kernel = codec.dequantize_rows
    run_ranges(lambda a, b: kernel(raw[a:b], out[a:b]), rows, resolve_threads(threads))
    return out.reshape(shape)
