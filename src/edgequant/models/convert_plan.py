"""What an HF -> GGUF conversion will write, decided before any tensor data is read.

* ``expected_shapes``: the shape config.json implies for every HF parameter (NumPy order, out x in).
* ``map_names``: checkpoint names -> GGUF names through gguf-py's ``TensorNameMap``; every tensor's shape
  checked against config.json, every required tensor present.
* ``gguf_metadata``: the KV records in llama.cpp's converter order, collected on a gguf-py ``GGUFWriter``
  used as a key/value store (so key names and value types are gguf-py's own).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from gguf.constants import GGUFValueType

from edgequant.core.text import quote
from edgequant.errors import ConfigError, FormatError, ShapeError
from edgequant.models.architectures import ArchSpec, head_dim
from edgequant.models.hf_checkpoint import HFCheckpoint
from edgequant.models.rope import longrope_attn_factor, rope_partial, rope_scaling, rope_theta, scaling_kind


class KVRecord(NamedTuple):
    name: str
    vtype: GGUFValueType
    value: object
    array_type: GGUFValueType | None


def _need(hp: dict, key: str) -> int:
    if key not in hp or hp[key] is None:
        raise ConfigError(f"config.json lacks '{key}'; cannot convert without it")
    return int(hp[key])


def expected_shapes(hp: dict, spec: ArchSpec) -> dict[str, tuple[int, ...]]:
    n_embd, n_ff, n_vocab = _need(hp, "hidden_size"), _need(hp, "intermediate_size"), _need(hp, "vocab_size")
    n_layer, n_head = _need(hp, "num_hidden_layers"), _need(hp, "num_attention_heads")
    n_kv = int(hp.get("num_key_value_heads") or n_head)
    hd = head_dim(hp)
    shapes = {
        "model.embed_tokens.weight": (n_vocab, n_embd),
        "model.norm.weight": (n_embd,),
        "lm_head.weight": (n_vocab, n_embd),
    }
    bias = spec.qkv_bias or bool(hp.get("attention_bias"))
    for i in range(n_layer):
        p = f"model.layers.{i}."
        norms = ["input_layernorm", "post_attention_layernorm"]
        norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"] if spec.ffn_sandwich else []
        shapes.update({f"{p}{n}.weight": (n_embd,) for n in norms})
        if spec.qk_norm:
            shapes[p + "self_attn.q_norm.weight"] = shapes[p + "self_attn.k_norm.weight"] = (hd,)
        projs = (("q_proj", n_head * hd), ("k_proj", n_kv * hd), ("v_proj", n_kv * hd))
        if spec.fused:
            projs = (("qkv_proj", (n_head + 2 * n_kv) * hd),)
        for proj, rows in projs:
            shapes[f"{p}self_attn.{proj}.weight"] = (rows, n_embd)
            if bias:
                shapes[f"{p}self_attn.{proj}.bias"] = (rows,)
        shapes[p + "self_attn.o_proj.weight"] = (n_embd, n_head * hd)
        if hp.get("attention_bias") and not spec.qkv_bias:
            shapes[p + "self_attn.o_proj.bias"] = (n_embd,)
        if spec.fused:
            shapes[p + "mlp.gate_up_proj.weight"] = (2 * n_ff, n_embd)
        else:
            shapes[p + "mlp.gate_proj.weight"] = shapes[p + "mlp.up_proj.weight"] = (n_ff, n_embd)
        shapes[p + "mlp.down_proj.weight"] = (n_embd, n_ff)
    return shapes


def map_names(ckpt: HFCheckpoint, spec: ArchSpec, shapes: dict) -> dict[str, str]:
    """GGUF name -> HF name of every tensor to write; ShapeError/ConfigError/FormatError name the tensor."""
    import gguf

    hp = ckpt.config
    tied = bool(hp.get("tie_word_embeddings", False))
    arch_enum = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == spec.gguf_arch)
    tmap = gguf.get_tensor_name_map(arch_enum, int(hp["num_hidden_layers"]))
    out: dict[str, str] = {}
    for name, ref in ckpt.tensors.items():
        if name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
            continue  # recomputed by llama.cpp / the same tensor as token_embd
        where = os.path.basename(ref.file)
        if name not in shapes:
            raise ConfigError(
                f"{where}: tensor '{name}' is not part of a {spec.hf_arch} with this config.json; "
                "the checkpoint and config.json do not match"
            )
        if tuple(ref.shape) != shapes[name]:
            raise ShapeError(
                f"{where}: tensor '{name}' has shape {list(ref.shape)} but config.json implies "
                f"{list(shapes[name])}; the weights and config.json belong to different models"
            )
        g = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if g is None:
            raise ConfigError(f"{where}: tensor '{name}' has no GGUF name for {spec.gguf_arch}")
        out[g] = name
    required = [n for n in shapes if not (n == "lm_head.weight" and tied) and not n.endswith(".bias")]
    missing = [n for n in required if n not in ckpt.tensors]
    if missing:
        raise FormatError(
            f"{ckpt.folder}: {len(missing)} tensor(s) missing from the checkpoint (first: '{missing[0]}'); "
            "is a shard missing?"
        )
    return out


def _array_type(values) -> GGUFValueType:
    first = next(iter(values), "")
    if isinstance(first, (str, bytes)):
        return GGUFValueType.STRING
    if isinstance(first, bool):
        return GGUFValueType.BOOL
    if isinstance(first, int):
        return GGUFValueType.INT32
    return GGUFValueType.FLOAT32


def gguf_metadata(
    folder: str, hp: dict, spec: ArchSpec, ftype_id: int, n_params: int, quantized: bool
) -> list[KVRecord]:
    import gguf

    from edgequant.models.hf_vocab import add_vocab

    w = gguf.GGUFWriter(path=None, arch=spec.gguf_arch)
    md = gguf.Metadata.load(None, Path(folder), None, n_params)
    if md.name is None:
        md.name = Path(folder).name
    if md.size_label is None and n_params > 0:
        md.size_label = gguf.size_label(n_params, 0, 0, 0)
    w.add_type(gguf.GGUFType.MODEL)
    md.set_gguf_meta_model(w)
    w.add_block_count(int(hp["num_hidden_layers"]))
    if hp.get("max_position_embeddings") is not None:
        w.add_context_length(int(hp["max_position_embeddings"]))
    w.add_embedding_length(int(hp["hidden_size"]))
    w.add_feed_forward_length(int(hp["intermediate_size"]))
    w.add_head_count(int(hp["num_attention_heads"]))
    if hp.get("num_key_value_heads") is not None:
        w.add_head_count_kv(int(hp["num_key_value_heads"]))
    if (theta := rope_theta(hp)) is not None:
        w.add_rope_freq_base(theta)
    if hp.get("rms_norm_eps") is not None:
        w.add_layer_norm_rms_eps(float(hp["rms_norm_eps"]))
    hd = head_dim(hp)
    if hd != int(hp["hidden_size"]) // int(hp["num_attention_heads"]):
        w.add_key_length(hd)
        w.add_value_length(hd)
    w.add_file_type(ftype_id)
    scaling, kind = rope_scaling(hp), scaling_kind(hp)
    if kind == "linear" and spec.gguf_arch in ("llama", "gemma3"):
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(scaling["factor"]))
    elif kind == "longrope" and spec.fused:  # factors as tensors (convert.py), the attention factor here
        w.add_rope_scaling_attn_factors(longrope_attn_factor(hp))
    elif kind not in ("default", "llama3") or (kind == "llama3" and spec.gguf_arch != "llama"):
        raise ConfigError(
            f"config.json: rope scaling {quote(kind)} is not supported by edgequant's converter for "
            f"{spec.hf_arch}; convert this model with llama.cpp's convert_hf_to_gguf.py"
        )
    if spec.swa_pattern and hp.get("sliding_window") is not None:
        w.add_sliding_window(int(hp["sliding_window"]))
    if spec.gguf_arch == "llama":
        w.add_vocab_size(int(hp["vocab_size"]))
        w.add_rope_dimension_count(hd)
    if spec.fused:
        w.add_rope_dimension_count(int(rope_partial(hp) * hd))
        if hp.get("original_max_position_embeddings") is not None:
            w.add_rope_scaling_orig_ctx_len(int(hp["original_max_position_embeddings"]))
    add_vocab(w, folder, hp, spec.gguf_arch)
    if spec.space_prefix is not None:
        w.add_add_space_prefix(spec.space_prefix)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    records = []
    for name, v in w.kv_data[0].items():
        sub = v.sub_type or (_array_type(v.value) if v.type == GGUFValueType.ARRAY else None)
        records.append(KVRecord(name, v.type, v.value, sub))
    if quantized:  # llama-quantize re-sets these two keys, which moves them to the end
        tail = [r for r in records if r.name in ("general.quantization_version", "general.file_type")]
        records = [r for r in records if r not in tail] + sorted(
            tail, key=lambda r: r.name != "general.quantization_version"
        )
    return records
