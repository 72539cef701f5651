"""The decoder families edgequant converts, as llama.cpp and Hugging Face each see them: one row each.

Supported Hugging Face architectures and their GGUF form (as ``convert_hf_to_gguf.py`` writes them):

=====================  ============  =========================================================================
HF ``architectures``   GGUF arch     what differs from Llama
=====================  ============  =========================================================================
LlamaForCausalLM       ``llama``     (SmolLM/SmolLM2; Llama 3.x's ``llama3`` rope scaling as ``rope_freqs``,
                                     see :mod:`edgequant.models.rope`)
MistralForCausalLM     ``llama``     llama.cpp converts Mistral as llama; ``sliding_window`` is not used
Qwen2ForCausalLM       ``qwen2``     q/k/v biases; NEOX rope (no permutation)
Qwen3ForCausalLM       ``qwen3``     per-head RMS norms on q and k; NEOX rope
Gemma3ForCausalLM      ``gemma3``    q/k norms, post-attention / pre- and post-FFN norms, GELU(tanh), every
                                     RMS norm weight stored as ``1 + w`` (HF keeps ``w``), embeddings scaled
                                     by sqrt(hidden) at run time (both runtimes: no weight change), sliding
                                     window on 5 of every 6 layers (local rope theta 10000), SentencePiece
                                     without a space prefix
Phi3ForCausalLM        ``phi3``      fused ``qkv_proj`` (GGUF ``attn_qkv``) and ``gate_up_proj`` (GGUF
                                     ``ffn_up``, gate rows first) kept fused; NEOX rope on the first
                                     ``partial_rotary_factor`` of each head (Phi-4-mini: 0.75) as
                                     ``rope.dimension_count``; SentencePiece (Phi-3) vocabularies
=====================  ============  =========================================================================

Rope layout: Hugging Face's llama rotates the two *halves* of each head (``rotate_half``); ggml's
``rope`` (mode 0, "normal") rotates adjacent *pairs*. ``convert_hf_to_gguf.py`` therefore permutes the
rows of q_proj and k_proj (weights and biases): viewed as ``[n_head, 2, head_dim/2, ...]``, axes 1 and 2
are swapped, so row ``h*d + 2*i + j`` of the GGUF tensor is row ``h*d + j*d/2 + i`` of the HF tensor.
The other families run with ggml's NEOX rope (halves, like HF), so no permutation. ``unpermute`` is the
exact inverse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from edgequant.core.text import clean, quote
from edgequant.errors import ConfigError
from edgequant.models.rope import rope_scaling, rope_theta  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class ArchSpec:
    hf_arch: str  # "LlamaForCausalLM"
    gguf_arch: str  # "llama"
    model_type: str  # transformers config model_type
    permute_qk: bool = False  # llama.cpp's normal rope: q/k rows permuted
    qkv_bias: bool = False  # q/k/v projections always carry biases (Qwen2)
    qk_norm: bool = False  # per-head RMS norms self_attn.q_norm / k_norm (Qwen3, Gemma 3)
    ffn_sandwich: bool = False  # pre/post feed-forward norms besides post_attention_layernorm (Gemma 3)
    fused: bool = False  # qkv_proj and gate_up_proj (Phi-3)
    norm_offset: float = 0.0  # GGUF norm weight = HF weight + offset (Gemma's (1 + w) RMSNorm)
    swa_pattern: int = 0  # every n-th layer global, the others sliding-window (Gemma 3: 6)
    space_prefix: bool | None = None  # tokenizer.ggml.add_space_prefix to write (None: from the tokenizer)
    hf_extra: dict = field(default_factory=dict)  # config.json keys export_hf writes as they are


_GEMMA_EXTRA = {
    "hidden_activation": "gelu_pytorch_tanh",
    "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
}
ARCHS = {
    s.hf_arch: s
    for s in (
        ArchSpec("LlamaForCausalLM", "llama", "llama", permute_qk=True, hf_extra={"mlp_bias": False}),
        ArchSpec("MistralForCausalLM", "llama", "mistral", permute_qk=True),
        ArchSpec("Qwen2ForCausalLM", "qwen2", "qwen2", qkv_bias=True, hf_extra={"use_sliding_window": False}),
        ArchSpec("Qwen3ForCausalLM", "qwen3", "qwen3", qk_norm=True, hf_extra={"use_sliding_window": False}),
        ArchSpec(
            "Gemma3ForCausalLM",
            "gemma3",
            "gemma3_text",
            qk_norm=True,
            ffn_sandwich=True,
            norm_offset=1.0,
            swa_pattern=6,
            space_prefix=False,
            hf_extra=_GEMMA_EXTRA,
        ),
        ArchSpec("Phi3ForCausalLM", "phi3", "phi3", fused=True),
    )
}
# GGUF arch -> the HF architecture export_hf produces.
GGUF_TO_HF: dict[str, ArchSpec] = {}
for _spec in ARCHS.values():
    GGUF_TO_HF.setdefault(_spec.gguf_arch, _spec)


def arch_from_config(config: dict, where: str) -> ArchSpec:
    """The ArchSpec of a config.json; ConfigError naming the architecture and the supported ones.

    The config is checked against ``hf_config.SCHEMA`` with the keys every supported architecture needs
    (FormatError naming the key: ``architectures`` as a string, ``num_hidden_layers: "abc"``...)."""
    from edgequant.models.hf_config import REQUIRED, check_config

    check_config(config, where)
    archs = config.get("architectures") or []
    for a in archs:
        if a in ARCHS:
            check_config(config, where, REQUIRED)
            return ARCHS[a]
    got = ", ".join(map(clean, archs)) if archs else f"none (model_type={quote(config.get('model_type'))})"
    raise ConfigError(
        f"{where}: architecture {got} is not supported; edgequant converts {', '.join(ARCHS)}. "
        "Convert other models with llama.cpp's convert_hf_to_gguf.py"
    )


def arch_from_gguf(arch: str, where: str) -> ArchSpec:
    if arch not in GGUF_TO_HF:
        raise ConfigError(
            f"{where}: GGUF architecture {quote(arch)} has no PyTorch form in edgequant (supported: "
            f"{', '.join(GGUF_TO_HF)}); run it in llama.cpp instead (perplexity: --backend llama.cpp; "
            "importance matrices: llama-imatrix, whose file edgequant quantize --imatrix reads)"
        )
    return GGUF_TO_HF[arch]


def arch_without_torch_form(path: str) -> str | None:
    """The architecture of GGUF file ``path`` when edgequant cannot build it in PyTorch, else None (also for
    a folder or a file that is not a readable GGUF, left for the loader to report)."""
    import os

    from edgequant.errors import EdgequantError
    from edgequant.gguf.reader import GGUFFile

    if os.path.isdir(path):
        return None
    try:
        with GGUFFile(path) as r:
            arch = r.meta.get_str("general.architecture", "")
    except (EdgequantError, OSError):
        return None
    return None if arch in GGUF_TO_HF else arch


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF (rotate_half) row order -> ggml (adjacent pairs) row order, for q/k weights or biases."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of ``permute_qk``: ggml row order back to Hugging Face's."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def head_dim(config: dict) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def layer_types(n_layer: int, pattern: int) -> list[str]:
    """Gemma 3's layer kinds: every ``pattern``-th layer full attention, the others sliding-window."""
    return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n_layer)]


# HF linear module (inside ``model.layers.N.``) -> llama.cpp tensor kind, as llama.cpp's converter names them
LAYER_MAP = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "self_attn.qkv_proj": "attn_qkv",  # Phi-3's fused projections, fused in GGUF too
    "mlp.gate_up_proj": "ffn_up",
}
LAYER_RE = re.compile(r"^(?:model\.)?layers\.(\d+)\.(.+)$")


def gguf_weight_name(module_name: str) -> str | None:
    """GGUF name of the weight of HF linear ``module_name`` (None for modules llama-imatrix never sees)."""
    if module_name == "lm_head":
        return "output.weight"
    m = LAYER_RE.match(module_name)
    if m and m.group(2) in LAYER_MAP:
        return f"blk.{m.group(1)}.{LAYER_MAP[m.group(2)]}.weight"
    return None
