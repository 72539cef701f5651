"""Compare two GGUF files the way the whole-file tests and benchmarks need: metadata, order, tensor bytes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from edgequant.core.hashing import file_sha256
from edgequant.gguf.reader import GGUFFile


@dataclass
class GGUFComparison:
    tensors_total: int = 0
    tensors_identical: int = 0
    mismatched: list[str] = field(default_factory=list)  # name: why
    kv_total: int = 0
    kv_equal: int = 0
    kv_diffs: list[str] = field(default_factory=list)
    tensor_order_equal: bool = False
    kv_order_equal: bool = False
    files_identical: bool = False

    @property
    def all_equal(self) -> bool:
        return (
            not self.mismatched
            and not self.kv_diffs
            and self.tensor_order_equal
            and self.kv_order_equal
            and self.tensors_identical == self.tensors_total
        )


def compare_gguf(ours: str | os.PathLike, theirs: str | os.PathLike) -> GGUFComparison:
    """Metadata equal (type and value, in order); tensors in the same order, equal type, shape and bytes."""
    c = GGUFComparison()
    with GGUFFile(ours) as a, GGUFFile(theirs) as b:
        c.kv_total = len(b.kvs)
        c.kv_order_equal = list(a.kvs) == list(b.kvs)
        for key in dict.fromkeys(list(a.kvs) + list(b.kvs)):
            ka, kb = a.kvs.get(key), b.kvs.get(key)
            if ka is None or kb is None:
                c.kv_diffs.append(f"{key}: only in {'theirs' if ka is None else 'ours'}")
            elif ka != kb:
                c.kv_diffs.append(
                    f"{key}: ours {_short(ka.value)} ({ka.vtype.name}) vs "
                    f"theirs {_short(kb.value)} ({kb.vtype.name})"
                )
            else:
                c.kv_equal += 1
        c.tensors_total = len(b.tensors)
        c.tensor_order_equal = [t.name for t in a.tensors] == [t.name for t in b.tensors]
        for tb in b.tensors:
            try:
                ta = a.tensor(tb.name)
            except Exception:
                c.mismatched.append(f"{tb.name}: missing in ours")
                continue
            if (ta.type_name, ta.shape_ne) != (tb.type_name, tb.shape_ne):
                c.mismatched.append(
                    f"{tb.name}: ours {ta.type_name} {ta.shape_ne} vs theirs {tb.type_name} {tb.shape_ne}"
                )
            elif not np.array_equal(a.tensor_data(ta), b.tensor_data(tb)):
                c.mismatched.append(f"{tb.name}: {ta.type_name} bytes differ")
            else:
                c.tensors_identical += 1
    c.files_identical = os.path.getsize(ours) == os.path.getsize(theirs) and file_sha256(ours) == file_sha256(
        theirs
    )
    return c


def _short(v, n: int = 60) -> str:
    s = repr(v)
    return s if len(s) <= n else s[:n] + "..."
