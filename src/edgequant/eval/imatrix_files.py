"""Raw imatrix statistics from files, merging (``llama-imatrix --in-file``) and writing either format.

Merging keeps llama-imatrix's semantics (``IMatrixCollector::load_imatrix`` / ``load_imatrix_legacy``):

* GGUF input: ``in_sum2`` and ``counts`` (rounded with ``lround``) are added entry by entry;
* legacy ``.dat`` input: the raw state is rebuilt as ``sum2 = values * chunk_size`` and
  ``counts = ncall * chunk_size`` (``values`` are ``mean * ncall``), one count for the whole entry;
* datasets: those recorded in the inputs, in order, then this run's text file.

``chunk_size`` is this run's ``--ctx``. Entries present in several files must have the same length.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from edgequant.errors import FormatError, ShapeError
from edgequant.gguf.imatrix import ImatrixEntry, save_imatrix_dat, save_imatrix_gguf


def read_stats(path: str | os.PathLike, chunk_size: int) -> tuple[dict[str, ImatrixEntry], list[str]]:
    """Raw (sum2, counts) per entry and the datasets of one imatrix file (GGUF or legacy)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise FormatError(f"{path}: cannot read imatrix file ({e.strerror})") from None
    return _read_gguf(path) if magic == b"GGUF" else _read_dat(path, chunk_size)


def _read_gguf(path: str) -> tuple[dict[str, ImatrixEntry], list[str]]:
    from edgequant.gguf.reader import GGUFFile

    with GGUFFile(path) as r:
        kvs = {k: v.value for k, v in r.kvs.items()}
        if "imatrix.chunk_size" not in kvs and kvs.get("general.type") != "imatrix":
            raise FormatError(f"{path}: a GGUF file but not an imatrix (no imatrix.* keys); is it a model?")
        sums, counts = {}, {}
        for t in r.tensors:
            for suffix, bucket in ((".in_sum2", sums), (".counts", counts)):
                if t.name.endswith(suffix):
                    if t.type_name != "F32":
                        raise FormatError(f"{path}: imatrix tensor '{t.name}' must be F32, is {t.type_name}")
                    bucket[t.name[: -len(suffix)]] = np.array(r.tensor_data(t).view(np.float32)).reshape(-1)
        ds = kvs.get("imatrix.datasets", [])
    out = {}
    for name in sorted(set(sums) | set(counts)):
        if name not in sums or name not in counts:
            raise FormatError(f"{path}: imatrix entry '{name}' lacks its in_sum2 or counts tensor")
        c = np.rint(counts[name]).astype(np.int64)
        out[name] = ImatrixEntry(sums[name].reshape(c.size, -1).astype(np.float32), c)
    return out, list(ds) if isinstance(ds, list) else [str(ds)]


def _read_dat(path: str, chunk_size: int) -> tuple[dict[str, ImatrixEntry], list[str]]:
    with open(path, "rb") as f:
        buf = f.read()
    pos = 0

    def take(fmt: str, what: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(buf):
            raise FormatError(f"{path}: not a GGUF or legacy imatrix file (truncated at {what})")
        v = struct.unpack_from(fmt, buf, pos)
        pos += size
        return v

    (n,) = take("<i", "the entry count")
    if n < 0 or n * 12 > len(buf):
        raise FormatError(f"{path}: not a GGUF or legacy imatrix file (entry count {n} does not fit)")
    out = {}
    for i in range(n):
        (name_len,) = take("<i", f"entry #{i}")
        if name_len <= 0 or pos + name_len > len(buf):
            raise FormatError(f"{path}: entry #{i} has an invalid name length {name_len}")
        name = buf[pos : pos + name_len].decode("utf-8", errors="replace")
        pos += name_len
        ncall, nval = take("<ii", f"entry '{name}'")
        if nval <= 0 or pos + 4 * nval > len(buf):
            raise FormatError(f"{path}: entry '{name}' declares {nval} values that do not fit the file")
        vals = np.frombuffer(buf, np.float32, nval, pos)
        pos += 4 * nval
        sum2 = (vals * np.float32(chunk_size)).astype(np.float32).reshape(1, -1)
        out[name] = ImatrixEntry(sum2, np.array([int(ncall) * chunk_size], np.int64))
    datasets = []
    if pos + 8 <= len(buf):
        _, dlen = take("<ii", "the trailer")
        if 0 < dlen <= len(buf) - pos:
            datasets = [buf[pos : pos + dlen].decode("utf-8", errors="replace")]
    return out, datasets


def merge_into(acc: dict[str, ImatrixEntry], new: dict[str, ImatrixEntry], source: str) -> None:
    """Add ``new`` to ``acc`` in place (sums and counts), refusing entries of different lengths."""
    for name, e in new.items():
        old = acc.get(name)
        if old is None:
            acc[name] = ImatrixEntry(e.sum2.copy(), e.counts.copy())
            continue
        if old.sum2.size != e.sum2.size:
            raise ShapeError(
                f"{source}: imatrix entry '{name}' has {e.sum2.size} values, the other inputs have "
                f"{old.sum2.size}; the files are for different models"
            )
        counts = old.counts
        if counts.size == 1 and e.counts.size > 1:  # broadcast a legacy single count (llama.cpp does)
            counts = np.full(e.counts.size, counts[0], np.int64)
        add = e.counts if e.counts.size == counts.size else np.full(counts.size, e.counts[0], np.int64)
        acc[name] = ImatrixEntry(
            (old.sum2.reshape(counts.size, -1) + e.sum2.reshape(counts.size, -1)).astype(np.float32),
            counts + add,
        )


def write_stats(
    path: str | os.PathLike, stats: dict[str, ImatrixEntry], fmt: str, chunk_size: int, datasets: list[str]
) -> None:
    """Write ``stats`` as a GGUF (``fmt='gguf'``) or legacy (``'dat'``) imatrix, atomically."""
    path = os.fspath(path)
    if fmt == "gguf":
        save_imatrix_gguf(path, stats, chunk_size, datasets)
    elif fmt == "dat":
        save_imatrix_dat(path, stats, chunk_size, datasets[-1] if datasets else "")
    else:
        raise FormatError(f"unknown imatrix output format '{fmt}' (choose gguf or dat)")
