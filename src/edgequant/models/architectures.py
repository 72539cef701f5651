"""The llama family as llama.cpp and Hugging Face each see it: names, hyper-parameters, the rope layout.

Supported Hugging Face architectures and their GGUF form (as ``convert_hf_to_gguf.py`` writes them):

=====================  ============  =====================  =========================================
HF ``architectures``   GGUF arch     Q/K rope permutation   notes
=====================  ============  =====================  =========================================
LlamaForCausalLM       ``llama``     yes                    SmolLM/SmolLM2 are llama
MistralForCausalLM     ``llama``     yes                    llama.cpp converts Mistral as llama; its
                                                            ``sliding_window`` is not used by llama.cpp
Qwen2ForCausalLM       ``qwen2``     no                     q/k/v projections carry biases
=====================  ============  =====================  =========================================

Rope layout: Hugging Face's llama rotates the two *halves* of each head (``rotate_half``); ggml's
``rope`` (mode 0, "normal") rotates adjacent *pairs*. ``convert_hf_to_gguf.py`` therefore permutes the
rows of q_proj and k_proj (weights and biases): viewed as ``[n_head, 2, head_dim/2, ...]``, axes 1 and 2
are swapped, so row ``h*d + 2*i + j`` of the GGUF tensor is row ``h*d + j*d/2 + i`` of the HF tensor.
Qwen2 runs with ggml's NEOX rope (halves, like HF), so no permutation. ``unpermute`` is the exact inverse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgequant.core.text import clean, quote
from edgequant.errors import ConfigError


@dataclass(frozen=True)
class ArchSpec:
    hf_arch: str  # "LlamaForCausalLM"
    gguf_arch: str  # "llama"
    model_type: str  # transformers config model_type
    permute_qk: bool
    qkv_bias: bool


ARCHS = {
    "LlamaForCausalLM": ArchSpec("LlamaForCausalLM", "llama", "llama", True, False),
    "MistralForCausalLM": ArchSpec("MistralForCausalLM", "llama", "mistral", True, False),
    "Qwen2ForCausalLM": ArchSpec("Qwen2ForCausalLM", "qwen2", "qwen2", False, True),
}
# GGUF arch -> the HF architecture export_hf produces.
GGUF_TO_HF = {"llama": ARCHS["LlamaForCausalLM"], "qwen2": ARCHS["Qwen2ForCausalLM"]}


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
        f"{where}: architecture {got} is not supported; edgequant converts {', '.join(ARCHS)} "
        "(llama-family decoders). Convert other models with llama.cpp's convert_hf_to_gguf.py"
    )


def arch_from_gguf(arch: str, where: str) -> ArchSpec:
    if arch not in GGUF_TO_HF:
        raise ConfigError(
            f"{where}: GGUF architecture '{arch}' cannot be exported to Hugging Face; "
            f"supported: {', '.join(GGUF_TO_HF)}"
        )
    return GGUF_TO_HF[arch]


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF (rotate_half) row order -> ggml (adjacent pairs) row order, for q/k weights or biases."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of ``permute_qk``: ggml row order back to Hugging Face's."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rope_theta(config: dict) -> float | None:
    """rope theta from a config.json: top level (transformers < 5) or ``rope_parameters`` (transformers 5)."""
    if config.get("rope_theta") is not None:
        return float(config["rope_theta"])
    params = config.get("rope_parameters") or {}
    params = params.get("full_attention", params)
    return float(params["rope_theta"]) if params.get("rope_theta") is not None else None


def rope_scaling(config: dict) -> dict:
    return config.get("rope_scaling") or config.get("rope_parameters") or {}


def head_dim(config: dict) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])
