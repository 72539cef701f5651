"""GGUF -> Hugging Face: config.json from GGUF metadata and the weights under their HF names.

Weights are dequantized with edgequant's codecs (exactly ggml's ``to_float``), the rope permutation of
q/k rows is undone for llama (see :mod:`edgequant.models.architectures`), and names are mapped with
gguf-py's ``TensorNameMap`` (the table llama.cpp's converter uses), inverted. A GGUF without
``output.weight`` has tied embeddings (``tie_word_embeddings = true``, no ``lm_head.weight``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from edgequant.core.text import quote
from edgequant.errors import ConfigError, FormatError
from edgequant.gguf.codecs import dequantize
from edgequant.gguf.reader import GGUFFile
from edgequant.models.architectures import ArchSpec, arch_from_gguf, layer_types, unpermute_qk
from edgequant.models.rope import ROPE_TENSORS, llama3_params_from_factors

_TOKENIZER_IDS = ("bos", "eos", "unknown", "padding", "separator", "mask", "eot", "eom")


def gguf_kv(reader: GGUFFile) -> dict:
    """Metadata values by key, the tokenizer's keys first checked through the typed getters (so that the
    vocabulary builders below only ever see the types llama.cpp's loader accepts)."""
    meta = reader.meta
    meta.get_str("tokenizer.ggml.model", None)
    meta.get_str("tokenizer.ggml.pre", None)
    meta.get_str("tokenizer.chat_template", None)
    tokens = meta.get_array("tokenizer.ggml.tokens", None, etype="str")
    n = len(tokens) if tokens is not None else None
    meta.get_array("tokenizer.ggml.merges", None, etype="str")
    for key, etype in (("scores", "float"), ("token_type", "int")):
        meta.get_array(f"tokenizer.ggml.{key}", None, etype=etype, min_len=n or 0, max_len=n, finite=True)
    for key in ("add_bos_token", "add_eos_token", "add_space_prefix"):
        meta.get_bool(f"tokenizer.ggml.{key}", None)
    for key in _TOKENIZER_IDS:  # llama.cpp only warns about an out-of-range id; bos/eos are looked up here
        hi = n - 1 if n and key in ("bos", "eos") else 2**32 - 1
        meta.get_int(f"tokenizer.ggml.{key}_token_id", None, min=0, max=hi)
    return {k: v.value for k, v in reader.kvs.items()}


def _hp(reader: GGUFFile, arch: str, key: str, *default, lo: int = 1, hi: int = 1 << 24) -> int:
    """An ``<arch>.<key>`` integer hyper-parameter (first element of a per-layer array), typed and bounded."""
    if not default and f"{arch}.{key}" not in reader.meta:
        raise FormatError(f"{reader.path}: metadata lacks {arch}.{key}; cannot build a Hugging Face config")
    return reader.meta.get_int(f"{arch}.{key}", *default, min=lo, max=hi, first_of_array=True)


def hf_config_dict(reader: GGUFFile) -> tuple[ArchSpec, dict]:
    """(ArchSpec, config.json dict) for the model in ``reader`` (metadata read through the typed getters)."""
    meta, where = reader.meta, reader.path
    arch = meta.get_str("general.architecture", "")
    spec = arch_from_gguf(arch, where)
    names = {t.name for t in reader.tensors}
    n_embd = _hp(reader, arch, "embedding_length")
    n_head = _hp(reader, arch, "attention.head_count")
    n_head_kv = _hp(reader, arch, "attention.head_count_kv", n_head)
    head_dim = _hp(reader, arch, "attention.key_length", n_embd // n_head)
    tokens = meta.get_array("tokenizer.ggml.tokens", None, etype="str")
    n_vocab = _hp(reader, arch, "vocab_size", *([len(tokens)] if tokens is not None else []), hi=1 << 28)
    if "token_embd.weight" in names:
        n_vocab = reader.tensor("token_embd.weight").shape_ne[1]
    cfg = {
        "architectures": [spec.hf_arch],
        "model_type": spec.model_type,
        "vocab_size": n_vocab,
        "hidden_size": n_embd,
        "intermediate_size": _hp(reader, arch, "feed_forward_length"),
        "num_hidden_layers": _hp(reader, arch, "block_count", hi=512),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_head_kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": _hp(reader, arch, "context_length", 2048, hi=1 << 40),
        "rms_norm_eps": meta.get_float(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6, min=0),
        "rope_theta": meta.get_float(f"{arch}.rope.freq_base", 10000.0, min=0),
        "tie_word_embeddings": "output.weight" not in names,
        "use_cache": True,
        "torch_dtype": "float32",
    }
    for name, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding")):
        cfg[f"{name}_token_id"] = meta.get_int(f"tokenizer.ggml.{key}_token_id", None, min=0, max=2**32 - 1)
    if not spec.qkv_bias:
        cfg["attention_bias"] = "blk.0.attn_q.bias" in names
    cfg.update(spec.hf_extra)
    cfg.update(_rope_config(reader, arch, spec, cfg))
    return spec, {k: v for k, v in cfg.items() if v is not None or k not in ("rope_theta", "rope_scaling")}


def _rope_config(reader: GGUFFile, arch: str, spec: ArchSpec, cfg: dict) -> dict:
    """The rope / attention-window keys of config.json: linear scaling, Llama 3's ``rope_freqs``, Gemma 3's
    per-layer-type rope and sliding window, Phi-3's partial rotary factor."""
    meta, where, out = reader.meta, reader.path, {}
    scaling = meta.get_str(f"{arch}.rope.scaling.type", None)
    rope: dict = {"rope_type": "default", "rope_theta": cfg["rope_theta"]}
    if scaling not in (None, "none"):
        if scaling != "linear":
            raise ConfigError(
                f"{where}: rope scaling {quote(scaling)} is not supported for export (only linear)"
            )
        rope = {**rope, "rope_type": "linear", "factor": meta.get_float(f"{arch}.rope.scaling.factor", min=0)}
    if "rope_factors_long.weight" in {t.name for t in reader.tensors}:  # LongRoPE (Phi-3.5, Phi-4-mini)
        rope = {"rope_theta": cfg["rope_theta"], "rope_type": "longrope"}
        for k in ("long", "short"):
            t = reader.tensor(f"rope_factors_{k}.weight")
            rope[f"{k}_factor"] = (
                dequantize(reader.tensor_data(t), t.type_name, t.np_shape).reshape(-1).tolist()
            )
        attn = meta.get_float(f"{arch}.rope.scaling.attn_factor", None, min=0)
        if attn is not None:
            rope["attention_factor"] = attn
    if "rope_freqs.weight" in {t.name for t in reader.tensors}:
        t = reader.tensor("rope_freqs.weight")
        factors = dequantize(reader.tensor_data(t), t.type_name, t.np_shape).reshape(-1)
        rope = {"rope_theta": cfg["rope_theta"]}
        rope.update(llama3_params_from_factors(factors, cfg["rope_theta"], cfg["head_dim"], where))
    if rope["rope_type"] != "default":
        out["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    sliding = meta.get_int(f"{arch}.attention.sliding_window", None, min=0, max=1 << 40)
    if spec.swa_pattern:  # llama.cpp: local layers use rope theta 10000 and the sliding window
        out["layer_types"] = layer_types(cfg["num_hidden_layers"], spec.swa_pattern)
        out["sliding_window"] = sliding
        out["query_pre_attn_scalar"] = cfg["head_dim"]
        local = {"rope_type": "default", "rope_theta": 10000.0}
        out["rope_parameters"] = {"full_attention": rope, "sliding_attention": local}
        out["rope_theta"] = out["rope_scaling"] = None
    if spec.fused:
        n_rot = _hp(reader, arch, "rope.dimension_count", cfg["head_dim"])
        out["partial_rotary_factor"] = n_rot / cfg["head_dim"]
        out["original_max_position_embeddings"] = _hp(
            reader, arch, "rope.scaling.original_context_length", cfg["max_position_embeddings"], hi=1 << 40
        )
        out["sliding_window"] = sliding
    return out
    return spec, cfg


_LAYER_NAMES = (
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
    "pre_feedforward_layernorm.weight",
    "post_feedforward_layernorm.weight",
    "self_attn.q_norm.weight",
    "self_attn.k_norm.weight",
    *(
        f"self_attn.{p}.{k}"
        for p in ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj")
        for k in ("weight", "bias")
    ),
    *(f"mlp.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj", "gate_up_proj")),
)


def hf_tensor_names(spec: ArchSpec, n_layer: int) -> list[str]:
    """Every HF parameter name a supported decoder may have (those gguf-py maps for ``spec`` are used)."""
    unfused = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
    skip = unfused if spec.fused else ("qkv_proj", "gate_up_proj")
    layer = [n for n in _LAYER_NAMES if n.split(".")[-2] not in skip]
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    for i in range(n_layer):
        names += [f"model.layers.{i}.{n}" for n in layer]
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
            if t.name in ROPE_TENSORS:
                continue  # llama.cpp's precomputed rope factors; in config.json for HF
            raise FormatError(
                f"{reader.path}: tensor '{t.name}' has no Hugging Face counterpart for {spec.hf_arch}"
            )
        x = hf_layout(t.name, dequantize(reader.tensor_data(t), t.type_name, t.np_shape), spec, cfg)
        reader.release(t)
        yield hf, np.ascontiguousarray(x, dtype=np.float32)


def hf_layout(name: str, x: np.ndarray, spec: ArchSpec, cfg: dict) -> np.ndarray:
    """A GGUF tensor's rows in the HF layout: llama.cpp's rope permutation of attn_q / attn_k undone."""
    if spec.norm_offset and name.endswith("norm.weight"):
        return x - np.float32(spec.norm_offset)
    if spec.permute_qk and ".attn_q." in name:
        return unpermute_qk(x, cfg["num_attention_heads"])
    if spec.permute_qk and ".attn_k." in name:
        return unpermute_qk(x, cfg["num_key_value_heads"])
    return x
