"""A streaming safetensors writer (no torch): header first, then one tensor at a time, atomically.

Layout: u64 LE header length N, N bytes of JSON (``{name: {"dtype", "shape", "data_offsets": [b, e]}}`` plus
an optional ``"__metadata__"`` of str -> str), padded with spaces to a multiple of 8, then the raw
little-endian tensor data in header order.
"""

from __future__ import annotations

import json
import struct

import numpy as np

from edgequant.core.atomic import AtomicFile
from edgequant.errors import ShapeError

_DTYPES = {
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint8): "U8",
    np.dtype(np.int32): "I32",
    np.dtype(np.int64): "I64",
}
DTYPE_SIZES = {"F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1, "I32": 4, "I64": 8}


class SafetensorsStreamWriter:
    """Declare every tensor (name, dtype name, shape), then write their data in the same order."""

    def __init__(self, path: str, metadata: dict[str, str] | None = None):
        self.path = path
        self.metadata = dict(metadata or {})
        self._specs: list[tuple[str, str, tuple[int, ...], int]] = []
        self._next = 0
        self._file: AtomicFile | None = None

    def declare(self, name: str, dtype: str, shape: tuple[int, ...]) -> None:
        n = int(np.prod(shape, dtype=np.int64)) * DTYPE_SIZES[dtype]
        self._specs.append((name, dtype, tuple(int(s) for s in shape), n))

    def __enter__(self):
        self._file = AtomicFile(self.path)
        self._file.__enter__()
        header, offset = {}, 0
        if self.metadata:
            header["__metadata__"] = self.metadata
        for name, dtype, shape, n in self._specs:
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._file.write(struct.pack("<Q", len(raw)) + raw)
        return self

    def write(self, name: str, array: np.ndarray, dtype_name: str | None = None) -> None:
        """Write the next tensor. ``dtype_name`` names the stored type when NumPy has none for it
        (``"BF16"``: pass the raw 16-bit patterns as a uint16 array)."""
        spec_name, dtype, _, n = self._specs[self._next]
        got = dtype_name or _DTYPES.get(array.dtype)
        if name != spec_name or array.nbytes != n or got != dtype:
            raise ShapeError(
                f"{self.path}: tensor '{name}' ({array.dtype}, {array.nbytes} bytes) does not match "
                f"the declared '{spec_name}' ({dtype}, {n} bytes)"
            )
        self._file.write(np.ascontiguousarray(array).tobytes())
        self._next += 1

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None and self._next != len(self._specs):
            exc_type = RuntimeError
            exc = RuntimeError(f"{self.path}: only {self._next} of {len(self._specs)} tensors were written")
            self._file.__exit__(exc_type, exc, None)
            raise exc
        return self._file.__exit__(exc_type, exc, tb)
