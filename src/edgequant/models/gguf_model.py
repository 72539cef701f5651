"""GGUF -> Hugging Face: config.json from GGUF metadata and the weights under their HF names.

Weights are dequantized with edgequant's codecs (exactly ggml's ``to_float``), the rope permutation of
q/k rows is undone for llama (see :mod:`edgequant.models.architectures`), and names are mapped with
gguf-py's ``TensorNameMap`` (the table llama.cpp's converter uses), inverted. A GGUF without
``output.weight`` has tied embeddings (``tie_word_embeddings = true``, no ``lm_head.weight``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from edgequant.errors import ConfigError, FormatError
from edgequant.gguf.codecs import dequantize
from edgequant.gguf.reader import GGUFFile
from edgequant.models.architectures import ArchSpec, arch_from_gguf, unpermute_qk


def gguf_kv(reader: GGUFFile) -> dict:
    return {k: v.value for k, v in reader.kvs.items()}


def _hp(kv: dict, arch: str, key: str, where: str, default=None):
    v = kv.get(f"{arch}.{key}", default)
    if v is None:
        raise FormatError(f"{where}: metadata lacks {arch}.{key}; cannot build a Hugging Face config")
    if isinstance(v, (list, tuple, np.ndarray)):
        v = v[0]
    return v


def hf_config_dict(reader: GGUFFile) -> tuple[ArchSpec, dict]:
    """(ArchSpec, config.json dict) for the model in ``reader``."""
    kv, where = gguf_kv(reader), reader.path
    arch = str(kv.get("general.architecture", ""))
    spec = arch_from_gguf(arch, where)
    names = {t.name for t in reader.tensors}
    n_embd = int(_hp(kv, arch, "embedding_length", where))
    n_head = int(_hp(kv, arch, "attention.head_count", where))
    n_head_kv = int(_hp(kv, arch, "attention.head_count_kv", where, n_head))
    head_dim = int(_hp(kv, arch, "attention.key_length", where, n_embd // n_head))
    tokens = kv.get("tokenizer.ggml.tokens")
    n_vocab = int(_hp(kv, arch, "vocab_size", where, len(tokens) if tokens is not None else None))
    if "token_embd.weight" in names:
        n_vocab = reader.tensor("token_embd.weight").shape_ne[1]
    cfg = {
        "architectures": [spec.hf_arch],
        "model_type": spec.model_type,
        "vocab_size": n_vocab,
        "hidden_size": n_embd,
        "intermediate_size": int(_hp(kv, arch, "feed_forward_length", where)),
        "num_hidden_layers": int(_hp(kv, arch, "block_count", where)),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_head_kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": int(_hp(kv, arch, "context_length", where, 2048)),
        "rms_norm_eps": float(_hp(kv, arch, "attention.layer_norm_rms_epsilon", where, 1e-6)),
        "rope_theta": float(_hp(kv, arch, "rope.freq_base", where, 10000.0)),
        "tie_word_embeddings": "output.weight" not in names,
        "use_cache": True,
        "torch_dtype": "float32",
    }
    scaling = kv.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        if scaling != "linear":
            raise ConfigError(f"{where}: rope scaling '{scaling}' is not supported for export (only linear)")
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": float(kv[f"{arch}.rope.scaling.factor"])}
    for name, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding")):
        tid = kv.get(f"tokenizer.ggml.{key}_token_id")
        cfg[f"{name}_token_id"] = int(tid) if tid is not None else None
    if spec.model_type == "llama":
        cfg["attention_bias"] = "blk.0.attn_q.bias" in names
        cfg["mlp_bias"] = False
    if spec.model_type == "qwen2":
        cfg["use_sliding_window"] = False
    return spec, cfg


def hf_tensor_names(spec: ArchSpec, n_layer: int) -> list[str]:
    """Every HF parameter name of a llama-family decoder (with and without biases / lm_head)."""
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    for i in range(n_layer):
        p = f"model.layers.{i}."
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            names += [f"{p}self_attn.{proj}.weight", f"{p}self_attn.{proj}.bias"]
        for proj in ("gate_proj", "up_proj", "down_proj"):
            names.append(f"{p}mlp.{proj}.weight")
    return names


def gguf_to_hf_names(spec: ArchSpec, n_layer: int) -> dict[str, str]:
    """GGUF tensor name -> HF name, by inverting gguf-py's TensorNameMap (as the converter maps them)."""
    import gguf

    arch_enum = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == spec.gguf_arch)
    tmap = gguf.get_tensor_name_map(arch_enum, n_layer)
    out = {}
    for hf in hf_tensor_names(spec, n_layer):
        g = tmap.get_name(hf, try_suffixes=(".weight", ".bias"))
        if g is not None:
            out[g] = hf
    return out


def iter_hf_tensors(reader: GGUFFile, spec: ArchSpec, cfg: dict) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, float32 array in HF layout) for every tensor, one at a time, in file order."""
    names = gguf_to_hf_names(spec, cfg["num_hidden_layers"])
    for t in reader.tensors:
        hf = names.get(t.name)
        if hf is None:
            if t.name == "rope_freqs.weight":
                continue  # llama.cpp's precomputed rope factors; HF recomputes them from the config
            raise FormatError(
                f"{reader.path}: tensor '{t.name}' has no Hugging Face counterpart for {spec.hf_arch}"
            )
        x = dequantize(reader.tensor_data(t), t.type_name, t.np_shape)
        if spec.permute_qk and ".attn_q." in t.name:
            x = unpermute_qk(x, cfg["num_attention_heads"])
        elif spec.permute_qk and ".attn_k." in t.name:
            x = unpermute_qk(x, cfg["num_key_value_heads"])
        reader.release(t)
        yield hf, np.ascontiguousarray(x, dtype=np.float32)
