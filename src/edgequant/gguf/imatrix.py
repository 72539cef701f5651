"""Importance matrices (llama-imatrix files), in GGUF and legacy ``.dat`` form.

An imatrix entry holds, per input column of a weight, the mean of the squared activations that fed it
(per expert for MoE weights). ``llama-quantize`` passes ``qw[e*ne0 + j] = sum2 / count[e]`` to the codecs
as per-column weights of their least-squares scale searches (``shared/reference/ggml-quants.md`` §7).

GGUF form (default of current llama.cpp): KVs ``general.type = "imatrix"``, ``imatrix.datasets``
(string array), ``imatrix.chunk_count`` (u32), ``imatrix.chunk_size`` (u32); per entry, in sorted name
order, F32 tensors ``<name>.in_sum2`` (ne = [ne0, n_mat], raw Σx²) and ``<name>.counts`` (ne = [1, n_mat]).

Legacy ``.dat`` form (little-endian, unaligned)::

    int32 n_entries
    n_entries x { int32 name_len; name bytes; int32 ncall; int32 nval; float32 values[nval] }
    optional trailer: int32 chunk_count; int32 dataset_len; dataset bytes

with ``values = (sum2 / count) * ncall``; the reader divides by ``ncall`` again.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

import numpy as np

from edgequant.errors import FormatError, NonFiniteError


@dataclass
class ImatrixEntry:
    """Raw statistics of one weight: Σx² per column (n_mat, ne0) and rows seen per matrix (n_mat,)."""

    sum2: np.ndarray
    counts: np.ndarray

    def weights(self) -> np.ndarray:
        """The quantizer's ``qw``: sum2 / count per matrix (f32 division), 1.0 where a matrix saw nothing."""
        n_mat, ne0 = self.sum2.shape
        out = np.empty((n_mat, ne0), np.float32)
        for e in range(n_mat):
            c = np.float32(self.counts[e])
            out[e] = (self.sum2[e] / c).astype(np.float32) if c > 0 else np.float32(1.0)
        return out.reshape(-1)


@dataclass
class Imatrix:
    """An importance matrix as loaded from a file, with the provenance llama-quantize records."""

    path: str
    entries: dict[str, np.ndarray]  # name -> qw (float32, length ne0 * n_mat)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    fmt: str = "gguf"

    def filtered(self, include: list[str] | None = None, exclude: list[str] | None = None) -> Imatrix:
        """``--include-weights`` / ``--exclude-weights``: keep/drop entries whose name contains a substring."""
        items = self.entries.items()
        if include:
            items = [(k, v) for k, v in items if any(s in k for s in include)]
        if exclude:
            items = [(k, v) for k, v in items if not any(s in k for s in exclude)]
        return Imatrix(self.path, dict(items), self.datasets, self.chunk_count, self.fmt)


def load_imatrix(path: str | os.PathLike) -> Imatrix:
    """Load a GGUF or legacy imatrix file (GGUF is tried first, as llama.cpp does)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise FormatError(f"{path}: cannot read imatrix file ({e.strerror})") from None
    imat = _load_gguf(path) if magic == b"GGUF" else _load_dat(path)
    for name, qw in imat.entries.items():
        if not np.isfinite(qw).all():
            raise NonFiniteError(f"{path}: imatrix entry '{name}' holds NaN or Inf")
    return imat


def _load_gguf(path: str) -> Imatrix:
    from edgequant.gguf.reader import GGUFFile

    with GGUFFile(path) as r:
        kvs = {k: v.value for k, v in r.kvs.items()}
        for key in ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"):
            if key not in kvs:
                raise FormatError(
                    f"{path}: GGUF imatrix lacks the key '{key}' (llama-quantize rejects it too)"
                )
        sums, counts = {}, {}
        for t in r.tensors:
            for suffix, bucket in ((".in_sum2", sums), (".counts", counts)):
                if t.name.endswith(suffix):
                    if t.type_name != "F32":
                        raise FormatError(f"{path}: imatrix tensor '{t.name}' must be F32, is {t.type_name}")
                    bucket[t.name[: -len(suffix)]] = np.array(r.tensor_data(t).view(np.float32)).reshape(
                        t.np_shape if len(t.np_shape) > 1 else (1, -1)
                    )
        entries = {}
        for name in sorted(sums):
            if name not in counts:
                raise FormatError(f"{path}: imatrix entry '{name}' has in_sum2 but no counts tensor")
            c = np.rint(counts[name].reshape(-1)).astype(np.int64)  # lround, as common_imatrix_load
            s = sums[name].reshape(c.size, -1)
            entries[name] = ImatrixEntry(s.astype(np.float32), c).weights()
        missing = sorted(set(counts) - set(sums))
        if missing:
            raise FormatError(f"{path}: imatrix entry '{missing[0]}' has counts but no in_sum2 tensor")
        ds = kvs["imatrix.datasets"]
        return Imatrix(
            path, entries, list(ds) if isinstance(ds, list) else [ds], int(kvs["imatrix.chunk_count"]), "gguf"
        )


def _load_dat(path: str) -> Imatrix:
    with open(path, "rb") as f:
        buf = f.read()
    pos = 0

    def take(fmt: str, what: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(buf):
            raise FormatError(f"{path}: not a GGUF or legacy imatrix file (truncated while reading {what})")
        v = struct.unpack_from(fmt, buf, pos)
        pos += size
        return v[0] if len(v) == 1 else v

    n = take("<i", "the entry count")
    if n < 0 or n * 12 > len(buf):
        raise FormatError(
            f"{path}: not a GGUF or legacy imatrix file (entry count {n} does not fit the file)"
        )
    entries: dict[str, np.ndarray] = {}
    for i in range(n):
        name_len = take("<i", f"entry #{i}")
        if name_len <= 0 or pos + name_len > len(buf):
            raise FormatError(f"{path}: entry #{i} has an invalid name length {name_len}")
        name = buf[pos : pos + name_len].decode("utf-8", errors="replace")
        pos += name_len
        ncall, nval = take("<ii", f"entry '{name}'")
        if nval <= 0 or pos + 4 * nval > len(buf):
            raise FormatError(f"{path}: entry '{name}' declares {nval} values that do not fit the file")
        vals = np.frombuffer(buf, np.float32, nval, pos).copy()
        pos += 4 * nval
        if ncall > 0:
            vals = (vals / np.float32(ncall)).astype(np.float32)
        entries[name] = vals
    chunk_count, datasets = 0, []
    if pos + 8 <= len(buf):
        chunk_count = take("<i", "the trailer")
        dlen = take("<i", "the trailer")
        if 0 <= dlen <= len(buf) - pos:
            datasets = [buf[pos : pos + dlen].decode("utf-8", errors="replace")]
    return Imatrix(path, entries, datasets, chunk_count, "dat")


def save_imatrix_dat(path: str, stats: dict[str, ImatrixEntry], chunk_size: int, dataset: str = "") -> None:
    """Write the legacy format as current llama-imatrix does (sorted names, all-zero entries skipped)."""
    parts = []
    kept = [(k, v) for k, v in sorted(stats.items()) if (v.counts > 0).any()]
    parts.append(struct.pack("<i", len(kept)))
    for name, e in kept:
        ncall = int(-(-int(e.counts.max()) // chunk_size))
        vals = np.empty_like(e.sum2, dtype=np.float32)
        for m in range(e.sum2.shape[0]):
            c = np.float32(e.counts[m])
            base = (e.sum2[m] / c).astype(np.float32) if c > 0 else np.float32(1.0)
            vals[m] = (base * np.float32(ncall)).astype(np.float32)
        raw = name.encode()
        parts += [struct.pack("<i", len(raw)), raw, struct.pack("<ii", ncall, vals.size), vals.tobytes()]
    chunk_count = max((int(e.counts.max()) // chunk_size for _, e in kept), default=0)
    ds = dataset.encode()
    parts += [struct.pack("<ii", chunk_count, len(ds)), ds]
    from edgequant.core.atomic import atomic_write_bytes

    atomic_write_bytes(path, b"".join(parts))


def save_imatrix_gguf(
    path: str, stats: dict[str, ImatrixEntry], chunk_size: int, datasets: list[str]
) -> None:
    """Write the GGUF form (KVs and ``.in_sum2`` / ``.counts`` tensors in sorted name order)."""
    from gguf.constants import GGMLQuantizationType, GGUFValueType

    from edgequant.gguf.writer import GGUFStreamWriter

    names = sorted(stats)
    chunk_count = max((int(stats[k].counts.max()) // chunk_size for k in names), default=0)
    with GGUFStreamWriter(path) as w:
        w.add_kv("general.type", GGUFValueType.STRING, "imatrix")
        w.add_kv("imatrix.datasets", GGUFValueType.ARRAY, list(datasets), GGUFValueType.STRING)
        w.add_kv("imatrix.chunk_count", GGUFValueType.UINT32, chunk_count)
        w.add_kv("imatrix.chunk_size", GGUFValueType.UINT32, chunk_size)
        arrays = []
        for k in names:
            e = stats[k]
            s = np.ascontiguousarray(e.sum2, np.float32)
            c = np.ascontiguousarray(e.counts.reshape(-1, 1), np.float32)
            for suffix, a in ((".in_sum2", s), (".counts", c)):
                w.add_tensor_info(
                    k + suffix, (a.shape[1], a.shape[0]), int(GGMLQuantizationType.F32), a.nbytes
                )
                arrays.append((k + suffix, a))
        w.write_header()
        for name, a in arrays:
            w.write_tensor_data(name, a)
