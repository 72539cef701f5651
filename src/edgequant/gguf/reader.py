"""Read GGUF files lazily (read-only mmap) and validate them against hostile input.

Byte layout (little-endian throughout; versions 2 and 3; version 1 used 32-bit counts and is rejected)::

    header       b"GGUF"  u32 version  u64 tensor_count  u64 kv_count
    kv * kv_count
                 string key, u32 value_type, value
    string       u64 byte_length, UTF-8 bytes (no terminator)
    value        scalar of the type's width (u8 i8 u16 i16 u32 i32 f32 bool(1 byte) u64 i64 f64), or string,
                 or array: u32 element_type, u64 count, count values (arrays of strings and of arrays allowed)
    tensor_info * tensor_count
                 string name, u32 n_dims (1..4), u64 ne[n_dims] (ne[0] = row length), u32 ggml_type,
                 u64 offset (relative to the data section, a multiple of the alignment)
    padding      zeros up to a multiple of ``general.alignment`` (default 32): the data section starts here
    data         each tensor's bytes at data_offset + offset; llama.cpp pads every tensor to the alignment

Nothing is allocated from a count or length before checking it fits in the bytes left in the file, so the
number of values read is at most the file size (every value takes at least one byte) and reading is linear
in it. What could still amplify, Python objects for arrays nested in arrays (hundreds of bytes each for 12
bytes of file), is capped: nesting depth ``MAX_ARRAY_NESTING``, and at most ``MAX_NESTED_ITEMS_BASE`` + one
per ``_NESTED_BYTES_PER_ITEM`` bytes of file of them (llama.cpp refuses nested arrays altogether).
Every error is a ``FormatError`` naming the file and the key or tensor at fault; names from the file are
shown through ``core.text.quote`` (control characters escaped, long names cut).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType

from edgequant.core.text import quote
from edgequant.errors import FormatError, ShapeError
from edgequant.gguf.cursor import Cursor
from edgequant.gguf.metadata import Metadata

GGUF_MAGIC_BYTES = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_NESTING = 8
INT64_MAX = 2**63 - 1
# Amplification limits: values inside arrays of arrays become Python objects (~100-600 bytes each), so their
# number is capped at this base plus one per ``_NESTED_BYTES_PER_ITEM`` bytes of the file (llama.cpp's own
# reader refuses nested arrays outright). Numeric arrays are numpy (as many bytes as in the file) and string
# arrays cost at most a few times their bytes, so reading stays linear in the file size.
MAX_NESTED_ITEMS_BASE = 4096
_NESTED_BYTES_PER_ITEM = 256

# ggml's block geometry per type: gguf-py's table, corrected where it disagrees with ggml. gguf-py
# (0.17-0.19) lists Q8_1 as (32, 40); ggml's block_q8_1 is fp16 d, fp16 s, 32 x int8:
# ggml_type_size(GGML_TYPE_Q8_1) == 36.
QUANT_SIZES = {**GGML_QUANT_SIZES, GGMLQuantizationType.Q8_1: (32, 36)}

# value type -> (struct format, numpy dtype) for the fixed-width scalars; shared with the writer.
SCALAR_FORMATS: dict[GGUFValueType, tuple[str, np.dtype]] = {
    GGUFValueType.UINT8: ("<B", np.dtype("<u1")),
    GGUFValueType.INT8: ("<b", np.dtype("<i1")),
    GGUFValueType.UINT16: ("<H", np.dtype("<u2")),
    GGUFValueType.INT16: ("<h", np.dtype("<i2")),
    GGUFValueType.UINT32: ("<I", np.dtype("<u4")),
    GGUFValueType.INT32: ("<i", np.dtype("<i4")),
    GGUFValueType.FLOAT32: ("<f", np.dtype("<f4")),
    GGUFValueType.BOOL: ("<B", np.dtype("<u1")),  # one byte, 0 or 1; decoded to bool
    GGUFValueType.UINT64: ("<Q", np.dtype("<u8")),
    GGUFValueType.INT64: ("<q", np.dtype("<i8")),
    GGUFValueType.FLOAT64: ("<d", np.dtype("<f8")),
}
INTEGER_TYPES = frozenset(
    t for t, (_, dt) in SCALAR_FORMATS.items() if dt.kind in "iu" and t != GGUFValueType.BOOL
)
# Smallest encoding of one value of each type, for the "count cannot fit" checks.
_MIN_VALUE_BYTES = {
    **{t: dt.itemsize for t, (_, dt) in SCALAR_FORMATS.items()},
    GGUFValueType.STRING: 8,
    GGUFValueType.ARRAY: 12,
}
_MIN_KV_BYTES = 8 + 4 + 1  # empty key, type, one-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8  # empty name, n_dims, one dim, type, offset


def value_type(vtype: GGUFValueType | int | str) -> GGUFValueType:
    """Coerce an id, a name (``"UINT32"``) or an enum member to ``GGUFValueType``; ValueError if none."""
    if isinstance(vtype, GGUFValueType):
        return vtype
    if isinstance(vtype, str):
        try:
            return GGUFValueType[vtype.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown GGUF value type name {vtype!r}") from None
    return GGUFValueType(int(vtype))


def _items_equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_items_equal(x, y) for x, y in zip(a, b, strict=False))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # NaN == NaN for round-trip comparisons
    return type(a) is type(b) and a == b


@dataclass(frozen=True, eq=False)
class Array:
    """An array value nested inside another array: ``etype`` and its ``items`` (see ``KV``)."""

    etype: GGUFValueType
    items: Any

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Array) and self.etype == other.etype and _items_equal(self.items, other.items)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class KV:
    """One metadata key with its exact value type, so it can be written back byte for byte.

    ``value``: int / float / bool / str for scalars; for ``vtype == ARRAY`` (element type ``array_type``):
    a numpy array (little-endian dtype; bool arrays as ``np.bool_``) for numeric and bool elements,
    ``list[str]`` for strings, ``list[Array]`` for nested arrays.
    """

    name: str
    vtype: GGUFValueType
    value: Any
    array_type: GGUFValueType | None = None

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, KV)
            and (self.name, self.vtype, self.array_type) == (other.name, other.vtype, other.array_type)
            and _items_equal(self.value, other.value)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's header entry. ``shape_ne``: ggml order (ne[0] = row length); ``np_shape``: reversed."""

    name: str
    shape_ne: tuple[int, ...]
    np_shape: tuple[int, ...]
    type_id: int
    type_name: str
    offset: int  # relative to the data section
    nbytes: int
    n_elements: int


def _align(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


class GGUFFile:
    """A GGUF file opened read-only on a memory map; use as a context manager (or call ``close``).

    Attributes: ``path``, ``version``, ``file_size``, ``kvs`` (dict name -> KV, in file order),
    ``tensors`` (list of TensorInfo, in file order), ``alignment``, ``data_offset`` (absolute).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.file_size = os.path.getsize(self.path)  # OSError (missing file...) propagates as is
        if self.file_size < 4:
            raise FormatError(f"{self.path}: not a GGUF file (only {self.file_size} bytes)")
        self._mm: np.memmap | None = np.memmap(self.path, dtype=np.uint8, mode="r")
        try:
            with memoryview(self._mm) as buf:
                self._parse(Cursor(buf, self.path))
        except BaseException:
            self.close()
            raise
        self._by_name = {t.name: t for t in self.tensors}

    # -- parsing --
    def _parse(self, cur: Cursor) -> None:
        magic = bytes(cur.buf[:4])
        if magic != GGUF_MAGIC_BYTES:
            raise FormatError(f"{self.path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
        cur.pos = 4
        version = cur.unpack("<I", 4, "the header (version)")
        if version not in SUPPORTED_VERSIONS:
            if struct.unpack("<I", struct.pack(">I", version))[0] in (1, 2, 3):
                raise FormatError(f"{self.path}: big-endian GGUF files are not supported")
            hint = (
                " (the obsolete 2023 format with 32-bit counts; re-convert the model)" if version == 1 else ""
            )
            raise FormatError(f"{self.path}: unsupported GGUF version {version}{hint}; supported: 2, 3")
        self.version = version
        n_tensors = cur.unpack("<Q", 8, "the header (tensor_count)")
        n_kv = cur.unpack("<Q", 8, "the header (kv_count)")
        cur.check_count(n_kv, _MIN_KV_BYTES, "the header", "kv_count")
        cur.check_count(n_tensors, _MIN_TENSOR_INFO_BYTES, "the header", "tensor_count")
        self._nested_left = MAX_NESTED_ITEMS_BASE + cur.size // _NESTED_BYTES_PER_ITEM

        self.kvs: dict[str, KV] = {}
        for i in range(n_kv):
            name = cur.string(f"key #{i}")
            what = f"key #{i} {quote(name)}"
            if name in self.kvs:
                raise FormatError(f"{self.path}: duplicate key {quote(name)} (key #{i})")
            vtype = self._vtype(cur.unpack("<I", 4, what), what)
            if vtype == GGUFValueType.ARRAY:
                etype, items = self._read_array(cur, what, 1)
                self.kvs[name] = KV(name, vtype, items, etype)
            else:
                self.kvs[name] = KV(name, vtype, self._read_scalar(cur, vtype, what))

        self.meta = Metadata(self.path, self.kvs)
        self.alignment = self._alignment()
        self.tensors: list[TensorInfo] = []
        seen: set[str] = set()
        for i in range(n_tensors):
            info = self._read_tensor_info(cur, i)
            if info.name in seen:
                raise FormatError(f"{self.path}: duplicate tensor name {quote(info.name)} (tensor #{i})")
            seen.add(info.name)
            self.tensors.append(info)
        self.data_offset = _align(cur.pos, self.alignment)
        self._check_offsets()

    def _vtype(self, t: int, what: str) -> GGUFValueType:
        try:
            return GGUFValueType(t)
        except ValueError:
            raise FormatError(f"{self.path}: {what}: unknown value type {t} (valid: 0..12)") from None

    def _read_scalar(self, cur: Cursor, vtype: GGUFValueType, what: str) -> Any:
        if vtype == GGUFValueType.STRING:
            return cur.string(what)
        fmt, dt = SCALAR_FORMATS[vtype]
        v = cur.unpack(fmt, dt.itemsize, what)
        if vtype == GGUFValueType.BOOL:
            if v > 1:
                raise FormatError(f"{self.path}: {what}: bool value byte is {v}, expected 0 or 1")
            return bool(v)
        return float(v) if dt.kind == "f" else int(v)

    def _read_array(self, cur: Cursor, what: str, depth: int) -> tuple[GGUFValueType, Any]:
        if depth > MAX_ARRAY_NESTING:
            raise FormatError(f"{self.path}: {what}: arrays nested deeper than {MAX_ARRAY_NESTING} levels")
        etype = self._vtype(cur.unpack("<I", 4, what), f"{what} (array element type)")
        count = cur.unpack("<Q", 8, what)
        cur.check_count(count, _MIN_VALUE_BYTES[etype], what, "array count")
        if etype == GGUFValueType.STRING:
            return etype, cur.strings(count, what)
        if etype == GGUFValueType.ARRAY:
            self._nested_left -= count
            if self._nested_left < 0:
                raise FormatError(
                    f"{self.path}: {what}: too many arrays inside arrays (more than "
                    f"{MAX_NESTED_ITEMS_BASE} + 1 per {_NESTED_BYTES_PER_ITEM} bytes of the file)"
                )
            return etype, [Array(*self._read_array(cur, what, depth + 1)) for _ in range(count)]
        dt = SCALAR_FORMATS[etype][1]
        start = cur.take(count * dt.itemsize, what)
        arr = np.frombuffer(cur.buf, dtype=dt, count=count, offset=start).copy()
        if etype == GGUFValueType.BOOL:
            if count and arr.max() > 1:
                raise FormatError(f"{self.path}: {what}: bool array holds a byte other than 0 or 1")
            arr = arr.astype(np.bool_)
        return etype, arr

    def _alignment(self) -> int:
        # llama.cpp's gguf reader takes general.alignment as a UINT32 only (gguf_get_val_u32).
        a = self.meta.get_int("general.alignment", GGUF_DEFAULT_ALIGNMENT, types=(GGUFValueType.UINT32,))
        if a <= 0 or a & (a - 1):
            raise FormatError(f"{self.path}: general.alignment = {a} is not a power of two")
        return a

    def _read_tensor_info(self, cur: Cursor, i: int) -> TensorInfo:
        name = cur.string(f"tensor info #{i} (name)")
        what = f"tensor info #{i} {quote(name)}"
        n_dims = cur.unpack("<I", 4, what)
        if not 1 <= n_dims <= MAX_DIMS:
            raise FormatError(
                f"{self.path}: tensor {quote(name)} has {n_dims} dimensions; GGUF allows 1 to {MAX_DIMS}"
            )
        ne = struct.unpack_from(f"<{n_dims}Q", cur.buf, cur.take(8 * n_dims, what))
        for j, d in enumerate(ne):
            if d == 0 or d > INT64_MAX:
                shown = d - 2**64 if d > INT64_MAX else d
                raise FormatError(
                    f"{self.path}: tensor {quote(name)} has dimension ne[{j}] = {shown}; must be >= 1"
                )
        n_el = 1
        for d in ne:
            n_el *= d
        if n_el > INT64_MAX:
            raise FormatError(
                f"{self.path}: tensor {quote(name)}: element count of shape {list(ne)} overflows int64"
            )
        type_id = cur.unpack("<I", 4, what)
        try:
            qtype = GGMLQuantizationType(type_id)
            block, tsize = QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise FormatError(
                f"{self.path}: tensor {quote(name)} has unknown ggml type id {type_id}"
            ) from None
        if ne[0] % block:
            raise FormatError(
                f"{self.path}: tensor {quote(name)}: row length ne[0] = {ne[0]} is not a multiple of "
                f"{qtype.name}'s block size {block}"
            )
        offset = cur.unpack("<Q", 8, what)
        return TensorInfo(
            name, tuple(ne), tuple(reversed(ne)), type_id, qtype.name, offset, n_el // block * tsize, n_el
        )

    def _check_offsets(self) -> None:
        prev: TensorInfo | None = None
        for t in sorted(self.tensors, key=lambda t: t.offset):
            if t.offset % self.alignment:
                raise FormatError(
                    f"{self.path}: tensor {quote(t.name)} offset {t.offset} is not a multiple of the "
                    f"alignment {self.alignment}"
                )
            if prev is not None and t.offset < prev.offset + prev.nbytes:
                raise FormatError(
                    f"{self.path}: tensor {quote(t.name)} (offset {t.offset}) overlaps tensor "
                    f"{quote(prev.name)} (bytes {prev.offset}..{prev.offset + prev.nbytes})"
                )
            end = self.data_offset + t.offset + t.nbytes
            if end > self.file_size:
                raise FormatError(
                    f"{self.path}: tensor {quote(t.name)} data (file bytes {self.data_offset + t.offset}.."
                    f"{end}) runs past the end of the file ({self.file_size} bytes); truncated?"
                )
            prev = t

    # -- access --
    def get(self, key: str, default: Any = None) -> Any:
        """The value of metadata ``key`` (see ``KV.value``), or ``default``."""
        kv = self.kvs.get(key)
        return default if kv is None else kv.value

    def tensor(self, name: str) -> TensorInfo:
        try:
            return self._by_name[name]
        except KeyError:
            raise FormatError(f"{self.path}: no tensor named {quote(name)}") from None

    def tensor_data(self, info: TensorInfo | str) -> np.ndarray:
        """The tensor's raw bytes: a read-only uint8 view of the map (no copy); not valid after ``close``."""
        t = self.tensor(info) if isinstance(info, str) else info
        if self._mm is None:
            raise ValueError(f"{self.path}: file is closed")
        start = self.data_offset + t.offset
        return np.asarray(self._mm[start : start + t.nbytes])

    def tensor_f32(self, info: TensorInfo | str, *, threads: int | None = None) -> np.ndarray:
        """The tensor decoded to float32 of ``np_shape`` (through ``edgequant.gguf.codecs.dequantize``)."""
        from edgequant.gguf.codecs import dequantize

        t = self.tensor(info) if isinstance(info, str) else info
        try:
            return dequantize(self.tensor_data(t), t.type_name, t.np_shape, threads=threads)
        except ShapeError as e:
            raise ShapeError(f"{self.path}: tensor {quote(t.name)}: {e}") from None

    def release(self, info: TensorInfo | str) -> None:
        """Drop the tensor's pages from this process's resident set (``MADV_DONTNEED``; they stay in the page
        cache). Streaming passes call it after each tensor so that resident memory stays near one tensor,
        not the file size. Views of the tensor stay valid: touching them faults the pages back in."""
        t = self.tensor(info) if isinstance(info, str) else info
        mm = getattr(self._mm, "_mmap", None)
        if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        start = (self.data_offset + t.offset) // page * page
        end = self.data_offset + t.offset + t.nbytes
        with contextlib.suppress(OSError, ValueError):
            mm.madvise(mmap.MADV_DONTNEED, start, end - start)

    @property
    def closed(self) -> bool:
        return self._mm is None

    def close(self) -> None:
        """Release the map. It is unmapped at once unless ``tensor_data`` views are still alive: those stay
        valid and the map goes with the last of them (closing the mmap under them would crash on access)."""
        self._mm = None

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self.kvs)} keys, {len(self.tensors)} tensors"
        return f"GGUFFile({self.path!r}, v{getattr(self, 'version', '?')}, {state})"
