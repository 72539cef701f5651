"""Hugging Face ``config.json`` and ``model.safetensors.index.json``, read and checked against a small schema.

Every problem is one ``FormatError`` line naming the file, the key, what it holds and what was expected:
not UTF-8, not JSON, not an object, ``architectures`` that is not a list of strings, ``num_hidden_layers:
"abc"``, a negative or boolean size, a non-finite ``rms_norm_eps``... ``SCHEMA`` lists the keys edgequant
reads; ``REQUIRED`` those each supported architecture needs (Llama, Mistral and Qwen2 need the same ones).
Keys edgequant does not read are left alone.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from edgequant.core.text import clean, quote
from edgequant.errors import FormatError

# Upper bounds: far above any real model, low enough that a product of sizes cannot exhaust memory unseen.
_MAX_SIZE = 1 << 24
_MAX_LAYERS = 4096

# key -> (kind, lower bound, upper bound); kinds: "int" (not bool), "float" (finite), "bool", "str",
# "str_list", "dict_or_null"
SCHEMA: dict[str, tuple[str, float | None, float | None]] = {
    "architectures": ("str_list", None, None),
    "model_type": ("str", None, None),
    "hidden_size": ("int", 1, _MAX_SIZE),
    "intermediate_size": ("int", 1, _MAX_SIZE),
    "num_hidden_layers": ("int", 1, _MAX_LAYERS),
    "num_attention_heads": ("int", 1, _MAX_SIZE),
    "num_key_value_heads": ("int", 1, _MAX_SIZE),
    "head_dim": ("int", 1, _MAX_SIZE),
    "vocab_size": ("int", 1, 1 << 28),
    "max_position_embeddings": ("int", 1, 1 << 40),
    "rms_norm_eps": ("float", 0.0, 1.0),
    "rope_theta": ("float", 0.0, None),
    "tie_word_embeddings": ("bool", None, None),
    "attention_bias": ("bool", None, None),
    "rope_scaling": ("dict_or_null", None, None),
    "rope_parameters": ("dict_or_null", None, None),
    "bos_token_id": ("int_or_null", 0, 1 << 31),
    "eos_token_id": ("int_or_null", 0, 1 << 31),
    "pad_token_id": ("int_or_null", 0, 1 << 31),
}
REQUIRED = (
    "architectures",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
)


def read_json_file(path: str, what: str) -> Any:
    """JSON from ``path`` with one-line errors for unreadable, non-UTF-8 or malformed content."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read((64 << 20) + 1)
    except OSError as e:
        raise FormatError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    if len(raw) > 64 << 20:
        raise FormatError(f"{path}: {what} is larger than 64 MiB; not a real {what}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: {what} is not UTF-8 text (invalid byte at offset {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise FormatError(
            f"{path}: {what} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
        ) from None
    except RecursionError:
        raise FormatError(f"{path}: {what} is nested too deeply to be a real {what}") from None


def _describe(v: Any) -> str:
    kind = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
        type(None): "null",
    }.get(type(v), type(v).__name__)
    return f"{kind} {clean(json.dumps(v) if not isinstance(v, (list, dict)) else '', 40)}".rstrip()


def _check_value(where: str, key: str, v: Any, kind: str, lo: float | None, hi: float | None) -> None:
    ok = True
    if kind in ("int", "int_or_null"):
        if v is None and kind == "int_or_null":
            return
        ok = type(v) is int and (lo is None or v >= lo) and (hi is None or v <= hi)
        expected = "an integer" + (f" in [{lo}, {hi}]" if lo is not None else "")
    elif kind == "float":
        ok = (
            type(v) in (int, float)
            and math.isfinite(v)
            and (lo is None or v > lo)
            and (hi is None or v <= hi)
        )
        expected = (
            "a finite number" + (f" > {lo}" if lo is not None else "") + (f" and <= {hi}" if hi else "")
        )
    elif kind == "bool":
        ok, expected = type(v) is bool, "true or false"
    elif kind == "str":
        ok, expected = isinstance(v, str), "a string"
    elif kind == "str_list":
        ok = isinstance(v, list) and all(isinstance(a, str) for a in v)
        expected = 'a list of strings such as ["LlamaForCausalLM"]'
    else:  # dict_or_null
        ok, expected = v is None or isinstance(v, dict), "an object or null"
    if not ok:
        raise FormatError(f"{where}: {quote(key)} is {_describe(v)}; expected {expected}")


def check_config(config: Any, where: str, required: tuple[str, ...] = ()) -> dict:
    """``config`` checked against ``SCHEMA`` (keys present) and ``required`` (keys that must be there)."""
    if not isinstance(config, dict):
        raise FormatError(f"{where}: config.json holds {_describe(config)}; expected a JSON object")
    for key in required:
        if config.get(key) is None:
            raise FormatError(f"{where}: config.json lacks {quote(key)}, which this architecture needs")
    for key, (kind, lo, hi) in SCHEMA.items():
        if key in config:
            _check_value(where, key, config[key], kind, lo, hi)
    n_head, n_kv = config.get("num_attention_heads"), config.get("num_key_value_heads")
    if n_head and n_kv and n_head % n_kv:
        raise FormatError(f"{where}: num_key_value_heads {n_kv} does not divide num_attention_heads {n_head}")
    hidden = config.get("hidden_size")
    if n_head and hidden and not config.get("head_dim") and hidden % n_head:
        raise FormatError(f"{where}: hidden_size {hidden} is not a multiple of num_attention_heads {n_head}")
    return config


def load_config(folder: str) -> dict:
    """``folder/config.json``, read and checked against the schema (required keys are the caller's)."""
    path = os.path.join(folder, "config.json")
    return check_config(read_json_file(path, "config.json"), path)


def load_index(path: str) -> dict[str, str]:
    """The ``weight_map`` (tensor name -> shard file name) of a ``model.safetensors.index.json``."""
    index = read_json_file(path, "safetensors index")
    if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
        raise FormatError(f'{path}: expected a JSON object with a "weight_map" object (tensor -> shard file)')
    wm = index["weight_map"]
    for name, shard in wm.items():
        if (
            not isinstance(shard, str)
            or not shard
            or os.path.basename(shard) != shard
            or shard in (".", "..")
        ):
            raise FormatError(
                f"{path}: tensor {quote(name)} maps to {clean(json.dumps(shard), 60)}; expected a shard file "
                "name in the same folder"
            )
    return wm
