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
from gguf.constants import GGUFValueType

from edgequant.core.text import quote
from edgequant.errors import FormatError, NonFiniteError, ShapeError


@dataclass
class ImatrixEntry:
    """Statistics of one weight: Σx² per column (n_mat, ne0) and rows seen per matrix (n_mat,).

    Entries read from a legacy ``.dat`` file hold that file's units (see :class:`ImatrixStats`).
    """

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
class ImatrixStats:
    """The content of one imatrix file, before any interpretation.

    ``fmt="gguf"``: ``entries`` hold the raw Σx² and row counts, ``chunk_size`` the run's context.
    ``fmt="dat"``: the legacy file keeps only ``values = mean * ncall`` and ``ncall``, so ``entries`` hold
    ``sum2 = values`` (shape (1, nval)) and ``counts = [ncall]``; ``chunk_size`` is unknown (None).
    ``datasets`` / ``chunk_count`` / ``chunk_size`` are None where the file does not record them.
    """

    path: str
    fmt: str
    entries: dict[str, ImatrixEntry]
    datasets: list[str] | None = None
    chunk_count: int | None = None
    chunk_size: int | None = None

    def quant_weights(self) -> dict[str, np.ndarray]:
        """Per-entry ``qw`` exactly as llama-quantize's ``load_imatrix`` computes them."""
        if self.fmt == "gguf":
            return {k: e.weights() for k, e in self.entries.items()}
        out = {}
        for k, e in self.entries.items():  # legacy: values / ncall, values as they are when ncall is 0
            ncall = int(e.counts[0])
            vals = e.sum2.reshape(-1)
            out[k] = (vals / np.float32(ncall)).astype(np.float32) if ncall > 0 else vals.copy()
        return out

    def raw(self, chunk_size: int) -> dict[str, ImatrixEntry]:
        """Σx² and counts as llama-imatrix rebuilds them to merge (``--in-file``).

        ``chunk_size`` is this run's context, used for a legacy file only:
        ``sum2 = values * chunk_size``, ``counts = ncall * chunk_size``.
        """
        if self.fmt == "gguf":
            return dict(self.entries)
        cs = np.float32(chunk_size)
        return {
            k: ImatrixEntry(
                (e.sum2 * cs).astype(np.float32), np.array([int(e.counts[0]) * chunk_size], np.int64)
            )
            for k, e in self.entries.items()
        }


@dataclass
class Imatrix:
    """An importance matrix as loaded from a file, with the provenance llama-quantize records."""

    path: str
    entries: dict[str, np.ndarray]  # name -> qw (float32, length ne0 * n_mat)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    fmt: str = "gguf"

    def filtered(self, include: list[str] | None = None, exclude: list[str] | None = None) -> Imatrix:
        """Keep entries whose name contains one of ``include``; drop those containing one of ``exclude``."""
        items = self.entries.items()
        if include:
            items = [(k, v) for k, v in items if any(s in k for s in include)]
        if exclude:
            items = [(k, v) for k, v in items if not any(s in k for s in exclude)]
        return Imatrix(self.path, dict(items), self.datasets, self.chunk_count, self.fmt)


def load_imatrix_stats(path: str | os.PathLike) -> ImatrixStats:
    """Read a GGUF or legacy imatrix file (GGUF tried first, as llama.cpp does), without interpreting it."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise FormatError(f"{path}: cannot read imatrix file ({e.strerror})") from None
    return _read_gguf(path) if magic == b"GGUF" else _read_dat(path)


def load_imatrix(path: str | os.PathLike) -> Imatrix:
    """Load an imatrix file for quantization: per-entry ``qw`` and provenance, by llama-quantize's rules."""
    st = load_imatrix_stats(path)
    if st.fmt == "gguf":
        for key, v in (
            ("datasets", st.datasets),
            ("chunk_count", st.chunk_count),
            ("chunk_size", st.chunk_size),
        ):
            if v is None:
                raise FormatError(
                    f"{st.path}: GGUF imatrix lacks the key 'imatrix.{key}' (llama-quantize rejects it too)"
                )
    entries = st.quant_weights()
    for name, qw in entries.items():
        if not np.isfinite(qw).all():
            raise NonFiniteError(f"{st.path}: imatrix entry '{name}' holds NaN or Inf")
    return Imatrix(st.path, entries, list(st.datasets or []), int(st.chunk_count or 0), st.fmt)


def read_stats(path: str | os.PathLike, chunk_size: int) -> tuple[dict[str, ImatrixEntry], list[str]]:
    """Raw (sum2, counts) per entry and the datasets of one imatrix file, as llama-imatrix merges them."""
    st = load_imatrix_stats(path)
    return st.raw(chunk_size), [d for d in (st.datasets or []) if st.fmt == "gguf" or d]


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


def _read_gguf(path: str) -> ImatrixStats:
    from edgequant.gguf.reader import GGUFFile

    with GGUFFile(path) as r:
        meta = r.meta
        if "imatrix.chunk_size" not in meta and meta.get_str("general.type", None) != "imatrix":
            raise FormatError(f"{path}: a GGUF file but not an imatrix (no imatrix.* keys); is it a model?")
        sums, counts = {}, {}
        for t in r.tensors:
            for suffix, bucket in ((".in_sum2", sums), (".counts", counts)):
                if t.name.endswith(suffix):
                    if t.type_name != "F32":
                        raise FormatError(
                            f"{path}: imatrix tensor {quote(t.name)} must be F32, is {t.type_name}"
                        )
                    if len(t.shape_ne) > 2:
                        raise FormatError(
                            f"{path}: imatrix tensor {quote(t.name)} has {len(t.shape_ne)} dimensions; "
                            "expected (ne0, n_mat)"
                        )
                    arr = np.array(r.tensor_data(t).view(np.float32))
                    bucket[t.name[: -len(suffix)]] = arr.reshape(
                        t.np_shape if len(t.shape_ne) > 1 else (1, -1)
                    )
        ds = (
            meta.get_array("imatrix.datasets", None, etype="str")
            if ("imatrix.datasets" not in meta or meta["imatrix.datasets"].vtype != GGUFValueType.STRING)
            else [meta.get_str("imatrix.datasets")]
        )
        chunk_count = meta.get_int("imatrix.chunk_count", None, min=0, max=2**32 - 1)
        chunk_size = meta.get_int("imatrix.chunk_size", None, min=1, max=2**32 - 1)
    entries = {}
    for name in sorted(set(sums) | set(counts)):
        if name not in counts:
            raise FormatError(f"{path}: imatrix entry {quote(name)} has in_sum2 but no counts tensor")
        if name not in sums:
            raise FormatError(f"{path}: imatrix entry {quote(name)} has counts but no in_sum2 tensor")
        s2, c = sums[name], counts[name].reshape(-1)
        if c.size != s2.shape[0]:
            raise FormatError(
                f"{path}: imatrix entry {quote(name)}: {c.size} count(s) for {s2.shape[0]} matrix(es) of "
                "in_sum2; they must match (ne[1] of both tensors)"
            )
        if not np.isfinite(c).all() or (c < 0).any() or (c > 2.0**62).any():
            raise FormatError(f"{path}: imatrix entry {quote(name)} has a negative or non-finite count")
        entries[name] = ImatrixEntry(
            s2.astype(np.float32), np.rint(c).astype(np.int64)
        )  # lround, as llama.cpp
    return ImatrixStats(path, "gguf", entries, None if ds is None else list(ds), chunk_count, chunk_size)


def _read_dat(path: str) -> ImatrixStats:
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
    entries: dict[str, ImatrixEntry] = {}
    for i in range(n):
        name_len = take("<i", f"entry #{i}")
        if name_len <= 0 or pos + name_len > len(buf):
            raise FormatError(f"{path}: entry #{i} has an invalid name length {name_len}")
        try:
            name = buf[pos : pos + name_len].decode("utf-8")
        except UnicodeDecodeError as e:
            raise FormatError(
                f"{path}: entry #{i}: its name is not UTF-8 (invalid byte at offset {pos + e.start})"
            ) from None
        pos += name_len
        ncall, nval = take("<ii", f"entry {quote(name)}")
        if ncall < 0:
            raise FormatError(f"{path}: entry {quote(name)} has a negative call count {ncall}")
        if nval <= 0 or pos + 4 * nval > len(buf):
            raise FormatError(f"{path}: entry {quote(name)} declares {nval} values that do not fit the file")
        vals = np.frombuffer(buf, np.float32, nval, pos).copy().reshape(1, -1)
        pos += 4 * nval
        entries[name] = ImatrixEntry(vals, np.array([ncall], np.int64))
    chunk_count, datasets = None, None
    if pos + 8 <= len(buf):
        chunk_count = take("<i", "the trailer")
        if chunk_count < 0:
            raise FormatError(f"{path}: the trailer's chunk count {chunk_count} is negative")
        dlen = take("<i", "the trailer")
        if 0 <= dlen <= len(buf) - pos:
            datasets = [buf[pos : pos + dlen].decode("utf-8", errors="replace")]
    return ImatrixStats(path, "dat", entries, datasets, chunk_count)


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
