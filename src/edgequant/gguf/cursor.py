"""Bounds-checked little-endian reads over a GGUF file's mapped bytes (``reader.GGUFFile``'s parser).

Every read checks that its bytes lie inside the file and raises a ``FormatError`` naming the file, the item
being read (``what``) and the offset; nothing is allocated from a count or length before that check.
"""

from __future__ import annotations

import struct
from typing import Any

from edgequant.errors import FormatError

_U64 = struct.Struct("<Q")


class Cursor:
    """Bounds-checked little-endian reads over the mapped bytes."""

    def __init__(self, buf: memoryview, path: str) -> None:
        self.buf, self.path, self.size, self.pos = buf, path, len(buf), 0

    def left(self) -> int:
        return self.size - self.pos

    def take(self, n: int, what: str) -> int:
        if n > self.left():
            raise FormatError(
                f"{self.path}: truncated while reading {what} (needs {n} bytes at offset "
                f"{self.pos}, only {self.left()} left)"
            )
        start, self.pos = self.pos, self.pos + n
        return start

    def unpack(self, fmt: str, size: int, what: str) -> Any:
        return struct.unpack_from(fmt, self.buf, self.take(size, what))[0]

    def check_count(self, count: int, each: int, what: str, label: str) -> None:
        if count * each > self.left():
            raise FormatError(
                f"{self.path}: truncated while reading {what}: {label} {count} cannot fit in the "
                f"{self.left()} bytes left in the file (each needs at least {each}); the file is "
                "truncated or corrupt"
            )

    def string(self, what: str) -> str:
        """One string: a u64 byte length, then that many UTF-8 bytes."""
        return self.strings(1, what)[0]

    def strings(self, count: int, what: str) -> list[str]:
        """``count`` strings one after another, in one loop over locals: a tokenizer's 50k-150k strings took
        0.13 s at one method call each."""
        buf, pos, size = self.buf, self.pos, self.size
        unpack = _U64.unpack_from
        out: list[str] = []
        append = out.append
        for _ in range(count):
            if size - pos < 8:
                self.pos = pos
                self.take(8, what)  # raises the truncation error
            (n,) = unpack(buf, pos)
            pos += 8
            if n > size - pos:
                self.pos = pos
                raise FormatError(
                    f"{self.path}: truncated while reading {what}: string length {n} exceeds the "
                    f"{size - pos} bytes left in the file"
                )
            try:
                append(str(buf[pos : pos + n], "utf-8"))
            except UnicodeDecodeError as e:
                raise FormatError(
                    f"{self.path}: invalid UTF-8 in {what} at file offset {pos + e.start}"
                ) from None
            pos += n
        self.pos = pos
        return out
