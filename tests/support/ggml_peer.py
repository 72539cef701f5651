"""llama.cpp (ggml) as a bit-exact reference peer, through the shared libraries of ``llama-cpp-python``.

This module is for tests, golden-fixture generation and benchmarks. It never runs in the
quantization path of edgequant itself, and it imports cleanly without llama-cpp-python
(``available()`` is then False and every other function raises ``RuntimeError``).

What it wraps (all via ``ctypes``, declarations of llama.cpp's public C API only):

* ``ggml_quantize(x, type_name, imatrix)``: ``ggml_quantize_chunk`` in ``libggml-base``, the function
  ``llama-quantize`` calls per tensor chunk. Q8_1 and Q8_K (matmul intermediates that
  ``ggml_quantize_chunk`` rejects) go through ``type_traits->from_float_ref`` and the exported
  ``quantize_row_q8_K_ref``.
* ``ggml_dequantize(data, type_name, shape)``: ``type_traits->to_float`` (Q8_K: ``dequantize_row_q8_K``;
  F32: a copy; Q8_1, which has no ``to_float`` in ggml: ``d * q`` in numpy float32).
* ``validate_row_data(type_name, data)``: ``ggml_validate_row_data`` (its stderr is captured).
* whole files through ``llama_model_quantize``: :mod:`tests.support.llama_peer`.
* ``bench_ggml(type_name, x)``: best-of-N wall time of one single-threaded ``ggml_quantize_chunk`` call.

The library directory is ``<site-packages>/llama_cpp/lib`` (found with ``importlib.util.find_spec``,
without importing ``llama_cpp``), or ``$EDGEQUANT_GGML_LIB_DIR`` when set.

ggml aborts the process on a failed ``GGML_ASSERT``; every entry point here checks the arguments
first (row length vs. block size, imatrix length, types that require an imatrix, unsupported types)
and raises ``ValueError`` instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "GGML_LOG_LEVELS",
    "GgmlType",
    "available",
    "bench_ggml",
    "ggml_dequantize",
    "ggml_quantize",
    "ggml_type",
    "ggml_types",
    "lib_dir",
    "requires_imatrix",
    "validate_row_data",
]

#: ggml's current ``enum ggml_log_level`` (llama-cpp-python 0.3.36's own ``_logger.py`` still uses the
#: old numbering INFO=1 WARN=2 ERROR=3 DEBUG=4, so its filter shows WARN lines and hides ERROR lines).
GGML_LOG_LEVELS = {0: "NONE", 1: "DEBUG", 2: "INFO", 3: "WARN", 4: "ERROR", 5: "CONT"}

_BASE_NAMES = ("libggml-base.so.0", "libggml-base.so", "libggml-base.dylib", "ggml-base.dll")

# Types whose quantizer is not ggml_quantize_chunk (it asserts on them).
_ACTIVATION_TYPES = ("Q8_1", "Q8_K")

_to_float_t = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
_from_float_t = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


class _TypeTraits(ctypes.Structure):
    # struct ggml_type_traits (ggml.h)
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


@dataclass(frozen=True)
class GgmlType:
    """One ggml tensor type as this library build reports it (``ggml_get_type_traits``)."""

    name: str  # upper case, as gguf-py spells it ("Q4_K", "IQ4_XS", "BF16")
    type_id: int
    block_size: int
    type_size: int
    is_quantized: bool
    to_float: int | None  # C function pointer address
    from_float_ref: int | None

    def row_bytes(self, n_per_row: int) -> int:
        """Bytes of one row of ``n_per_row`` values."""
        return (n_per_row // self.block_size) * self.type_size


# ---------------------------------------------------------------------------------------------
# library loading


def lib_dir() -> Path | None:
    """Directory holding llama-cpp-python's shared libraries (``libggml-base.so`` ...), or None.

    ``$EDGEQUANT_GGML_LIB_DIR`` overrides the lookup. ``llama_cpp`` is located, not imported.
    """
    env = os.environ.get("EDGEQUANT_GGML_LIB_DIR")
    if env:
        p = Path(env)
        return p if p.is_dir() else None
    try:
        spec = importlib.util.find_spec("llama_cpp")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "lib"
        if p.is_dir():
            return p
    return None


_lock = threading.RLock()
_state: dict[str, object] = {}


def _base_lib() -> ctypes.CDLL | None:
    """Load libggml-base once (None if it cannot be found or loaded)."""
    with _lock:
        if "base" in _state:
            return _state["base"]  # type: ignore[return-value]
        lib = None
        d = lib_dir()
        if d is not None:
            for name in _BASE_NAMES:
                path = d / name
                if path.exists():
                    try:
                        lib = ctypes.CDLL(str(path))
                    except OSError:
                        lib = None
                    if lib is not None:
                        break
        if lib is not None:
            _declare(lib)
        _state["base"] = lib
        return lib


def _declare(lib: ctypes.CDLL) -> None:
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    lib.ggml_quantize_init.restype = None
    for fn in ("quantize_row_q8_K_ref", "dequantize_row_q8_K"):
        if hasattr(lib, fn):
            getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
            getattr(lib, fn).restype = None
    if hasattr(lib, "ggml_validate_row_data"):
        lib.ggml_validate_row_data.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
        lib.ggml_validate_row_data.restype = ctypes.c_bool


def _require() -> ctypes.CDLL:
    lib = _base_lib()
    if lib is None:
        raise RuntimeError(
            "llama.cpp peer unavailable: llama-cpp-python (with its bundled libggml-base) is not installed; "
            "see shared/reference/llamacpp.md for the install command"
        )
    return lib


def available() -> bool:
    """True when llama-cpp-python is installed and its ``libggml-base`` can be loaded."""
    try:
        return importlib.util.find_spec("llama_cpp") is not None and _base_lib() is not None
    except Exception:  # pragma: no cover - defensive: a broken install counts as absent
        return False


def ggml_types() -> dict[str, GgmlType]:
    """Every live (non-deprecated) ggml type of the loaded library, by upper-case name."""
    with _lock:
        if "types" in _state:
            return _state["types"]  # type: ignore[return-value]
        lib = _require()
        types: dict[str, GgmlType] = {}
        # Reading traits past GGML_TYPE_COUNT would read out of bounds, and the count is not exported:
        # walk the ids gguf-py knows (all of edgequant's types) and read each one's traits.
        import gguf

        ids = sorted({int(t) for t in gguf.GGMLQuantizationType})
        for tid in ids:
            tr = lib.ggml_get_type_traits(tid).contents
            raw = tr.type_name.decode() if tr.type_name else ""
            if not raw or raw == "DEPRECATED" or tr.blck_size <= 0:
                continue
            name = raw.upper()
            types[name] = GgmlType(
                name,
                tid,
                int(tr.blck_size),
                int(tr.type_size),
                bool(tr.is_quantized),
                tr.to_float or None,
                tr.from_float_ref or None,
            )
        _state["types"] = types
        return types


def ggml_type(type_name: str | int) -> GgmlType:
    """Look up a ggml type by name (case-insensitive) or id; ``ValueError`` if unknown."""
    types = ggml_types()
    if isinstance(type_name, (int, np.integer)):
        for t in types.values():
            if t.type_id == int(type_name):
                return t
        raise ValueError(f"unknown ggml type id {int(type_name)}")
    key = str(type_name).strip().upper()
    if key not in types:
        raise ValueError(f"unknown ggml type '{type_name}'; this libggml-base knows: {', '.join(types)}")
    return types[key]


def requires_imatrix(type_name: str) -> bool:
    """``ggml_quantize_requires_imatrix`` (IQ2_XXS, IQ2_XS, IQ1_S in this llama.cpp)."""
    return bool(_require().ggml_quantize_requires_imatrix(ggml_type(type_name).type_id))


# ---------------------------------------------------------------------------------------------
# codecs


def _as_rows(x: np.ndarray, t: GgmlType) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D float32 array (rows, n_per_row), got shape {x.shape}")
    if x.shape[1] % t.block_size:
        raise ValueError(
            f"{t.name}: row length {x.shape[1]} is not a multiple of the block size {t.block_size}"
        )
    return np.ascontiguousarray(x, dtype=np.float32)


def _imatrix_arg(imatrix: np.ndarray | None, n: int) -> np.ndarray | None:
    if imatrix is None:
        return None
    qw = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1)
    if qw.size != n:
        raise ValueError(f"imatrix has {qw.size} values, rows have {n}")
    return qw


def _ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


def ggml_quantize(
    x: np.ndarray, type_name: str, imatrix: np.ndarray | None = None, *, threads: int = 1
) -> np.ndarray:
    """Quantize float32 rows with llama.cpp; returns uint8 ``(rows, row_bytes)``.

    ``x``: float32 (rows, n_per_row), n_per_row a multiple of the block size (1-D is one row).
    ``imatrix``: float32 of length n_per_row shared by all rows, or None. Types that require one
    (``requires_imatrix``) raise ``ValueError`` without it, instead of aborting the process.
    ``threads`` > 1 splits the rows into contiguous chunks, each one ``ggml_quantize_chunk`` call on its
    own thread (as ``llama_model_quantize`` does; the bytes do not depend on it).
    Q8_1 / Q8_K use ``from_float_ref`` / ``quantize_row_q8_K_ref`` and ignore the imatrix.
    """
    lib = _require()
    t = ggml_type(type_name)
    x = _as_rows(x, t)
    rows, n = x.shape
    out = np.zeros((rows, t.row_bytes(n)), np.uint8)
    if rows == 0 or n == 0:
        return out
    if t.name in _ACTIVATION_TYPES:
        if t.name == "Q8_K":
            fn = lib.quantize_row_q8_K_ref
        else:
            if not t.from_float_ref:
                raise ValueError(f"{t.name}: ggml has no from_float_ref")
            fn = _from_float_t(t.from_float_ref)
        fn(x.ctypes.data, out.ctypes.data, x.size)
        return out
    if t.name != "F32" and not t.is_quantized and t.name not in ("F16", "BF16"):
        raise ValueError(f"{t.name} is not handled by ggml_quantize_chunk")
    qw = _imatrix_arg(imatrix, n)
    if qw is None and lib.ggml_quantize_requires_imatrix(t.type_id):
        raise ValueError(f"{t.name} requires an importance matrix (ggml would abort without one)")
    lib.ggml_quantize_init(t.type_id)  # thread-safe, no-op once done; done here so chunks don't race it
    threads = max(1, min(int(threads), rows))

    def chunk(a: int, b: int) -> None:
        got = lib.ggml_quantize_chunk(t.type_id, x.ctypes.data, out.ctypes.data, a * n, b - a, n, _ptr(qw))
        if got != (b - a) * out.shape[1]:  # pragma: no cover - ggml asserts this itself
            raise RuntimeError(f"ggml_quantize_chunk returned {got} bytes, expected {(b - a) * out.shape[1]}")

    if threads == 1:
        chunk(0, rows)
    else:
        bounds = [rows * i // threads for i in range(threads + 1)]
        with ThreadPoolExecutor(threads) as pool:
            for f in [pool.submit(chunk, bounds[i], bounds[i + 1]) for i in range(threads)]:
                f.result()
    return out


def ggml_dequantize(data: np.ndarray, type_name: str, shape: Sequence[int]) -> np.ndarray:
    """Decode ggml blocks with llama.cpp's ``to_float``; returns float32 of ``shape``.

    ``data``: the raw bytes (any array viewable as uint8) of ``prod(shape)`` values, last dim = row.
    """
    lib = _require()
    t = ggml_type(type_name)
    shape = tuple(int(s) for s in shape)
    n = shape[-1]
    if n % t.block_size:
        raise ValueError(f"{t.name}: row length {n} is not a multiple of the block size {t.block_size}")
    count = int(np.prod(shape, dtype=np.int64))
    raw = np.ascontiguousarray(np.asarray(data)).view(np.uint8).reshape(-1)
    need = count // t.block_size * t.type_size
    if raw.size != need:
        raise ValueError(f"{t.name}: {raw.size} bytes given, shape {shape} needs {need}")
    out = np.empty(count, np.float32)
    if count == 0:
        return out.reshape(shape)
    if t.name == "F32":
        out[:] = raw.view(np.float32)
    elif t.name == "Q8_K":
        lib.dequantize_row_q8_K(raw.ctypes.data, out.ctypes.data, count)
    elif t.name == "Q8_1":
        # block_q8_1 { ggml_half d; ggml_half s; int8_t qs[32]; } -- ggml has no to_float for it.
        blocks = raw.reshape(-1, t.type_size)
        d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
        q = blocks[:, 4:].view(np.int8).astype(np.float32)
        with np.errstate(invalid="ignore"):  # inf * 0 -> NaN, as C computes it
            out[:] = (d * q).reshape(-1)
    else:
        if not t.to_float:
            raise ValueError(f"{t.name}: ggml has no to_float")
        _to_float_t(t.to_float)(raw.ctypes.data, out.ctypes.data, count)
    return out.reshape(shape)


@contextlib.contextmanager
def _capture_fd2(sink: list[str] | None) -> Iterator[None]:
    """Redirect the process's stderr (fd 2) to a temp file for the duration; append the text to ``sink``."""
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if sink is not None:
                tmp.seek(0)
                sink.append(tmp.read().decode(errors="replace"))


def validate_row_data(type_name: str, data: np.ndarray, messages: list[str] | None = None) -> bool | None:
    """``ggml_validate_row_data`` on raw bytes: False when a scale/value is NaN/Inf (what llama.cpp rejects).

    Returns None for types ggml does not validate (Q8_1: "invalid type") or when the symbol is not
    exported. ggml's message (printed to stderr) is captured and appended to ``messages`` if given.
    """
    lib = _require()
    t = ggml_type(type_name)
    if not hasattr(lib, "ggml_validate_row_data") or t.name == "Q8_1":
        return None
    raw = np.ascontiguousarray(np.asarray(data)).view(np.uint8).reshape(-1)
    with _lock, _capture_fd2(messages):
        ok = lib.ggml_validate_row_data(t.type_id, raw.ctypes.data, raw.size)
    return bool(ok)


def bench_ggml(type_name: str, x: np.ndarray, imatrix: np.ndarray | None = None, repeats: int = 3) -> float:
    """Best-of-``repeats`` seconds of one single-threaded llama.cpp quantization of all of ``x``.

    One untimed warm-up call first (``ggml_quantize_init`` tables, page faults of the output).
    """
    lib = _require()
    t = ggml_type(type_name)
    x = _as_rows(x, t)
    rows, n = x.shape
    qw = _imatrix_arg(imatrix, n)
    out = np.zeros((rows, t.row_bytes(n)), np.uint8)
    if t.name in _ACTIVATION_TYPES:
        fn = lib.quantize_row_q8_K_ref if t.name == "Q8_K" else _from_float_t(t.from_float_ref)

        def call() -> None:
            fn(x.ctypes.data, out.ctypes.data, x.size)
    else:
        if qw is None and lib.ggml_quantize_requires_imatrix(t.type_id):
            raise ValueError(f"{t.name} requires an importance matrix")

        def call() -> None:
            lib.ggml_quantize_chunk(t.type_id, x.ctypes.data, out.ctypes.data, 0, rows, n, _ptr(qw))

    call()
    best = float("inf")
    for _ in range(max(1, int(repeats))):
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
    return best
