"""Write GGUF files streaming (one tensor in memory at a time) and atomically (temp file renamed at the end).

Byte layout written (little-endian, version 3 unless asked otherwise; see ``edgequant.gguf.reader``)::

    b"GGUF" u32 version  u64 tensor_count  u64 kv_count
    kvs in the order added:      string key, u32 value_type, value (arrays: u32 element_type, u64 count, values)
    tensor infos in order added: string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset
    zeros up to a multiple of the alignment
    each tensor's bytes followed by zeros up to a multiple of the alignment

Offsets are those of llama.cpp (``gguf_add_tensor``/llama-quantize): tensor i starts at the sum of the previous
tensors' sizes each rounded up to the alignment (``general.alignment`` if the caller set it, else 32).

Use::

    check_writable(out_path)                      # before any expensive work
    with GGUFStreamWriter(out_path) as w:
        w.add_kv("general.architecture", GGUFValueType.STRING, "llama")
        w.add_tensor_info("token_embd.weight", (576, 49152), GGMLQuantizationType.Q8_0)
        w.write_header()
        w.write_tensor_data("token_embd.weight", data)  # bytes, any numpy array, or an iterable of chunks

The file appears at ``out_path`` only when the ``with`` block ends without an error; on any exception,
KeyboardInterrupt or SIGTERM the temporary file is removed and an existing target is left untouched.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import struct
import threading
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType

from edgequant.errors import ConfigError, OutputError, ShapeError
from edgequant.gguf.reader import INTEGER_TYPES, KV, MAX_DIMS, SCALAR_FORMATS, Array, TensorInfo, value_type

MAX_NAME_BYTES = 63  # llama.cpp refuses tensor names of GGML_MAX_NAME (64) bytes or more
_CHUNK = 16 << 20


def check_writable(path: str | os.PathLike[str]) -> None:
    """Raise ``OutputError`` naming ``path`` unless a file can be created in its directory and renamed onto it.

    Probes by creating and removing a hidden temporary file, so it is right even for root or read-only mounts.
    """
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        why = "is not a directory" if os.path.exists(parent) else "does not exist"
        raise OutputError(f"cannot write {path}: the directory {parent} {why}")
    if os.path.isdir(path):
        raise OutputError(f"cannot write {path}: it is a directory")
    try:
        fd, probe = _create_temp(path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None


def _create_temp(path: str) -> tuple[int, str]:
    """Create ``.<name>.tmp-<pid>-<random>`` beside ``path`` (same directory, so the final rename is atomic)."""
    parent, name = os.path.split(path)
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp


class _SignalGuard:
    """While active (main thread only), SIGTERM/SIGHUP raise ``SystemExit(128 + signum)`` instead of killing
    the process outright, so ``finally``/``__exit__`` clean-ups run. Inside ``deferred()`` a signal is only
    recorded, and raised when the deferred section ends (SIGINT too, as KeyboardInterrupt, when Python's
    default SIGINT handler is in place), so the final rename or the clean-up is never cut in half."""

    SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None),
                                signal.SIGINT) if s)

    def __init__(self) -> None:
        self._old: dict[int, Any] = {}
        self._deferring = False
        self.pending: int | None = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self._deferring:
            self.pending = signum
            return
        self._raise(signum)

    @staticmethod
    def _raise(signum: int) -> None:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def __enter__(self) -> _SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                old = signal.getsignal(s)
                if old is signal.SIG_IGN or (s == signal.SIGINT and old is not signal.default_int_handler):
                    continue  # e.g. nohup: keep ignoring; a custom SIGINT handler stays in charge
                self._old[s] = old
                signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self.pending is not None:
            signum, self.pending = self.pending, None
            self._raise(signum)


@contextlib.contextmanager
def atomic_output_guard() -> Iterator[_SignalGuard]:
    """Turn SIGTERM/SIGHUP into ``SystemExit`` inside the block (main thread), restoring the old handlers after,
    so that ``with``/``finally`` clean-ups (removing a temporary output) run when the process is killed."""
    with _SignalGuard() as guard:
        yield guard


def _align(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def _pack_string(s: str | bytes, what: str) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    if not isinstance(s, str):
        try:
            b.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{what}: bytes are not valid UTF-8") from None
    return struct.pack("<Q", len(b)) + b


def _pack_scalar(vtype: GGUFValueType, value: Any, what: str) -> bytes:
    if vtype == GGUFValueType.STRING:
        if not isinstance(value, (str, bytes)):
            raise ConfigError(f"{what}: STRING value must be str, got {type(value).__name__}")
        return _pack_string(value, what)
    fmt, dt = SCALAR_FORMATS[vtype]
    if vtype == GGUFValueType.BOOL:
        return struct.pack("<B", 1 if bool(value) else 0)
    if vtype in INTEGER_TYPES:
        if isinstance(value, (float, np.floating)) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"{what}: {vtype.name} value must be an integer, got {value!r}")
        info = np.iinfo(dt)
        if not info.min <= int(value) <= info.max:
            raise ConfigError(f"{what}: {value} does not fit in {vtype.name} ({info.min}..{info.max})")
        return struct.pack(fmt, int(value))
    return struct.pack(fmt, float(value))


def _pack_array(etype: GGUFValueType, items: Any, what: str) -> bytes:
    if isinstance(items, (str, bytes)):
        raise ConfigError(f"{what}: array items must be a sequence, got {type(items).__name__}")
    out = bytearray(struct.pack("<I", etype))
    if etype == GGUFValueType.ARRAY:
        items = list(items)
        out += struct.pack("<Q", len(items))
        for it in items:
            sub = it if isinstance(it, Array) else Array(value_type(it[0]), it[1]) if isinstance(it, tuple) else None
            if sub is None:
                raise ConfigError(f"{what}: nested array elements must be Array(etype, items) or (etype, items)")
            out += _pack_array(value_type(sub.etype), sub.items, what)
    elif etype == GGUFValueType.STRING:
        items = list(items)
        out += struct.pack("<Q", len(items))
        for s in items:
            out += _pack_scalar(etype, s, what)
    else:
        dt = SCALAR_FORMATS[etype][1]
        arr = np.asarray(items)
        if arr.ndim != 1:
            arr = arr.reshape(-1) if arr.size else arr.reshape(0)
        if etype == GGUFValueType.BOOL:
            arr = arr.astype(bool)
        elif etype in INTEGER_TYPES and arr.size:
            if arr.dtype.kind not in "iub":
                raise ConfigError(f"{what}: {etype.name} array needs integers, got dtype {arr.dtype}")
            info = np.iinfo(dt)
            lo, hi = int(arr.min()), int(arr.max())
            if lo < info.min or hi > info.max:
                raise ConfigError(f"{what}: values {lo}..{hi} do not fit in {etype.name}")
        out += struct.pack("<Q", arr.size)
        out += arr.astype(dt).tobytes()
    return bytes(out)


class GGUFStreamWriter:
    """Streaming, atomic GGUF writer; a context manager (see the module docstring for the call order)."""

    def __init__(self, path: str | os.PathLike[str], *, version: int = 3, guard_signals: bool = True) -> None:
        if version not in (2, 3):
            raise ConfigError(f"GGUF version must be 2 or 3, got {version}")
        self.path = os.path.abspath(os.fspath(path))
        self.version = version
        self.alignment = GGUF_DEFAULT_ALIGNMENT
        self._kv: dict[str, bytes] = {}
        self._tensors: dict[str, TensorInfo] = {}
        self._next_offset = 0
        self._written = 0  # tensors written so far
        self._guard = _SignalGuard() if guard_signals else None
        self._fh: BinaryIO | None = None
        self._tmp: str | None = None
        self._header_done = False

    # -- lifecycle --------------------------------------------------------------------------------------------
    def __enter__(self) -> GGUFStreamWriter:
        check_writable(self.path)
        if self._guard is not None:
            self._guard.__enter__()
        try:
            fd, self._tmp = _create_temp(self.path)
        except OSError as e:
            self._release_guard()
            raise OutputError(f"cannot write {self.path}: {e.strerror or e}") from None
        self._fh = os.fdopen(fd, "wb")
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        defer = self._guard.deferred() if self._guard is not None else contextlib.nullcontext()
        try:
            with defer:
                if exc_type is None:
                    try:
                        self._commit()
                    except BaseException:
                        self._discard()
                        raise
                else:
                    self._discard()
        finally:
            self._release_guard()

    def _release_guard(self) -> None:
        if self._guard is not None:
            self._guard.__exit__(None, None, None)

    def _commit(self) -> None:
        if not self._header_done:
            raise ConfigError(f"{self.path}: write_header() was never called; nothing written")
        if self._written != len(self._tensors):
            missing = list(self._tensors)[self._written]
            raise ConfigError(f"{self.path}: only {self._written} of {len(self._tensors)} tensors written "
                              f"(next: {missing!r}); the file is incomplete")
        fh, self._fh = self._fh, None
        assert fh is not None and self._tmp is not None
        try:
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            os.replace(self._tmp, self.path)
        except OSError as e:
            fh.close()
            raise OutputError(f"cannot write {self.path}: {e.strerror or e}") from None
        self._tmp = None
        with contextlib.suppress(OSError):  # make the rename durable; not possible everywhere
            dfd = os.open(os.path.dirname(self.path), os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def _discard(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            with contextlib.suppress(OSError):
                fh.close()
        if self._tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)
            self._tmp = None

    # -- declaration ------------------------------------------------------------------------------------------
    def add_kv(self, name: str, vtype: GGUFValueType | int | str, value: Any,
               array_type: GGUFValueType | int | str | None = None) -> None:
        """Add one key with an exact value type (see ``KV.value`` for the accepted values)."""
        self._check_not_started("add_kv")
        if name in self._kv:
            raise ConfigError(f"{self.path}: duplicate key {name!r}")
        what = f"key {name!r}"
        try:
            vt = value_type(vtype)
            at = None if array_type is None else value_type(array_type)
        except ValueError as e:
            raise ConfigError(f"{what}: {e}") from None
        if vt == GGUFValueType.ARRAY:
            if at is None:
                raise ConfigError(f"{what}: an ARRAY needs array_type (the element type)")
            body = _pack_array(at, value, what)
        else:
            body = _pack_scalar(vt, value, what)
        if name == "general.alignment":
            if vt not in INTEGER_TYPES or value <= 0 or value & (value - 1):
                raise ConfigError(f"{what}: alignment must be a positive power of two integer, got {value!r}")
            self.alignment = int(value)
            self._next_offset = sum(_align(t.nbytes, self.alignment) for t in self._tensors.values())
        self._kv[name] = _pack_string(name, what) + struct.pack("<I", vt) + body

    def add_kv_entry(self, kv: KV) -> None:
        """Add a ``KV`` as read by ``GGUFFile`` (same name, type and value)."""
        self.add_kv(kv.name, kv.vtype, kv.value, kv.array_type)

    def add_tensor_info(self, name: str, ne_shape: Iterable[int], type_id: GGMLQuantizationType | int | str,
                        nbytes: int | None = None) -> TensorInfo:
        """Declare a tensor (ggml order shape, ne[0] = row length). ``nbytes`` is checked if given.

        Returns its ``TensorInfo`` with the data offset it will have (final once the keys are all added)."""
        self._check_not_started("add_tensor_info")
        what = f"tensor {name!r}"
        if name in self._tensors:
            raise ConfigError(f"{self.path}: duplicate tensor name {name!r}")
        if len(name.encode("utf-8")) > MAX_NAME_BYTES:
            raise ConfigError(f"{what}: name longer than {MAX_NAME_BYTES} bytes; llama.cpp cannot load it")
        try:
            qtype = GGMLQuantizationType[type_id.upper()] if isinstance(type_id, str) else GGMLQuantizationType(
                int(type_id))
            block, tsize = GGML_QUANT_SIZES[qtype]
        except (KeyError, ValueError):
            raise ConfigError(f"{what}: unknown ggml type {type_id!r}") from None
        ne = tuple(int(d) for d in ne_shape)
        if not 1 <= len(ne) <= MAX_DIMS or min(ne) < 1:
            raise ShapeError(f"{what}: shape {ne} must have 1 to {MAX_DIMS} dimensions, each >= 1")
        if ne[0] % block:
            raise ShapeError(f"{what}: row length {ne[0]} is not a multiple of {qtype.name}'s block size {block}")
        n_el = int(np.prod(ne, dtype=object))
        expect = n_el // block * tsize
        if nbytes is not None and int(nbytes) != expect:
            raise ShapeError(f"{what}: {nbytes} bytes declared but {qtype.name} {ne} takes {expect}")
        info = TensorInfo(name, ne, ne[::-1], int(qtype), qtype.name, self._next_offset, expect, n_el)
        self._tensors[name] = info
        self._next_offset += _align(expect, self.alignment)
        return info

    def _check_not_started(self, what: str) -> None:
        if self._header_done:
            raise ConfigError(f"{self.path}: {what}() after write_header()")

    # -- writing ----------------------------------------------------------------------------------------------
    def write_header(self) -> None:
        """Write the header, all keys, all tensor infos and the padding before the data section."""
        if self._fh is None:
            raise ConfigError(f"{self.path}: use the writer as a context manager (with GGUFStreamWriter(...))")
        if self._header_done:
            raise ConfigError(f"{self.path}: write_header() called twice")
        buf = bytearray(b"GGUF")
        buf += struct.pack("<IQQ", self.version, len(self._tensors), len(self._kv))
        for body in self._kv.values():
            buf += body
        offset = 0  # recomputed here so a general.alignment added after the tensor infos still counts
        for name, t in list(self._tensors.items()):
            if t.offset != offset:
                self._tensors[name] = t = TensorInfo(t.name, t.shape_ne, t.np_shape, t.type_id, t.type_name,
                                                     offset, t.nbytes, t.n_elements)
            buf += _pack_string(name, name) + struct.pack(f"<I{len(t.shape_ne)}Q", len(t.shape_ne), *t.shape_ne)
            buf += struct.pack("<IQ", t.type_id, t.offset)
            offset += _align(t.nbytes, self.alignment)
        buf += bytes(_align(len(buf), self.alignment) - len(buf))
        self._write(buf)
        self._header_done = True

    @property
    def tensor_infos(self) -> list[TensorInfo]:
        """The declared tensors, in order, with their final offsets once ``write_header`` has run."""
        return list(self._tensors.values())

    def write_tensor_data(self, name: str, data: Any) -> None:
        """Write the next declared tensor's bytes, then zeros to the alignment.

        ``data``: bytes-like, a numpy array (its raw C-order bytes), or an iterable of those (chunks written
        as they come). ShapeError if the byte count differs from the declared size."""
        if not self._header_done:
            raise ConfigError(f"{self.path}: write_tensor_data({name!r}) before write_header()")
        order = list(self._tensors)
        if self._written >= len(order):
            raise ConfigError(f"{self.path}: write_tensor_data({name!r}): all {len(order)} tensors already written")
        if name != order[self._written]:
            raise ConfigError(f"{self.path}: tensors must be written in declared order: expected "
                              f"{order[self._written]!r}, got {name!r}")
        t = self._tensors[name]
        if isinstance(data, (bytes, bytearray, memoryview, np.ndarray)):
            chunks: Iterable[Any] = (data,)
            size = _nbytes(data)
            if size != t.nbytes:
                raise ShapeError(f"tensor {name!r}: {size} bytes given, {t.type_name} {t.shape_ne} takes {t.nbytes}")
        else:
            chunks = data
        written = 0
        for chunk in chunks:
            written += _nbytes(chunk)
            if written > t.nbytes:
                raise ShapeError(f"tensor {name!r}: more than the {t.nbytes} declared bytes given")
            self._write(chunk)
        if written != t.nbytes:
            raise ShapeError(f"tensor {name!r}: {written} bytes given, {t.type_name} {t.shape_ne} takes {t.nbytes}")
        self._write(bytes(_align(t.nbytes, self.alignment) - t.nbytes))
        self._written += 1

    def _write(self, chunk: Any) -> None:
        assert self._fh is not None
        if isinstance(chunk, np.ndarray):
            chunk = np.ascontiguousarray(chunk)
            if chunk.dtype.byteorder == ">" or (chunk.dtype.byteorder == "=" and np.little_endian is False):
                raise ConfigError(f"{self.path}: big-endian arrays cannot be written; GGUF is little-endian here")
            chunk = memoryview(chunk.reshape(-1).view(np.uint8))
        try:
            view = memoryview(chunk).cast("B")
            for i in range(0, len(view), _CHUNK):
                self._fh.write(view[i:i + _CHUNK])
        except OSError as e:
            raise OutputError(f"writing {self.path} failed: {e.strerror or e}") from None


def _nbytes(chunk: Any) -> int:
    if isinstance(chunk, np.ndarray):
        return int(chunk.nbytes)
    return memoryview(chunk).nbytes
