"""Tiny llama-layout GGUF models built in code for tests (random weights, seeded, no download)."""

from __future__ import annotations

import numpy as np
from gguf.constants import GGMLQuantizationType as T
from gguf.constants import GGUFValueType as V

from edgequant.gguf.writer import GGUFStreamWriter


def tiny_llama_tensors(
    n_layer: int, width: int, ff: int, vocab: int, tied: bool = True
) -> list[tuple[str, tuple]]:
    """(name, ne) of a llama model, ne[0] = row length, in llama.cpp's converter order."""
    ts = [("token_embd.weight", (width, vocab)), ("output_norm.weight", (width,))]
    if not tied:
        ts.append(("output.weight", (width, vocab)))
    for i in range(n_layer):
        p = f"blk.{i}."
        ts += [
            (p + "attn_norm.weight", (width,)),
            (p + "ffn_down.weight", (ff, width)),
            (p + "ffn_gate.weight", (width, ff)),
            (p + "ffn_up.weight", (width, ff)),
            (p + "ffn_norm.weight", (width,)),
            (p + "attn_k.weight", (width, width // 4)),
            (p + "attn_output.weight", (width, width)),
            (p + "attn_q.weight", (width, width)),
            (p + "attn_v.weight", (width, width // 4)),
        ]
    return ts


def write_tiny_llama(
    path: str,
    *,
    n_layer: int = 2,
    width: int = 256,
    ff: int = 512,
    vocab: int = 320,
    tied: bool = True,
    seed: int = 0,
    weight_type: str = "F32",
    poison: tuple[str, int] | None = None,
) -> str:
    """Write a tiny llama GGUF. ``poison=(tensor, row)`` puts a NaN in that row (bad-input tests)."""
    rng = np.random.default_rng(seed)
    tensors = tiny_llama_tensors(n_layer, width, ff, vocab, tied)
    with GGUFStreamWriter(path) as w:
        for k, vt, v in [
            ("general.architecture", V.STRING, "llama"),
            ("general.name", V.STRING, "tiny"),
            ("llama.block_count", V.UINT32, n_layer),
            ("llama.context_length", V.UINT32, 256),
            ("llama.embedding_length", V.UINT32, width),
            ("llama.feed_forward_length", V.UINT32, ff),
            ("llama.attention.head_count", V.UINT32, 8),
            ("llama.attention.head_count_kv", V.UINT32, 2),
            ("llama.attention.layer_norm_rms_epsilon", V.FLOAT32, 1e-5),
            ("general.file_type", V.UINT32, 0 if weight_type == "F32" else 1),
        ]:
            w.add_kv(k, vt, v)
        data = {}
        for name, ne in tensors:
            x = (rng.standard_normal(ne[::-1]) * 0.05).astype(np.float32)
            if poison and poison[0] == name:
                x.reshape(-1, ne[0])[poison[1], 3] = np.nan
            t = "F32" if len(ne) == 1 else weight_type
            data[name] = x if t == "F32" else x.astype(np.float16)
            w.add_tensor_info(name, ne, T[t], data[name].nbytes)
        w.write_header()
        for name, _ in tensors:
            w.write_tensor_data(name, data[name])
    return path
