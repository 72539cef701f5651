"""GGUF -> Hugging Face folder: ``export_hf``.

Writes, atomically (a temporary folder renamed at the end):

* ``model.safetensors``: every tensor dequantized (ggml's exact ``to_float`` values), rope permutation of
  q/k undone, HF names; stored as F32 (default, lossless for any source), F16 or BF16. F16 rounds to
  nearest-even, BF16 rounds to nearest-even on the upper 16 bits of the float32.
* ``config.json`` and ``generation_config.json`` from the GGUF metadata (``LlamaConfig``/``Qwen2Config``).
* ``tokenizer.json`` rebuilt from the GGUF vocabulary/merges/pre-tokenizer
  (:mod:`edgequant.models.gguf_tokenizer`), ``tokenizer_config.json`` (special tokens, add_bos/add_eos,
  chat template) and ``special_tokens_map.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from edgequant.errors import ConfigError
from edgequant.gguf.reader import GGUFFile
from edgequant.models.atomic_dir import atomic_directory
from edgequant.models.gguf_model import gguf_kv, gguf_to_hf_names, hf_config_dict, iter_hf_tensors
from edgequant.models.gguf_tokenizer import (
    special_tokens_from_gguf,
    spm_model_from_gguf,
    tokenizer_json_from_gguf,
)
from edgequant.models.rope import ROPE_TENSORS
from edgequant.models.safetensors import SafetensorsStreamWriter

_DTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}


@dataclass
class ExportResult:
    src: str
    out_dir: str
    arch: str
    dtype: str
    n_tensors: int
    n_params: int
    bytes_weights: int
    files: list[str]


def _to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, round to nearest even (NaN kept quiet)."""
    u = x.astype(np.float32).view(np.uint32)
    rounded = (u + (0x7FFF + ((u >> 16) & 1))) >> 16
    return np.where(np.isnan(x), (u >> 16) | 0x40, rounded).astype(np.uint16)


def _json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.write("\n")


def export_hf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, dtype: str = "f32", on_tensor=None):
    """Write a Hugging Face model folder (transformers loads it) for a llama/qwen2 GGUF; an ExportResult.

    ``on_tensor(i, n, name)`` is called after each tensor. Raises ConfigError for an architecture or
    tokenizer that cannot be exported, FormatError for a malformed file, OutputError if ``out_dir`` exists
    and is not empty. Nothing is left at ``out_dir`` on failure.
    """
    src, out_dir = os.fspath(gguf_path), os.fspath(out_dir)
    key = dtype.lower()
    if key not in _DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(_DTYPES)}, got '{dtype}'", option="dtype")
    st_dtype = _DTYPES[key]
    with GGUFFile(src) as reader:
        kv = gguf_kv(reader)
        spec, cfg = hf_config_dict(reader)
        tok_json = tokenizer_json_from_gguf(kv, src)  # fail on the tokenizer before writing anything
        names = gguf_to_hf_names(spec, cfg["num_hidden_layers"])
        tensors = [t for t in reader.tensors if t.name not in ROPE_TENSORS]
        cfg["torch_dtype"] = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[st_dtype]
        with atomic_directory(out_dir) as tmp:
            w = SafetensorsStreamWriter(os.path.join(tmp, "model.safetensors"), {"format": "pt"})
            for t in tensors:
                if t.name not in names:
                    raise ConfigError(f"{src}: tensor '{t.name}' has no Hugging Face counterpart")
                w.declare(names[t.name], st_dtype, t.np_shape)
            n_params = 0
            with w:
                for i, (hf, x) in enumerate(iter_hf_tensors(reader, spec, cfg)):
                    if st_dtype == "BF16":
                        w.write(hf, _to_bf16_bits(x), "BF16")
                    else:
                        w.write(hf, x.astype(np.float16) if st_dtype == "F16" else x)
                    n_params += x.size
                    if on_tensor:
                        on_tensor(i, len(tensors), hf)
            _json(os.path.join(tmp, "config.json"), cfg)
            ids = ("bos_token_id", "eos_token_id", "pad_token_id")
            gen = {k: cfg[k] for k in ids if cfg.get(k) is not None}
            _json(os.path.join(tmp, "generation_config.json"), gen)
            _json(os.path.join(tmp, "tokenizer.json"), tok_json)
            if kv.get("tokenizer.ggml.model") == "llama":  # SentencePiece: its model too, to convert back
                with open(os.path.join(tmp, "tokenizer.model"), "wb") as fh:
                    fh.write(spm_model_from_gguf(kv))
            special = special_tokens_from_gguf(kv)
            model = kv.get("tokenizer.ggml.model")
            tok_cfg = {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "clean_up_tokenization_spaces": False,
                "add_bos_token": bool(kv.get("tokenizer.ggml.add_bos_token", model == "llama")),
                "add_eos_token": bool(kv.get("tokenizer.ggml.add_eos_token", False)),
                "model_max_length": cfg["max_position_embeddings"],
                **special,
            }
            if kv.get("tokenizer.chat_template") is not None:
                tok_cfg["chat_template"] = str(kv["tokenizer.chat_template"])
            _json(os.path.join(tmp, "tokenizer_config.json"), tok_cfg)
            _json(os.path.join(tmp, "special_tokens_map.json"), special)
            files = sorted(os.listdir(tmp))
            size = os.path.getsize(os.path.join(tmp, "model.safetensors"))
    return ExportResult(src, os.path.abspath(out_dir), spec.hf_arch, key, len(tensors), n_params, size, files)
