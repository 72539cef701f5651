"""Streaming reader of Hugging Face checkpoints: config.json + safetensors (single or sharded), no pickles.

safetensors layout: u64 LE header length N, N bytes of JSON ``{name: {"dtype", "shape", "data_offsets":
[begin, end]}, "__metadata__": {...}}``, then the data; offsets are relative to byte 8 + N. Every header is
checked against the file size before anything is mapped, so a truncated shard is a ``FormatError`` naming
the file and the first tensor that runs past its end. Tensors are read one at a time from a read-only mmap
and widened to float32 (BF16 by a 16-bit shift, exact; F16 exact).

Sharded checkpoints: ``model.safetensors.index.json`` maps each tensor to its shard; a shard that is
missing, or a tensor the index names but no shard holds, is an error naming it. ``*.bin``/``*.pt``/``*.pth``
checkpoints are pickles, which can run code when loaded: they are refused with the conversion to use.
"""

from __future__ import annotations

import glob
import json
import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

from edgequant.errors import ConfigError, FormatError

_SAFE_DTYPES = {"F32": (np.dtype("<f4"), 4), "F16": (np.dtype("<f2"), 2), "BF16": (np.dtype("<u2"), 2)}
_PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorRef:
    name: str
    file: str
    dtype: str  # safetensors dtype name
    shape: tuple[int, ...]
    begin: int  # absolute byte offsets in ``file``
    end: int


def _read_header(path: str) -> dict[str, TensorRef]:
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise FormatError(f"{path}: {size} bytes, too short for a safetensors header; truncated")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100 << 20:
            raise FormatError(
                f"{path}: header length {n} exceeds the file size {size}; truncated or not safetensors"
            )
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FormatError(f"{path}: the safetensors header is not valid JSON ({e}); damaged?") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: the safetensors header is not a JSON object")
    base, out = 8 + n, {}
    for name, rec in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (b, e) = rec["dtype"], tuple(int(s) for s in rec["shape"]), rec["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{path}: tensor '{name}' has a malformed header entry {rec!r}") from None
        if dtype not in _SAFE_DTYPES:
            raise FormatError(
                f"{path}: tensor '{name}' is {dtype}; edgequant reads F32, F16 and BF16 checkpoints "
                "(dequantize GPTQ/AWQ/bitsandbytes checkpoints to a float model first)"
            )
        n_el = int(np.prod(shape, dtype=np.int64))
        if not 0 <= b <= e or e - b != n_el * _SAFE_DTYPES[dtype][1]:
            raise FormatError(
                f"{path}: tensor '{name}' {dtype}{list(shape)} has data offsets [{b}, {e}] that do not "
                "match its size; the file is damaged"
            )
        if base + e > size:
            raise FormatError(
                f"{path}: tensor '{name}' ends at byte {base + e} but the file has {size} bytes; the file is "
                "truncated (re-download or re-save it)"
            )
        out[name] = TensorRef(name, path, dtype, shape, base + b, base + e)
    return out


class HFCheckpoint:
    """config.json and the safetensors tensors of an HF model folder (headers read eagerly, data lazily)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = os.fspath(folder)
        if not os.path.isdir(self.folder):
            raise ConfigError(f"{self.folder}: not a directory; give a Hugging Face model folder")
        cfg_path = os.path.join(self.folder, "config.json")
        if not os.path.isfile(cfg_path):
            raise ConfigError(f"{self.folder}: no config.json; is this a Hugging Face model folder?")
        with open(cfg_path, encoding="utf-8") as fh:
            try:
                self.config = json.load(fh)
            except json.JSONDecodeError as e:
                raise FormatError(f"{cfg_path}: not valid JSON ({e})") from None
        self.files = self._shard_files()
        self.tensors: dict[str, TensorRef] = {}
        for f in self.files:
            for name, ref in _read_header(f).items():
                if name in self.tensors:
                    raise FormatError(f"{self.folder}: tensor '{name}' is stored in two shards")
                self.tensors[name] = ref
        self._check_index()
        self._maps: dict[str, mmap.mmap] = {}

    def _shard_files(self) -> list[str]:
        index = os.path.join(self.folder, INDEX_FILE)
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as fh:
                self.weight_map = json.load(fh).get("weight_map") or {}
            files = sorted(set(self.weight_map.values()))
            missing = [f for f in files if not os.path.isfile(os.path.join(self.folder, f))]
            if missing:
                raise FormatError(
                    f"{self.folder}: {INDEX_FILE} names shard(s) that are missing: {', '.join(missing)}"
                )
            return [os.path.join(self.folder, f) for f in files]
        self.weight_map = {}
        files = sorted(glob.glob(os.path.join(self.folder, "*.safetensors")))
        if files:
            return files
        pickles = [
            os.path.basename(p) for pat in _PICKLE_PATTERNS for p in glob.glob(os.path.join(self.folder, pat))
        ]
        if pickles:
            raise FormatError(
                f"{self.folder}: only pickle checkpoints ({', '.join(sorted(pickles))}); edgequant never "
                "loads pickles (they can run code). Convert to safetensors first, in a trusted environment: "
                "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)"
            )
        raise ConfigError(f"{self.folder}: no *.safetensors weights found")

    def _check_index(self) -> None:
        if not self.weight_map:
            return
        absent = sorted(set(self.weight_map) - set(self.tensors))
        if absent:
            raise FormatError(
                f"{self.folder}: {INDEX_FILE} lists {len(absent)} tensor(s) no shard holds (first: "
                f"'{absent[0]}' in {self.weight_map[absent[0]]}); a shard is incomplete"
            )

    def check_loadable(self) -> None:
        """Everything the constructor checks (pickle-only, truncation, index); a no-op hook for callers."""

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    def get(self, name: str) -> np.ndarray:
        """Tensor ``name`` as float32 (a new array; the mapped pages are not kept resident)."""
        ref = self.tensors[name]
        mm = self._maps.get(ref.file)
        if mm is None:
            with open(ref.file, "rb") as fh:
                mm = self._maps[ref.file] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        dt, size = _SAFE_DTYPES[ref.dtype]
        raw = np.frombuffer(mm, dtype=dt, count=(ref.end - ref.begin) // size, offset=ref.begin)
        if ref.dtype == "BF16":
            out = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            out = raw.astype(np.float32)
        return out.reshape(ref.shape)

    def close(self) -> None:
        maps, self._maps = self._maps, {}
        for mm in maps.values():
            mm.close()

    def __enter__(self) -> HFCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
