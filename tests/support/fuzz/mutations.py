"""Fuzz mutations: byte-level edits of any seed, and typed replacements that byte flips rarely reach.

* ``mutate(data, ops)``: a list of ``(op, position, value)`` triples, each op one of overwrite a byte,
  overwrite 1/2/4/8 bytes with an interesting integer, insert, delete a run, duplicate a chunk, truncate,
  flip a bit. Positions are fractions of the current length, so the same triple means the same thing on
  any seed.
* ``typed_kv_variant``: ``gguf_model`` with one metadata value of another type or range (the typed metadata
  layer above the reader); ``typed_imatrix_variant``: the same for a GGUF imatrix, or one entry made
  inconsistent; ``typed_json_variant``: a JSON seed (``config``, ``index``, the safetensors header) with one
  value of another type.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
from gguf.constants import GGUFValueType as V

from tests.support.fuzz.seeds import CONFIG, INDEX, seed_bytes
from tests.support.gguf_bytes import gguf_bytes, replace_kv, small_llama

INTERESTING = (
    0,
    1,
    2,
    3,
    7,
    8,
    31,
    32,
    255,
    256,
    0x7F,
    0x80,
    0xFF,
    0x7FFF,
    0x8000,
    0xFFFF,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFF,
    2**63 - 1,
    2**63,
    2**64 - 1,
)
N_OPS = 7


def _u(n: int, size: int) -> bytes:
    return (n % 2 ** (8 * size)).to_bytes(size, "little")


def mutate(data: bytes, ops: Sequence[tuple[int, float, int]]) -> bytes:
    """Apply ``ops`` (op index mod N_OPS, position in [0, 1), value) to ``data``."""
    buf = bytearray(data)
    for op, frac, value in ops:
        n = len(buf)
        pos = min(int(frac * n), max(0, n - 1)) if n else 0
        op %= N_OPS
        if op == 0 and n:  # overwrite one byte
            buf[pos] = value & 0xFF
        elif op == 1:  # an interesting integer of 1, 2, 4 or 8 bytes
            size = (1, 2, 4, 8)[value % 4]
            buf[pos : pos + size] = _u(INTERESTING[(value >> 2) % len(INTERESTING)], size)
        elif op == 2:  # insert random bytes
            k = 1 + value % 16
            buf[pos:pos] = bytes((value * (i + 7) * 2654435761) & 0xFF for i in range(k))
        elif op == 3 and n:  # delete a run
            del buf[pos : pos + 1 + value % 64]
        elif op == 4 and n:  # duplicate a chunk (repeats headers, keys...)
            k = 1 + value % 256
            buf[pos:pos] = buf[pos : pos + k]
        elif op == 5 and n:  # truncate
            del buf[max(1, pos) :]
        elif op == 6 and n:  # flip one bit
            buf[pos] ^= 1 << (value % 8)
    return bytes(buf)


# -- typed metadata mutations of gguf_model --

_TYPED_VALUES: tuple[tuple[int, Any, int | None], ...] = (
    (V.STRING, "abc", None),
    (V.STRING, "", None),
    (V.STRING, "[/INST]\n\x1b]0;x\x07", None),
    (V.FLOAT32, float("nan"), None),
    (V.FLOAT32, float("inf"), None),
    (V.FLOAT64, -1.5, None),
    (V.INT8, -1, None),
    (V.INT32, -1, None),
    (V.UINT64, 2**64 - 1, None),
    (V.INT64, -(2**63), None),
    (V.UINT32, 0, None),
    (V.UINT32, 1, None),
    (V.UINT32, 3, None),
    (V.UINT32, 1000, None),
    (V.UINT32, 2**32 - 1, None),
    (V.BOOL, True, None),
    (V.ARRAY, [], V.UINT32),
    (V.ARRAY, [2, 2], V.INT32),
    (V.ARRAY, ["a", "b"], V.STRING),
    (V.ARRAY, [(V.ARRAY, [(V.UINT8, [])])], V.ARRAY),
    (V.ARRAY, [float("nan")], V.FLOAT32),
)
_TYPED_KEYS = (
    "general.architecture",
    "general.name",
    "general.file_type",
    "general.alignment",
    "llama.block_count",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.expert_count",
    "llama.embedding_length",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
)


def typed_kv_variant(key_index: int, value_index: int, drop: bool = False) -> bytes:
    """``gguf_model`` with one metadata key replaced (or dropped) by an ill-typed or out-of-range value."""
    kvs, tensors = small_llama(width=32, ff=32)
    key = _TYPED_KEYS[key_index % len(_TYPED_KEYS)]
    if drop:
        return gguf_bytes(replace_kv(kvs, key), tensors)
    vt, val, at = _TYPED_VALUES[value_index % len(_TYPED_VALUES)]
    return gguf_bytes(replace_kv(kvs, key, vt, val, at), tensors)


def typed_imatrix_variant(key_index: int, value_index: int) -> bytes:
    """A GGUF imatrix for ``gguf_model`` with one key replaced by an ill-typed value, or one entry made
    inconsistent (more counts than matrices, a negative or NaN count, a 3-D or F16 tensor, a lone tensor)."""
    _, tensors = small_llama(width=32, ff=32)
    names = [name for name, ne, _, _ in tensors if len(ne) == 2]
    kvs = [
        ("general.type", V.STRING, "imatrix"),
        ("imatrix.datasets", V.ARRAY, ["fuzz.txt"], V.STRING),
        ("imatrix.chunk_count", V.UINT32, 3),
        ("imatrix.chunk_size", V.UINT32, 64),
    ]
    ne0 = {name: ne[0] for name, ne, _, _ in tensors}
    f32 = 0
    ts = []
    for name in names:
        ts.append((name + ".in_sum2", (ne0[name], 1), f32, np.full(ne0[name], 2.0, np.float32).tobytes()))
        ts.append((name + ".counts", (1, 1), f32, np.array([4.0], np.float32).tobytes()))
    n_keys = len(kvs)
    k = key_index % (n_keys + 6)
    if k < n_keys:
        vt, val, at = _TYPED_VALUES[value_index % len(_TYPED_VALUES)]
        kvs[k] = (kvs[k][0], vt, val, at)
    else:
        j = 2 * (value_index % len(names))
        name, ne, tid, _ = ts[j + 1]
        if k == n_keys:  # two counts, one matrix of sums
            ts[j + 1] = (name, (1, 2), tid, np.array([4.0, 4.0], np.float32).tobytes())
        elif k == n_keys + 1:  # negative count
            ts[j + 1] = (name, ne, tid, np.array([-4.0], np.float32).tobytes())
        elif k == n_keys + 2:  # NaN count
            ts[j + 1] = (name, ne, tid, np.array([np.nan], np.float32).tobytes())
        elif k == n_keys + 3:  # a 3-D sums tensor
            sname, sne, stid, sdata = ts[j]
            ts[j] = (sname, (sne[0], 1, 1), stid, sdata)
        elif k == n_keys + 4:  # counts stored as F16
            ts[j + 1] = (name, ne, 1, np.array([4.0], np.float16).tobytes())
        else:  # a lone in_sum2
            del ts[j + 1]
    return gguf_bytes(kvs, ts)


_JSON_VALUES = (
    "abc",
    "",
    -1,
    0,
    1.5,
    float("nan"),
    True,
    None,
    [],
    [1, 2],
    {},
    "LlamaForCausalLM",
    2**64,
    ["0", "16"],
    [2.0, 4],
    "\udcff[/INST]\x1b",
)


def typed_json_variant(kind: str, key_index: int, value_index: int) -> bytes:
    """A JSON seed (``config``, ``index``, or the ``safetensors`` header) with one value replaced by a value
    of another type (strings for numbers, a float shape, ``architectures`` as a string...), or the whole
    document replaced (``key_index`` past the keys)."""
    value = _JSON_VALUES[value_index % len(_JSON_VALUES)]
    if kind == "safetensors":
        raw = seed_bytes("safetensors")
        n = struct.unpack("<Q", raw[:8])[0]
        header, data = json.loads(raw[8 : 8 + n]), raw[8 + n :]
        names = [k for k in header if k != "__metadata__"]
        fields = [(name, f) for name in names for f in ("dtype", "shape", "data_offsets")] + [
            ("__metadata__", None)
        ]
        name, field = fields[key_index % len(fields)]
        if field is None:
            header[name] = {"format": value}
        else:
            header[name][field] = value
        body = json.dumps(header).encode()
        body += b" " * (-len(body) % 8)
        return struct.pack("<Q", len(body)) + body + data
    doc = dict(CONFIG) if kind == "config" else json.loads(json.dumps(INDEX))
    target = doc if kind == "config" else doc["weight_map"]
    keys = list(target)
    if key_index % (len(keys) + 1) == len(keys):
        return json.dumps(value).encode()
    target[keys[key_index % (len(keys) + 1)]] = value
    return json.dumps(doc).encode()
