"""Fuzzing: small valid seed files built in code, mutations, and the in-process targets they are run through.

Used by ``tests/fuzz/`` (driven by hypothesis) and ``benchmarks/fuzz_campaign.py`` (a long seeded campaign
with a per-file timeout and peak RSS). The contract checked: whatever the bytes, every target either
succeeds or raises an ``edgequant.errors.EdgequantError`` subclass (or ``OSError`` for the file system);
any other exception is a bug. ``--json``-style output of the summary must be strict JSON.

Seed kinds (``SEED_KINDS``):

* ``gguf_model``: a one-layer llama GGUF (F32) with a Mistral-like vocabulary;
* ``gguf_types``: one small tensor of every codec edgequant implements (Q8_1 included);
* ``imatrix_gguf`` / ``imatrix_dat``: an importance matrix for ``gguf_model``, both formats;
* ``safetensors``, ``config``, ``index``: the three files of a Hugging Face folder (mutated one at a time).

Mutations (``mutate``): a list of ``(op, position, value)`` triples, each op one of overwrite a byte,
overwrite 2/4/8 bytes with an interesting integer, insert, delete, duplicate a chunk, truncate. Positions
are fractions of the current length, so the same triple means the same thing on any seed. ``typed_kv``
mutations replace one metadata value of ``gguf_model`` with a value of another type or range (what byte
flips rarely reach: the typed metadata layer above the reader).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from gguf.constants import GGUFValueType as V

from edgequant.testing.gguf_bytes import gguf_bytes, replace_kv, small_llama

SEED_KINDS = ("gguf_model", "gguf_types", "imatrix_gguf", "imatrix_dat", "safetensors", "config", "index")

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


# -- seeds --


def _gguf_types() -> bytes:
    from edgequant.gguf.codecs import codec_names, get_codec, quantize

    rng = np.random.default_rng(1)
    tensors = []
    for name in codec_names():
        c = get_codec(name)
        n = max(c.block_size, 32)
        x = rng.standard_normal((2, n)).astype(np.float32)
        data = x.tobytes() if name == "F32" else quantize(x, name, check_finite=False).tobytes()
        tensors.append((f"t.{name.lower()}.weight", (n, 2), c.type_id, data))
    kvs = [("general.architecture", V.STRING, "llama"), ("llama.block_count", V.UINT32, 1)]
    return gguf_bytes(kvs, tensors)


def _imatrix_stats():
    from edgequant.gguf.imatrix import ImatrixEntry

    _, tensors = small_llama(width=32, ff=32)
    rng = np.random.default_rng(2)
    stats = {}
    for name, ne, _, _ in tensors:
        if len(ne) == 2:
            stats[name] = ImatrixEntry(
                rng.random((1, ne[0])).astype(np.float32) * 10, np.array([5], np.int64)
            )
    return stats


def _safetensors_bytes() -> bytes:
    rng = np.random.default_rng(3)
    arrays = {
        "model.embed_tokens.weight": rng.standard_normal((8, 4)).astype(np.float32),
        "model.norm.weight": np.ones(4, np.float16),
    }
    header, offset, data = {"__metadata__": {"format": "pt"}}, 0, b""
    for name, a in arrays.items():
        dt = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}[a.dtype]
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        data += a.tobytes()
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4,
    "intermediate_size": 8,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "vocab_size": 8,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 64,
    "tie_word_embeddings": True,
}
INDEX = {
    "metadata": {"total_size": 144},
    "weight_map": {
        "model.embed_tokens.weight": "model.safetensors",
        "model.norm.weight": "model.safetensors",
    },
}


def seed_bytes(kind: str, _cache: dict[str, bytes] = {}) -> bytes:  # noqa: B006  (a deliberate cache)
    """The valid seed file of ``kind`` (built once per process)."""
    if kind in _cache:
        return _cache[kind]
    if kind == "gguf_model":
        kvs, tensors = small_llama(width=32, ff=32)
        data = gguf_bytes(kvs, tensors)
    elif kind == "gguf_types":
        data = _gguf_types()
    elif kind in ("imatrix_gguf", "imatrix_dat"):
        import tempfile

        from edgequant.gguf.imatrix import save_imatrix_dat, save_imatrix_gguf

        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "im")
            if kind == "imatrix_gguf":
                save_imatrix_gguf(p, _imatrix_stats(), 64, ["fuzz.txt"])
            else:
                save_imatrix_dat(p, _imatrix_stats(), 64, "fuzz.txt")
            with open(p, "rb") as f:
                data = f.read()
    elif kind == "safetensors":
        data = _safetensors_bytes()
    elif kind == "config":
        data = json.dumps(CONFIG, indent=1).encode()
    elif kind == "index":
        data = json.dumps(INDEX, indent=1).encode()
    else:
        raise ValueError(f"unknown seed kind {kind!r}; one of {SEED_KINDS}")
    _cache[kind] = data
    return data


# -- targets --


def _strict_json(obj: Any) -> None:
    from edgequant.core.text import dumps

    def bad(token: str) -> None:
        raise AssertionError(f"non-strict JSON token {token}")

    json.loads(dumps(obj), parse_constant=bad)


def exercise_gguf(path: str, workdir: str) -> None:
    """Reader (every tensor decoded), summary (strict JSON), planning, quantize and dequantize."""
    from edgequant.gguf.reader import GGUFFile
    from edgequant.gguf.summary import summarize
    from edgequant.workflows.dequantize import dequantize_model
    from edgequant.workflows.quantize import plan_model, quantize_model

    with GGUFFile(path) as r:
        for t in r.tensors:
            r.tensor_f32(t)
    _strict_json(summarize(path))
    plan_model(path, "Q4_K_M")
    out = os.path.join(workdir, "out.gguf")
    try:
        quantize_model(path, out, "Q4_0", allow_requantize=True)
        dequantize_model(out, os.path.join(workdir, "back.gguf"))
    finally:
        for f in ("out.gguf", "back.gguf"):
            p = os.path.join(workdir, f)
            if os.path.exists(p):
                os.unlink(p)


def exercise_imatrix(path: str, workdir: str) -> None:
    """Load the imatrix both ways, then quantize the seed model with it (sizes checked against tensors)."""
    from edgequant.gguf.imatrix import load_imatrix, load_imatrix_stats
    from edgequant.workflows.quantize import quantize_model

    st = load_imatrix_stats(path)
    st.raw(64)
    im = load_imatrix(path)
    _strict_json({"entries": len(im.entries), "datasets": im.datasets, "chunk_count": im.chunk_count})
    model = os.path.join(workdir, "model.gguf")
    if not os.path.exists(model):
        with open(model, "wb") as f:
            f.write(seed_bytes("gguf_model"))
    out = os.path.join(workdir, "out.gguf")
    try:
        quantize_model(model, out, "Q4_K_M", imatrix=im)
    finally:
        if os.path.exists(out):
            os.unlink(out)


def exercise_hf(folder: str, workdir: str) -> None:
    """An HF folder (config.json, model.safetensors, optional index): checkpoint opened, every tensor read,
    the architecture and its required config keys checked."""
    from edgequant.models.architectures import arch_from_config
    from edgequant.models.hf_checkpoint import HFCheckpoint

    with HFCheckpoint(folder) as ck:
        for name in ck.tensors:
            ck.get(name)
        arch_from_config(ck.config, os.path.join(folder, "config.json"))


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


def write_case(kind: str, data: bytes, workdir: str) -> tuple[str, Callable[[str, str], None]]:
    """Lay out ``data`` as a file of ``kind`` in ``workdir``; returns (path to pass, target function)."""
    if kind.startswith("gguf"):
        path = os.path.join(workdir, "in.gguf")
        with open(path, "wb") as f:
            f.write(data)
        return path, exercise_gguf
    if kind.startswith("imatrix"):
        path = os.path.join(workdir, "imatrix" + (".gguf" if kind.endswith("gguf") else ".dat"))
        with open(path, "wb") as f:
            f.write(data)
        return path, exercise_imatrix
    folder = os.path.join(workdir, "hf")
    os.makedirs(folder, exist_ok=True)
    files = {
        "config.json": seed_bytes("config"),
        "model.safetensors": seed_bytes("safetensors"),
    }
    if kind == "index":
        files["model.safetensors.index.json"] = seed_bytes("index")
    files[
        {
            "config": "config.json",
            "safetensors": "model.safetensors",
            "index": "model.safetensors.index.json",
        }[kind]
    ] = data
    for name in os.listdir(folder):
        os.unlink(os.path.join(folder, name))
    for name, b in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(b)
    return folder, exercise_hf


def run_case(kind: str, data: bytes, workdir: str) -> None:
    """Write and exercise one case. Raises what the target raises (EdgequantError/OSError are fine)."""
    path, target = write_case(kind, data, workdir)
    target(path, workdir)


def expected_error(e: BaseException) -> bool:
    from edgequant.errors import EdgequantError

    return isinstance(e, EdgequantError)
