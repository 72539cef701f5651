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
import math
import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

from edgequant.core.text import clean, quote
from edgequant.errors import ConfigError, FormatError
from edgequant.models.hf_config import load_config, load_index

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


def _strict_header(path: str) -> None:
    """The safetensors library's own header parser as a second gate (it also refuses gaps and overlaps
    between tensors, and unknown dtypes); skipped when the package is not installed."""
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError:
        return
    try:
        with safe_open(path, framework="numpy"):
            pass
    except SafetensorError as e:
        raise FormatError(f"{path}: not a valid safetensors file ({clean(e, 160)})") from None


def _is_int(v: object) -> bool:
    return type(v) is int and v >= 0


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
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise FormatError(
            f"{path}: the safetensors header is not UTF-8 (invalid byte at {8 + e.start})"
        ) from None
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: the safetensors header is not valid JSON ({e.msg}); damaged?") from None
    except RecursionError:
        raise FormatError(f"{path}: the safetensors header is nested too deeply; damaged?") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: the safetensors header is not a JSON object")
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise FormatError(f"{path}: __metadata__ must be an object of strings")
    base, out = 8 + n, {}
    for name, rec in header.items():
        if name == "__metadata__":
            continue
        what = f"{path}: tensor {quote(name)}"
        if not isinstance(rec, dict) or set(rec) - {"dtype", "shape", "data_offsets"}:
            raise FormatError(f"{what}: header entry must be an object with dtype, shape, data_offsets")
        dtype, shape, offsets = rec.get("dtype"), rec.get("shape"), rec.get("data_offsets")
        if not isinstance(dtype, str):
            raise FormatError(f"{what}: dtype {clean(json.dumps(dtype), 40)} is not a string")
        if not isinstance(shape, list) or not all(_is_int(d) for d in shape) or len(shape) > 8:
            raise FormatError(
                f"{what}: shape {clean(json.dumps(shape), 60)} is not a list of at most 8 integers >= 0"
            )
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_int, offsets))):
            raise FormatError(
                f"{what}: data_offsets {clean(json.dumps(offsets), 60)} is not a pair of integers >= 0"
            )
        b, e = offsets
        if dtype not in _SAFE_DTYPES:
            raise FormatError(
                f"{what} is {clean(dtype, 20)}; edgequant reads F32, F16 and BF16 checkpoints "
                "(dequantize GPTQ/AWQ/bitsandbytes checkpoints to a float model first)"
            )
        n_el = math.prod(shape)
        if not b <= e or e - b != n_el * _SAFE_DTYPES[dtype][1]:
            raise FormatError(
                f"{what} {dtype}{shape} has data offsets [{b}, {e}] that do not match its size; "
                "the file is damaged"
            )
        if base + e > size:
            raise FormatError(
                f"{what} ends at byte {base + e} but the file has {size} bytes; the file is "
                "truncated (re-download or re-save it)"
            )
        out[name] = TensorRef(name, path, dtype, tuple(shape), base + b, base + e)
    _strict_header(path)
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
        self.config = load_config(self.folder)
        self.files = self._shard_files()
        self.tensors: dict[str, TensorRef] = {}
        for f in self.files:
            for name, ref in _read_header(f).items():
                if name in self.tensors:
                    raise FormatError(f"{self.folder}: tensor {quote(name)} is stored in two shards")
                self.tensors[name] = ref
        self._check_index()
        self._maps: dict[str, mmap.mmap] = {}

    def _shard_files(self) -> list[str]:
        index = os.path.join(self.folder, INDEX_FILE)
        if os.path.isfile(index):
            self.weight_map = load_index(index)
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
