"""llama.cpp file types (ftypes) and the per-tensor type choice of ``llama-quantize``.

An ftype such as Q4_K_M is not one tensor type but a *mixture*: a default type plus rules that give
some tensors more bits (output, attn_v, ffn_down in chosen layers), then a shape fallback for tensors
whose row length the type cannot take. This module reproduces ``llama_tensor_get_type`` of llama.cpp
commit 0c1e57098 (llama-cpp-python 0.3.36), as specified in ``shared/reference/ggml-quants.md`` §6:
eligibility, categories, precedence of the overrides, mixture rules and fallbacks. The counters
(``i_attention_wv``, ``i_ffn_down``...) advance over the tensors in sorted (layer, name) order, which
is also the output order.

Only the ftypes whose tensor types edgequant can encode are accepted; the IQ1/IQ2/IQ3 ftypes are
listed with their ids so that a clear error can name them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType

from edgequant.errors import ConfigError, UnsupportedTypeError

# ftype name -> (llama_ftype id, default tensor type)
_FTYPES = {
    "F32": (0, "F32"),
    "F16": (1, "F16"),
    "Q4_0": (2, "Q4_0"),
    "Q4_1": (3, "Q4_1"),
    "Q8_0": (7, "Q8_0"),
    "Q5_0": (8, "Q5_0"),
    "Q5_1": (9, "Q5_1"),
    "Q2_K": (10, "Q2_K"),
    "Q3_K_S": (11, "Q3_K"),
    "Q3_K_M": (12, "Q3_K"),
    "Q3_K_L": (13, "Q3_K"),
    "Q4_K_S": (14, "Q4_K"),
    "Q4_K_M": (15, "Q4_K"),
    "Q5_K_S": (16, "Q5_K"),
    "Q5_K_M": (17, "Q5_K"),
    "Q6_K": (18, "Q6_K"),
    "IQ4_NL": (25, "IQ4_NL"),
    "IQ4_XS": (30, "IQ4_XS"),
    "BF16": (32, "BF16"),
}
FTYPES = MappingProxyType(_FTYPES)
FTYPE_ALIASES = MappingProxyType(
    {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "ALL_F32": "F32", "MOSTLY_F16": "F16"}
)
# llama.cpp ftypes edgequant does not encode (their IQ1/IQ2/IQ3/TQ grids are not implemented).
UNSUPPORTED_FTYPES = MappingProxyType(
    {
        "IQ2_XXS": 19,
        "IQ2_XS": 20,
        "Q2_K_S": 21,
        "IQ3_XS": 22,
        "IQ3_XXS": 23,
        "IQ1_S": 24,
        "IQ3_S": 26,
        "IQ3_M": 27,
        "IQ2_S": 28,
        "IQ2_M": 29,
        "IQ1_M": 31,
        "TQ1_0": 36,
        "TQ2_0": 37,
        "MXFP4_MOE": 38,
        "NVFP4": 39,
        "Q1_0": 40,
        "Q2_0": 41,
    }
)
FTYPE_NAMES_BY_ID = MappingProxyType({v[0]: k for k, v in _FTYPES.items()})

# Block size of each tensor type that can be chosen (for the fallback rules); non-quantized = 1.
_BLOCK = {
    "F32": 1,
    "F16": 1,
    "BF16": 1,
    "Q4_0": 32,
    "Q4_1": 32,
    "Q5_0": 32,
    "Q5_1": 32,
    "Q8_0": 32,
    "Q2_K": 256,
    "Q3_K": 256,
    "Q4_K": 256,
    "Q5_K": 256,
    "Q6_K": 256,
    "IQ4_NL": 32,
    "IQ4_XS": 256,
}
_FALLBACK = {
    "IQ4_XS": "IQ4_NL",
    "Q2_K": "Q4_0",
    "Q3_K": "Q4_0",
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_1",
    "Q6_K": "Q8_0",
}
_FLOAT_TYPES = frozenset({"F32", "F16", "BF16"})

# Substrings that make a tensor ineligible for quantization (tensor_allows_quantization).
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
) + tuple(
    f"time_mix_{s}.weight"
    for s in (
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
        "lerp_fused",
    )
)
# Per-arch tensors llama.cpp never quantizes (positional embeddings, token types).
_ARCH_EXCLUDED = ("position_embd.weight", "token_types.weight")


def parse_ftype(name: str | int) -> tuple[str, int]:
    """Accept an ftype name (any case; aliases Q4_K → Q4_K_M) or numeric id; return (name, id)."""
    key = str(name).strip().upper()
    if key.isdigit():
        fid = int(key)
        if fid in FTYPE_NAMES_BY_ID:
            return FTYPE_NAMES_BY_ID[fid], fid
        for n, i in UNSUPPORTED_FTYPES.items():
            if i == fid:
                key = n
                break
        else:
            raise UnsupportedTypeError(f"unknown ftype id {fid}; supported: {supported_ftypes()}")
    key = FTYPE_ALIASES.get(key, key)
    if key in _FTYPES:
        return key, _FTYPES[key][0]
    if key in UNSUPPORTED_FTYPES:
        raise UnsupportedTypeError(
            f"ftype {key} needs IQ1/IQ2/IQ3/TQ grid codecs that edgequant does not implement; "
            f"supported: {supported_ftypes()}"
        )
    raise UnsupportedTypeError(f"unknown ftype '{name}'; supported: {supported_ftypes()}")


def supported_ftypes() -> str:
    return ", ".join(_FTYPES)


def parse_tensor_type(name: str, option: str) -> str:
    """A tensor *type* name for an override option (q6_k, Q8_0, f16...); mixture names get a hint."""
    key = str(name).strip().upper()
    if key in _BLOCK:
        return key
    hint = ""
    if key in _FTYPES or key in FTYPE_ALIASES:
        hint = f" ('{name}' is a file mixture; give a tensor type such as {_FTYPES.get(key, ('', key))[1] or key})"
    raise ConfigError(f"{option}: unknown tensor type '{name}'{hint}; choose one of {', '.join(_BLOCK)}")


@dataclass(frozen=True)
class QuantizeOptions:
    """The llama-quantize options that decide tensor types (§6.10)."""

    pure: bool = False
    leave_output_tensor: bool = False
    output_tensor_type: str | None = None
    token_embedding_type: str | None = None
    tensor_types: tuple[tuple[str, str], ...] = ()  # (regex pattern, lower-cased; tensor type)


@dataclass(frozen=True)
class ModelInfo:
    """What the type rules need to know of the model (from its metadata)."""

    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int = 0
    is_70b: bool = False

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0


@dataclass(frozen=True)
class TensorChoice:
    name: str
    new_type: str
    quantize: bool  # False: kept in its input type (ineligible)
    fallback_from: str | None = None  # the type that did not fit the row length
    manual: bool = False


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


def is_eligible(name: str, n_dims: int, ftype: str, opts: QuantizeOptions) -> bool:
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


def _mixture(
    name: str, ne0: int, new: str, ftype: str, model: ModelInfo, opts: QuantizeOptions, c: _Counters
) -> str:
    """``llama_tensor_get_type_impl`` restricted to the ftypes of FTYPES (IQ-low branches cannot fire)."""
    cat = _category(name)
    if cat == "OUTPUT" or (cat == "TOKEN_EMBD" and c.has_tied):
        if opts.output_tensor_type:
            return opts.output_tensor_type
        if model.arch == "falcon" or ne0 % _BLOCK[new]:
            return "Q8_0"
        return "Q6_K" if new != "Q8_0" else new
    if cat == "TOKEN_EMBD":
        return new  # untied: only the IQ-low/TQ ftypes change it
    if cat in ("ATTN_V", "ATTN_QKV", "ATTN_KV_B"):
        i, n = c.i_attention_wv, c.n_attention_wv
        if ftype == "Q2_K":
            new = "Q4_K" if model.n_gqa >= 4 else "Q3_K"
        elif ftype == "Q3_K_M":
            new = "Q5_K" if i < 2 else "Q4_K"
        elif ftype == "Q3_K_L":
            new = "Q5_K"
        elif ftype in ("IQ4_NL", "IQ4_XS") and model.n_gqa >= 4:
            new = "Q5_K"
        elif ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
            new = "Q6_K"
        elif ftype == "Q4_K_S" and i < 4:
            new = "Q5_K"
        if model.is_70b and new in ("Q3_K", "Q4_K"):
            new = "Q5_K"
        if model.n_expert == 8:
            new = "Q8_0"
        c.i_attention_wv += 1
        return new
    if cat == "ATTN_K":
        return "Q8_0" if model.n_expert == 8 else new
    if cat == "ATTN_Q":
        return new
    if cat == "FFN_DOWN":
        i, n = _layer_info(c.i_ffn_down, c.n_layer, name, model)
        falcon = model.arch == "falcon"
        if ftype == "Q2_K":
            new = "Q3_K"
        elif ftype == "Q3_K_M":
            new = "Q5_K" if i < n // 16 else ("Q4_K" if not falcon or use_more_bits(i, n) else "Q3_K")
        elif ftype == "Q3_K_L":
            new = "Q4_K" if falcon else "Q5_K"
        elif ftype == "Q4_K_M":
            if falcon:
                new = "Q6_K" if i < n // 16 else ("Q5_K" if use_more_bits(i, n) else "Q4_K")
            elif use_more_bits(i, n):
                new = "Q6_K"
        elif i < n // 8 and ftype in ("IQ4_NL", "IQ4_XS") and not c.has_imatrix:
            new = "Q5_K"
        elif ftype == "Q5_K_M" and use_more_bits(i, n):
            new = "Q6_K"
        elif ftype == "Q4_K_S" and not falcon and i < n // 8:
            new = "Q5_K"
        elif ftype in ("Q4_0", "Q5_0") and c.has_imatrix and i < n // 8:
            new = "Q4_1" if ftype == "Q4_0" else "Q5_1"
        c.i_ffn_down += 1
        return new
    if cat == "ATTN_OUTPUT":
        if model.arch != "falcon":
            if model.n_expert == 8:
                if ftype in ("Q2_K", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ4_XS"):
                    new = "Q5_K"
            else:
                new = {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(ftype, new)
        elif ftype == "Q3_K_L":
            new = "Q4_K"
        return new
    if cat == "FFN_GATE":
        c.i_ffn_gate += 1
    elif cat == "FFN_UP":
        c.i_ffn_up += 1
    return new


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
            "(q8_0, q5_0, q4_0...) or f16"
        )
    return qtype


def choose_types(
    tensors: list[tuple[str, tuple[int, ...], str]],
    ftype: str,
    model: ModelInfo,
    opts: QuantizeOptions,
    has_imatrix: bool,
) -> list[TensorChoice]:
    """Target type of every tensor, in llama.cpp's output order.

    ``tensors``: (name, ne shape with ne[0] = row length, current type name), any order.
    """
    ftype, _ = parse_ftype(ftype)
    default = _FTYPES[ftype][1]
    ordered = sorted(tensors, key=lambda t: sort_key(t[0]))
    names = {t[0] for t in ordered}
    c = _Counters(
        n_attention_wv=sum(_category(n) in ("ATTN_V", "ATTN_QKV", "ATTN_KV_B") for n, _, _ in ordered),
        n_layer=model.n_layer,
        has_tied="output.weight" not in names,
        has_imatrix=has_imatrix,
    )
    patterns = [(re.compile(p), t) for p, t in opts.tensor_types]
    out = []
    for name, ne, cur in ordered:
        if not is_eligible(name, ggml_n_dims(ne), ftype, opts):
            out.append(TensorChoice(name, cur, False))
            continue
        cat = _category(name)
        if (
            opts.token_embedding_type
            and cat == "TOKEN_EMBD"
            and not (name == "per_layer_token_embd.weight" and any(p.search(name) for p, _ in patterns))
        ):
            out.append(
                TensorChoice(
                    name,
                    _explicit(name, ne, opts.token_embedding_type, "--token-embedding-type"),
                    True,
                    manual=True,
                )
            )
            continue
        if opts.output_tensor_type and cat == "OUTPUT":
            out.append(
                TensorChoice(
                    name,
                    _explicit(name, ne, opts.output_tensor_type, "--output-tensor-type"),
                    True,
                    manual=True,
                )
            )
            continue
        new = default
        if new in _FLOAT_TYPES:
            out.append(TensorChoice(name, new, True))
            continue
        manual = False
        for p, t in patterns:
            if p.search(name):
                new, manual = t, True
                break
        if not manual and not opts.pure:
            new = _mixture(name, ne[0], new, ftype, model, opts, c)
        new, fell_from = _fallback(new, ne[0])
        out.append(TensorChoice(name, new, True, fell_from, manual))
    return out
