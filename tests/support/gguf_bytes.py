"""GGUF files as raw bytes, built without any validation: hostile-input tests and the fuzzers' seeds.

``gguf_bytes(kvs, tensors)`` lays out exactly what it is given (a key of any value type, an alignment stored
as INT8, a newline in a tensor name...), so tests can produce every malformed file the reader must refuse
and every well-formed-but-wrong file the layers above it must refuse. ``small_llama`` gives the (kvs,
tensors) of a valid one-layer llama model with 32-wide rows, a few KiB in all.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
from gguf.constants import GGUFValueType as V

from edgequant.gguf.reader import SCALAR_FORMATS

__all__ = ["gguf_bytes", "pack_value", "replace_kv", "small_llama", "write_gguf"]


def _pack_str(s: str | bytes) -> bytes:
    b = s.encode("utf-8", "surrogatepass") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


def pack_value(vtype: int, value: Any, array_type: int | None = None) -> bytes:
    """The bytes of one value (after the key and type): scalars, strings, arrays (nested: lists of
    ``(etype, items)``)."""
    vtype = V(vtype)
    if vtype == V.STRING:
        return _pack_str(value)
    if vtype == V.ARRAY:
        et = V(array_type)
        items = list(value)
        body = struct.pack("<IQ", et, len(items))
        if et == V.STRING:
            return body + b"".join(_pack_str(x) for x in items)
        if et == V.ARRAY:
            return body + b"".join(pack_value(V.ARRAY, sub, sub_et) for sub_et, sub in items)
        return body + np.asarray(items, dtype=SCALAR_FORMATS[et][1]).tobytes()
    fmt, _ = SCALAR_FORMATS[vtype]
    return struct.pack(fmt, value)


def gguf_bytes(
    kvs: list[tuple[str | bytes, int, Any] | tuple[str | bytes, int, Any, int | None]],
    tensors: list[tuple[str | bytes, tuple[int, ...], int, bytes]],
    *,
    alignment: int = 32,
    version: int = 3,
) -> bytes:
    """A GGUF file: header, the given KVs as given, tensor infos, padding, data (each tensor padded to
    ``alignment``, which only sets the layout: write a ``general.alignment`` KV yourself)."""
    out = [b"GGUF", struct.pack("<IQQ", version, len(tensors), len(kvs))]
    for item in kvs:
        key, vtype, value = item[:3]
        at = item[3] if len(item) > 3 else None
        out.append(_pack_str(key) + struct.pack("<I", vtype) + pack_value(vtype, value, at))
    offset = 0
    offsets = []
    for name, ne, type_id, data in tensors:
        offsets.append(offset)
        out.append(_pack_str(name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, type_id, offset))
        offset += (len(data) + alignment - 1) // alignment * alignment
    head = b"".join(out)
    head += b"\0" * (-len(head) % alignment)
    body = bytearray()
    for (_, _, _, data), off in zip(tensors, offsets, strict=True):
        body += b"\0" * (off - len(body)) + bytes(data)
    body += b"\0" * (-len(body) % alignment)
    return head + bytes(body)


def small_llama(
    *,
    n_layer: int = 1,
    width: int = 32,
    ff: int = 64,
    vocab: int = 32,
    seed: int = 0,
    weight_type: str = "F32",
) -> tuple[list, list]:
    """(kvs, tensors) of a valid llama GGUF small enough to fuzz: F32 norms, ``weight_type`` (F32/F16)
    matrices, a 32-token vocabulary with the Mistral v0.3 control tokens ``[INST]`` and ``[/INST]``."""
    rng = np.random.default_rng(seed)
    tokens = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"] + [f"t{i}" for i in range(vocab - 5)]
    kvs = [
        ("general.architecture", V.STRING, "llama"),
        ("general.name", V.STRING, "small"),
        ("llama.block_count", V.UINT32, n_layer),
        ("llama.context_length", V.UINT32, 64),
        ("llama.embedding_length", V.UINT32, width),
        ("llama.feed_forward_length", V.UINT32, ff),
        ("llama.attention.head_count", V.UINT32, 4),
        ("llama.attention.head_count_kv", V.UINT32, 2),
        ("llama.attention.layer_norm_rms_epsilon", V.FLOAT32, 1e-5),
        ("general.file_type", V.UINT32, 0 if weight_type == "F32" else 1),
        ("tokenizer.ggml.model", V.STRING, "llama"),
        ("tokenizer.ggml.tokens", V.ARRAY, tokens, V.STRING),
        ("tokenizer.ggml.scores", V.ARRAY, [0.0] * vocab, V.FLOAT32),
    ]
    shapes = [("token_embd.weight", (width, vocab)), ("output_norm.weight", (width,))]
    for i in range(n_layer):
        p = f"blk.{i}."
        shapes += [
            (p + "attn_norm.weight", (width,)),
            (p + "attn_q.weight", (width, width)),
            (p + "attn_k.weight", (width, width // 2)),
            (p + "attn_v.weight", (width, width // 2)),
            (p + "attn_output.weight", (width, width)),
            (p + "ffn_norm.weight", (width,)),
            (p + "ffn_gate.weight", (width, ff)),
            (p + "ffn_up.weight", (width, ff)),
            (p + "ffn_down.weight", (ff, width)),
        ]
    tensors = []
    for name, ne in shapes:
        x = (rng.standard_normal(ne[::-1]) * 0.05).astype(np.float32)
        tname = "F32" if len(ne) == 1 else weight_type
        tid = 0 if tname == "F32" else 1
        data = x.tobytes() if tid == 0 else x.astype(np.float16).tobytes()
        tensors.append((name, ne, tid, data))
    return kvs, tensors


def write_gguf(path: str, kvs: list, tensors: list, **kw: Any) -> str:
    with open(path, "wb") as f:
        f.write(gguf_bytes(kvs, tensors, **kw))
    return path


def replace_kv(kvs: list, key: str, *new: Any) -> list:
    """``kvs`` with ``key``'s entry replaced by ``(key, *new)``: appended if absent, dropped if no ``new``."""
    out = [kv for kv in kvs if kv[0] != key]
    if new:
        idx = next((i for i, kv in enumerate(kvs) if kv[0] == key), len(out))
        out.insert(idx, (key, *new))
    return out
