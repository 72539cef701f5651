"""Write GGUF files streaming (one tensor in memory at a time) and atomically (temp file renamed at the end).

Byte layout written (little-endian, version 3 unless asked otherwise; see ``edgequant.gguf.reader``)::

    b"GGUF" u32 version  u64 tensor_count  u64 kv_count
    kvs in the order added:      string key, u32 value_type, value (arrays: u32 elem_type, u64 count, values)
    tensor infos in order added: string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset
    zeros up to a multiple of the alignment
    each tensor's bytes followed by zeros up to a multiple of the alignment

Offsets are those of llama.cpp (``gguf_add_tensor``, llama-quantize): tensor i starts at the sum of the
previous tensors' sizes, each rounded up to the alignment (``general.alignment`` if the caller set it,
else 32).

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

import os
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np
from gguf.constants import GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType

from edgequant.core.atomic import AtomicFile, check_writable

__all__ = ["GGUFStreamWriter", "check_writable"]
from edgequant.errors import ConfigError, ShapeError
from edgequant.gguf.reader import (
    INTEGER_TYPES,
    KV,
    MAX_DIMS,
    QUANT_SIZES,
    SCALAR_FORMATS,
    Array,
    TensorInfo,
    value_type,
)

MAX_NAME_BYTES = 63  # llama.cpp refuses tensor names of GGML_MAX_NAME (64) bytes or more
_CHUNK = 16 << 20
_U64 = struct.Struct("<Q")


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


def _pack_strings(items: list, what: str) -> bytes:
    """``u64 length, UTF-8 bytes`` for each string, concatenated: the same bytes as ``_pack_string`` per item,
    joined once (a tokenizer's 50k-150k strings took 0.1 s one call each, about as long as quantizing a
    small model's weights)."""
    if all(type(s) is str for s in items):
        enc = [s.encode("utf-8") for s in items]
    else:
        enc = []
        for s in items:
            if isinstance(s, str):
                enc.append(s.encode("utf-8"))
            elif isinstance(s, (bytes, bytearray, memoryview)):
                enc.append(_pack_string(s, what)[8:])  # checks the bytes are UTF-8
            else:
                raise ConfigError(f"{what}: STRING value must be str, got {type(s).__name__}")
    parts: list[bytes] = [b""] * (2 * len(enc))
    parts[0::2] = map(_U64.pack, map(len, enc))
    parts[1::2] = enc
    return b"".join(parts)


def _pack_array(etype: GGUFValueType, items: Any, what: str) -> bytes:
    if isinstance(items, (str, bytes)):
        raise ConfigError(f"{what}: array items must be a sequence, got {type(items).__name__}")
    out = bytearray(struct.pack("<I", etype))
    if etype == GGUFValueType.ARRAY:
        items = list(items)
        out += struct.pack("<Q", len(items))
        for it in items:
            if isinstance(it, tuple) and len(it) == 2:
                it = Array(value_type(it[0]), it[1])
            if not isinstance(it, Array):
                raise ConfigError(f"{what}: nested array elements must be Array(etype, items) or tuples")
            out += _pack_array(value_type(it.etype), it.items, what)
    elif etype == GGUFValueType.STRING:
        items = list(items)
        out += struct.pack("<Q", len(items))
        out += _pack_strings(items, what)
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
        self._order: list[str] = []
        self._next_offset = 0
        self._written = 0  # tensors written so far
        self._guard_signals = guard_signals
        self._out: AtomicFile | None = None
        self._header_done = False

    # -- lifecycle --
    def __enter__(self) -> GGUFStreamWriter:
        self._out = AtomicFile(self.path, guard_signals=self._guard_signals).__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        out, self._out = self._out, None
        if exc_type is None:
            try:
                self._check_complete()
            except BaseException as e:
                out.__exit__(type(e), e, e.__traceback__)
                raise
        out.__exit__(exc_type, exc, tb)

    def _check_complete(self) -> None:
        if not self._header_done:
            raise ConfigError(f"{self.path}: write_header() was never called; nothing written")
        if self._written != len(self._tensors):
            missing = self._order[self._written]
            raise ConfigError(
                f"{self.path}: only {self._written} of {len(self._tensors)} tensors written "
                f"(next: {missing!r}); the file is incomplete"
            )

    # -- declaration --
    def add_kv(
        self,
        name: str,
        vtype: GGUFValueType | int | str,
        value: Any,
        array_type: GGUFValueType | int | str | None = None,
    ) -> None:
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
            if vt != GGUFValueType.UINT32 or value <= 0 or value & (value - 1):
                raise ConfigError(
                    f"{what}: alignment must be a UINT32 power of two (llama.cpp reads it as UINT32), "
                    f"got {vt.name} {value!r}"
                )
            self.alignment = int(value)
            self._next_offset = sum(_align(t.nbytes, self.alignment) for t in self._tensors.values())
        self._kv[name] = _pack_string(name, what) + struct.pack("<I", vt) + body

    def add_kv_entry(self, kv: KV) -> None:
        """Add a ``KV`` as read by ``GGUFFile`` (same name, type and value)."""
        self.add_kv(kv.name, kv.vtype, kv.value, kv.array_type)

    def add_tensor_info(
        self,
        name: str,
        ne_shape: Iterable[int],
        type_id: GGMLQuantizationType | int | str,
        nbytes: int | None = None,
    ) -> TensorInfo:
        """Declare a tensor (ggml order shape, ne[0] = row length). ``nbytes`` is checked if given.

        Returns its ``TensorInfo`` with the data offset it will have (final once the keys are all added)."""
        self._check_not_started("add_tensor_info")
        what = f"tensor {name!r}"
        if name in self._tensors:
            raise ConfigError(f"{self.path}: duplicate tensor name {name!r}")
        if len(name.encode("utf-8")) > MAX_NAME_BYTES:
            raise ConfigError(f"{what}: name longer than {MAX_NAME_BYTES} bytes; llama.cpp cannot load it")
        try:
            qtype = (
                GGMLQuantizationType[type_id.upper()]
                if isinstance(type_id, str)
                else GGMLQuantizationType(int(type_id))
            )
            block, tsize = QUANT_SIZES[qtype]
        except (KeyError, ValueError):
            raise ConfigError(f"{what}: unknown ggml type {type_id!r}") from None
        ne = tuple(int(d) for d in ne_shape)
        if not 1 <= len(ne) <= MAX_DIMS or min(ne) < 1:
            raise ShapeError(f"{what}: shape {ne} must have 1 to {MAX_DIMS} dimensions, each >= 1")
        if ne[0] % block:
            raise ShapeError(
                f"{what}: row length {ne[0]} is not a multiple of {qtype.name}'s block size {block}"
            )
        n_el = int(np.prod(ne, dtype=object))
        expect = n_el // block * tsize
        if nbytes is not None and int(nbytes) != expect:
            raise ShapeError(f"{what}: {nbytes} bytes declared but {qtype.name} {ne} takes {expect}")
        info = TensorInfo(name, ne, ne[::-1], int(qtype), qtype.name, self._next_offset, expect, n_el)
        self._tensors[name] = info
        self._order.append(name)
        self._next_offset += _align(expect, self.alignment)
        return info

    def _check_not_started(self, what: str) -> None:
        if self._header_done:
            raise ConfigError(f"{self.path}: {what}() after write_header()")

    # -- writing --
    def write_header(self) -> None:
        """Write the header, all keys, all tensor infos and the padding before the data section."""
        if self._out is None:
            raise ConfigError(f"{self.path}: use the writer as a context manager (with GGUFStreamWriter())")
        if self._header_done:
            raise ConfigError(f"{self.path}: write_header() called twice")
        buf = bytearray(b"GGUF")
        buf += struct.pack("<IQQ", self.version, len(self._tensors), len(self._kv))
        for body in self._kv.values():
            buf += body
        offset = 0  # recomputed here so a general.alignment added after the tensor infos still counts
        for name, t in list(self._tensors.items()):
            if t.offset != offset:
                self._tensors[name] = t = TensorInfo(
                    t.name, t.shape_ne, t.np_shape, t.type_id, t.type_name, offset, t.nbytes, t.n_elements
                )
            buf += _pack_string(name, name) + struct.pack(
                f"<I{len(t.shape_ne)}Q", len(t.shape_ne), *t.shape_ne
            )
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
        order = self._order
        if self._written >= len(order):
            raise ConfigError(
                f"{self.path}: write_tensor_data({name!r}): all {len(order)} tensors already written"
            )
        if name != order[self._written]:
            raise ConfigError(
                f"{self.path}: tensors must be written in declared order: expected "
                f"{order[self._written]!r}, got {name!r}"
            )
        t = self._tensors[name]
        if isinstance(data, (bytes, bytearray, memoryview, np.ndarray)):
            chunks: Iterable[Any] = (data,)
            size = _nbytes(data)
            if size != t.nbytes:
                raise ShapeError(
                    f"tensor {name!r}: {size} bytes given, {t.type_name} {t.shape_ne} takes {t.nbytes}"
                )
        else:
            chunks = data
        written = 0
        for chunk in chunks:
            written += _nbytes(chunk)
            if written > t.nbytes:
                raise ShapeError(f"tensor {name!r}: more than the {t.nbytes} declared bytes given")
            self._write(chunk)
        if written != t.nbytes:
            raise ShapeError(
                f"tensor {name!r}: {written} bytes given, {t.type_name} {t.shape_ne} takes {t.nbytes}"
            )
        self._write(bytes(_align(t.nbytes, self.alignment) - t.nbytes))
        self._written += 1

    def _write(self, chunk: Any) -> None:
        assert self._out is not None
        if isinstance(chunk, np.ndarray):
            chunk = np.ascontiguousarray(chunk)
            if chunk.dtype.byteorder == ">" or (chunk.dtype.byteorder == "=" and not np.little_endian):
                raise ConfigError(f"{self.path}: big-endian arrays cannot be written (GGUF is little-endian)")
            chunk = memoryview(chunk.reshape(-1).view(np.uint8))
        self._out.write(chunk)


def _nbytes(chunk: Any) -> int:
    if isinstance(chunk, np.ndarray):
        return int(chunk.nbytes)
    return memoryview(chunk).nbytes
