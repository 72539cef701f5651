"""The per-tensor type choice of ``llama-quantize`` (``llama_tensor_get_type``) for an :class:`FType`.

This module reproduces ``llama_tensor_get_type`` of llama.cpp commit 0c1e57098 (llama-cpp-python 0.3.36):
eligibility (``tensor_allows_quantization``), categories, precedence of the overrides, the mixture rules
and the shape fallbacks. The counters (``i_attention_wv``, ``i_ffn_down``...) advance over the tensors in
sorted (layer, name) order, which is also the output order. The mixture rules are tables keyed by ftype
name, one small function per rule.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from edgequant.errors import ConfigError
from edgequant.gguf.ftypes import BLOCK_SIZES as _BLOCK
from edgequant.gguf.ftypes import FLOAT_TYPES as _FLOAT_TYPES
from edgequant.gguf.ftypes import FType, ModelInfo, QuantizeOptions, TensorChoice

_FALLBACK = {
    "IQ4_XS": "IQ4_NL",
    "Q2_K": "Q4_0",
    "Q3_K": "Q4_0",
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_1",
    "Q6_K": "Q8_0",
}

# Substrings that make a tensor ineligible for quantization (tensor_allows_quantization).
_TIME_MIX = (
    "first",
    "w0",
    "w1",
    "w2",
    "v0",
    "v1",
    "v2",
    "a0",
    "a1",
    "a2",
    "g1",
    "g2",
    "decay_w1",
    "decay_w2",
)
_NEVER_QUANTIZE = (
    "ffn_gate_inp.weight",
    "ffn_gate_tid2eid.weight",
    "altup",
    "laurel",
    "per_layer_model_proj",
    "ssm_conv1d",
    "shortconv.conv.weight",
    "indexer.k_proj.weight",
    "indexer.q_proj.weight",
    "attn_rel_b.weight",
    ".position_embd",
    "sam.pos_embd",
    "sam.neck.",
    "sam.net_",
    ".rel_pos",
    ".patch_embd",
    ".patch_merger",
    "a.rvq.codebook",
    "mm.a.code_embd",
    *(f"time_mix_{s}.weight" for s in (*_TIME_MIX, "lerp_fused")),
)
# Per-arch tensors llama.cpp never quantizes (positional embeddings, token types).
_ARCH_EXCLUDED = ("position_embd.weight", "token_types.weight")


def layer_of(name: str) -> int:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


def sort_key(name: str) -> tuple[int, bytes]:
    """llama.cpp's tensor order: non-layer tensors first, then by layer number, then byte-wise name."""
    return (layer_of(name), name.encode())


def ggml_n_dims(ne: tuple[int, ...]) -> int:
    """ggml's notion of dimensionality: trailing dimensions of size 1 do not count."""
    for i in range(len(ne) - 1, 0, -1):
        if ne[i] > 1:
            return i + 1
    return 1


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def is_eligible(name: str, n_dims: int, opts: QuantizeOptions) -> bool:
    """``tensor_allows_quantization`` (§6.2)."""
    if n_dims < 2 or not name.endswith("weight") or "_norm.weight" in name:
        return False
    if opts.leave_output_tensor and name == "output.weight":
        return False
    if any(s in name for s in _NEVER_QUANTIZE) or any(name.endswith(s) for s in _ARCH_EXCLUDED):
        return False
    return True


def _category(name: str) -> str:
    if name == "output.weight":
        return "OUTPUT"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "TOKEN_EMBD"
    for sub, cat in (
        ("attn_qkv.weight", "ATTN_QKV"),
        ("attn_kv_b.weight", "ATTN_KV_B"),
        ("attn_v.weight", "ATTN_V"),
        ("attn_k.weight", "ATTN_K"),
        ("attn_q.weight", "ATTN_Q"),
        ("attn_output.weight", "ATTN_OUTPUT"),
        ("ffn_up", "FFN_UP"),
        ("ffn_gate", "FFN_GATE"),
        ("ffn_down", "FFN_DOWN"),
    ):
        if sub in name:
            return cat
    return "OTHER"


@dataclass
class _Counters:
    n_attention_wv: int
    n_layer: int
    has_tied: bool
    has_imatrix: bool
    i_attention_wv: int = 0
    i_ffn_down: int = 0
    i_ffn_gate: int = 0
    i_ffn_up: int = 0
    n_fallback: int = 0
    extra: dict = field(default_factory=dict)


def _layer_info(counter: int, n: int, name: str, model: ModelInfo) -> tuple[int, int]:
    if model.n_expert <= 1:
        return counter, n
    layer = layer_of(name)
    if layer < 0 or layer >= n:
        raise ConfigError(f"{name}: cannot find a layer number below {n} for this MoE tensor")
    return layer, n


# Per-ftype rules of llama_tensor_get_type_impl for the three categories whose type depends on the ftype.
# Each rule maps (default type, layer counter i, layer count n, model, has imatrix) to the tensor's type;
# an ftype absent from a table keeps the default type. Only the ftypes of FTYPES appear (the IQ-low and TQ
# branches of llama.cpp cannot fire). Order of checks inside a rule is llama.cpp's.
_Rule = Callable[[str, int, int, ModelInfo, bool], str]


def _attn_v_q2_k(new, i, n, m, imat):
    return "Q4_K" if m.n_gqa >= 4 else "Q3_K"


def _attn_v_iq4(new, i, n, m, imat):
    return "Q5_K" if m.n_gqa >= 4 else new


def _more_bits_q6_k(new, i, n, m, imat):
    return "Q6_K" if use_more_bits(i, n) else new


_ATTN_V_RULES: dict[str, _Rule] = {
    "Q2_K": _attn_v_q2_k,
    "Q3_K_M": lambda new, i, n, m, imat: "Q5_K" if i < 2 else "Q4_K",
    "Q3_K_L": lambda new, i, n, m, imat: "Q5_K",
    "IQ4_NL": _attn_v_iq4,
    "IQ4_XS": _attn_v_iq4,
    "Q4_K_M": _more_bits_q6_k,
    "Q5_K_M": _more_bits_q6_k,
    "Q4_K_S": lambda new, i, n, m, imat: "Q5_K" if i < 4 else new,
}


def _ffn_down_q3_k_m(new, i, n, m, imat):
    if i < n // 16:
        return "Q5_K"
    return "Q4_K" if m.arch != "falcon" or use_more_bits(i, n) else "Q3_K"


def _ffn_down_q4_k_m(new, i, n, m, imat):
    if m.arch == "falcon":
        return "Q6_K" if i < n // 16 else ("Q5_K" if use_more_bits(i, n) else "Q4_K")
    return "Q6_K" if use_more_bits(i, n) else new


def _ffn_down_iq4(new, i, n, m, imat):
    return "Q5_K" if i < n // 8 and not imat else new


_FFN_DOWN_RULES: dict[str, _Rule] = {
    "Q2_K": lambda new, i, n, m, imat: "Q3_K",
    "Q3_K_M": _ffn_down_q3_k_m,
    "Q3_K_L": lambda new, i, n, m, imat: "Q4_K" if m.arch == "falcon" else "Q5_K",
    "Q4_K_M": _ffn_down_q4_k_m,
    "IQ4_NL": _ffn_down_iq4,
    "IQ4_XS": _ffn_down_iq4,
    "Q5_K_M": _more_bits_q6_k,
    "Q4_K_S": lambda new, i, n, m, imat: "Q5_K" if m.arch != "falcon" and i < n // 8 else new,
    "Q4_0": lambda new, i, n, m, imat: "Q4_1" if imat and i < n // 8 else new,
    "Q5_0": lambda new, i, n, m, imat: "Q5_1" if imat and i < n // 8 else new,
}

# attn_output: 8-expert models take Q5_K for these ftypes, other non-falcon models the map below;
# falcon: Q3_K_L -> Q4_K.
_ATTN_OUTPUT_MOE8_Q5_K = frozenset({"Q2_K", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ4_XS"})
_ATTN_OUTPUT = {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}


def _attn_output(new: str, ftype: str, model: ModelInfo) -> str:
    if model.arch == "falcon":
        return "Q4_K" if ftype == "Q3_K_L" else new
    if model.n_expert == 8:
        return "Q5_K" if ftype in _ATTN_OUTPUT_MOE8_Q5_K else new
    return _ATTN_OUTPUT.get(ftype, new)


def _output_type(new: str, ne0: int, model: ModelInfo, opts: QuantizeOptions) -> str:
    """output.weight (and a tied token_embd): the override, else Q8_0 where Q6_K cannot go, else Q6_K."""
    if opts.output_tensor_type:
        return opts.output_tensor_type
    if model.arch == "falcon" or ne0 % _BLOCK[new]:
        return "Q8_0"
    return "Q6_K" if new != "Q8_0" else new


def _mixture(
    name: str, ne0: int, new: str, ftype: FType, model: ModelInfo, opts: QuantizeOptions, c: _Counters
) -> str:
    """``llama_tensor_get_type_impl`` restricted to the ftypes of FTYPES (IQ-low branches cannot fire)."""
    cat = _category(name)
    if cat == "OUTPUT" or (cat == "TOKEN_EMBD" and c.has_tied):
        return _output_type(new, ne0, model, opts)
    if cat in ("ATTN_V", "ATTN_QKV", "ATTN_KV_B"):
        rule = _ATTN_V_RULES.get(ftype.name)
        if rule is not None:
            new = rule(new, c.i_attention_wv, c.n_attention_wv, model, c.has_imatrix)
        if model.is_70b and new in ("Q3_K", "Q4_K"):
            new = "Q5_K"
        if model.n_expert == 8:
            new = "Q8_0"
        c.i_attention_wv += 1
        return new
    if cat == "ATTN_K":
        return "Q8_0" if model.n_expert == 8 else new
    if cat == "FFN_DOWN":
        i, n = _layer_info(c.i_ffn_down, c.n_layer, name, model)
        rule = _FFN_DOWN_RULES.get(ftype.name)
        if rule is not None:
            new = rule(new, i, n, model, c.has_imatrix)
        c.i_ffn_down += 1
        return new
    if cat == "ATTN_OUTPUT":
        return _attn_output(new, ftype.name, model)
    if cat == "FFN_GATE":
        c.i_ffn_gate += 1
    elif cat == "FFN_UP":
        c.i_ffn_up += 1
    return new  # TOKEN_EMBD (untied), ATTN_Q, OTHER: only the IQ-low/TQ ftypes change them


def _fallback(new: str, ne0: int) -> tuple[str, str | None]:
    if ne0 % _BLOCK[new] == 0:
        return new, None
    fb = _FALLBACK.get(new)
    if fb is None:
        fb = new if _BLOCK[new] <= 32 else None
    if fb is None:
        raise ConfigError(f"no tensor type fallback is defined for {new}")
    if ne0 % _BLOCK[fb]:
        fb = "F16"
    return fb, new


def _explicit(name: str, ne: tuple[int, ...], qtype: str, option: str) -> str:
    """An explicitly requested type gets no fallback in llama.cpp (which then aborts); say so up front."""
    if ne[0] % _BLOCK[qtype]:
        raise ConfigError(
            f"{option} {qtype.lower()}: tensor '{name}' has rows of {ne[0]} values, not a multiple of "
            f"the {_BLOCK[qtype]}-value blocks of {qtype}; choose a type with 32-value blocks "
            "(q8_0, q5_0, q4_0...) or f16",
            option=option,
        )
    return qtype


def choose_types(
    tensors: list[tuple[str, tuple[int, ...], str]],
    ftype: FType,
    model: ModelInfo,
    opts: QuantizeOptions,
    has_imatrix: bool,
) -> list[TensorChoice]:
    """Target type of every tensor, in llama.cpp's output order.

    ``tensors``: (name, ne shape with ne[0] = row length, current type name), any order.
    """
    if not isinstance(ftype, FType):
        raise TypeError(f"choose_types takes an FType (FType.parse({ftype!r})), not {type(ftype).__name__}")
    ordered = sorted(tensors, key=lambda t: sort_key(t[0]))
    names = {t[0] for t in ordered}
    c = _Counters(
        n_attention_wv=sum(_category(n) in ("ATTN_V", "ATTN_QKV", "ATTN_KV_B") for n, _, _ in ordered),
        n_layer=model.n_layer,
        has_tied="output.weight" not in names,
        has_imatrix=has_imatrix,
    )
    patterns = [(re.compile(p), t) for p, t in opts.tensor_types]
    return [_choose(name, ne, cur, ftype, model, opts, patterns, c) for name, ne, cur in ordered]


def _choose(
    name, ne, cur: str, ftype: FType, model: ModelInfo, opts: QuantizeOptions, patterns, c
) -> TensorChoice:
    """One tensor's choice, in llama-quantize's precedence: eligibility, the token-embedding and output
    overrides, float ftypes, ``tensor_types`` patterns, the mixture rules (unless ``pure``), the fallback."""
    if not is_eligible(name, ggml_n_dims(ne), opts):
        return TensorChoice(name, cur, False)
    cat = _category(name)
    if (
        opts.token_embedding_type
        and cat == "TOKEN_EMBD"
        and not (name == "per_layer_token_embd.weight" and any(p.search(name) for p, _ in patterns))
    ):
        qtype = _explicit(name, ne, opts.token_embedding_type, "token_embedding_type")
        return TensorChoice(name, qtype, True, manual=True)
    if opts.output_tensor_type and cat == "OUTPUT":
        return TensorChoice(
            name, _explicit(name, ne, opts.output_tensor_type, "output_tensor_type"), True, manual=True
        )
    new = ftype.default_type
    if new in _FLOAT_TYPES:
        return TensorChoice(name, new, True)
    manual = False
    for p, t in patterns:
        if p.search(name):
            new, manual = t, True
            break
    if not manual and not opts.pure:
        new = _mixture(name, ne[0], new, ftype, model, opts, c)
    new, fell_from = _fallback(new, ne[0])
    return TensorChoice(name, new, True, fell_from, manual)
