"""Fuzz seeds: small valid files built in code, one per kind (``SEED_KINDS``).

* ``gguf_model``: a one-layer llama GGUF (F32) with a Mistral-like vocabulary;
* ``gguf_types``: one small tensor of every codec edgequant implements (Q8_1 included);
* ``imatrix_gguf`` / ``imatrix_dat``: an importance matrix for ``gguf_model``, both formats;
* ``safetensors``, ``config``, ``index``: the three files of a Hugging Face folder (mutated one at a time).
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np
from gguf.constants import GGUFValueType as V

from tests.support.gguf_bytes import gguf_bytes, small_llama

SEED_KINDS = ("gguf_model", "gguf_types", "imatrix_gguf", "imatrix_dat", "safetensors", "config", "index")


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
