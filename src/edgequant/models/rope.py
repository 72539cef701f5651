"""Rope parameters between config.json and GGUF: theta, linear scaling, Llama 3's frequency factors.

Llama 3.1/3.2 (``rope_type: "llama3"``): llama.cpp's converter does not write scaling keys; it writes a
``rope_freqs.weight`` tensor of ``head_dim/2`` float32 factors by which ggml divides each rotation
frequency: 1 for wavelengths shorter than ``old_ctx/high_freq_factor``, ``factor`` for those longer than
``old_ctx/low_freq_factor``, and ``1 / ((1 - s)/factor + s)`` between them, with
``s = (old_ctx/wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)``. transformers
multiplies ``inv_freq`` by exactly the reciprocal, so the two agree. ``llama3_factors`` computes the tensor
(float32 arithmetic, as the converter's torch code); ``llama3_params_from_factors`` recovers parameters
that give back the identical tensor (for GGUF -> HF), trying the published Llama 3 values first.
"""

from __future__ import annotations

import math

import numpy as np

from edgequant.errors import ConfigError

# GGUF tensors that hold rope configuration, not weights (no Hugging Face tensor)
ROPE_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")


def rope_theta(config: dict) -> float | None:
    """rope theta from a config.json: top level (transformers < 5) or ``rope_parameters`` (transformers 5)."""
    if config.get("rope_theta") is not None:
        return float(config["rope_theta"])
    params = config.get("rope_parameters") or {}
    params = params.get("full_attention", params)
    return float(params["rope_theta"]) if params.get("rope_theta") is not None else None


def rope_scaling(config: dict) -> dict:
    """The scaling dict (``rope_type``/``type``, ``factor``...) of the full-attention layers, or {}."""
    params = config.get("rope_scaling") or config.get("rope_parameters") or {}
    return params.get("full_attention", params) or {}


def rope_partial(config: dict) -> float:
    """The fraction of each head that is rotated (Phi-4-mini: 0.75), top level or in ``rope_parameters``."""
    params = config.get("rope_parameters") or {}
    return float(config.get("partial_rotary_factor") or params.get("partial_rotary_factor") or 1.0)


def scaling_kind(config: dict) -> str:
    s = rope_scaling(config)
    return str(s.get("rope_type", s.get("type", "default")) or "default")


def longrope_attn_factor(hp: dict) -> float:
    """LongRoPE's attention factor (llama.cpp's ``rope.scaling.attn_factor``, transformers' default):
    sqrt(1 + ln(scale) / ln(original context)), scale = max_position_embeddings / original context."""
    params = rope_scaling(hp)
    if params.get("attention_factor") is not None:
        return float(params["attention_factor"])
    orig = int(hp.get("original_max_position_embeddings") or params["original_max_position_embeddings"])
    scale = int(hp["max_position_embeddings"]) / orig
    return math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0


def rope_tensors(hp: dict, dim: int, n_rot: int) -> dict[str, np.ndarray]:
    """GGUF tensors llama.cpp's converter computes from the rope configuration: ``rope_freqs`` (Llama 3),
    ``rope_factors_long`` / ``rope_factors_short`` (LongRoPE, ``n_rot / 2`` values each)."""
    kind, params = scaling_kind(hp), rope_scaling(hp)
    if kind == "llama3":
        return {"rope_freqs.weight": llama3_factors(rope_theta(hp) or 10000.0, dim, params)}
    if kind != "longrope":
        return {}
    out = {
        f"rope_factors_{k}.weight": np.asarray(params[f"{k}_factor"], np.float32) for k in ("long", "short")
    }
    if any(v.shape != (n_rot // 2,) for v in out.values()):
        raise ConfigError(
            f"config.json: LongRoPE long_factor / short_factor must hold {n_rot // 2} values each"
        )
    return out


def llama3_factors(theta: float, dim: int, params: dict) -> np.ndarray:
    """``rope_freqs.weight`` for Llama 3 scaling ``params`` (factor, low/high_freq_factor, original ctx)."""
    factor = np.float32(params.get("factor", 8.0))
    lo, hi = float(params.get("low_freq_factor", 1.0)), float(params.get("high_freq_factor", 4.0))
    old = float(params.get("original_max_position_embeddings", 8192))
    freqs = (1.0 / (np.float32(theta) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))).astype(
        np.float32
    )
    out = np.empty(freqs.size, dtype=np.float32)
    for i, f in enumerate(freqs):
        wavelen = np.float32(2 * math.pi) / f
        if wavelen < old / hi:
            out[i] = 1.0
        elif wavelen > old / lo:
            out[i] = factor
        else:
            smooth = (np.float32(old) / wavelen - np.float32(lo)) / np.float32(hi - lo)
            out[i] = np.float32(1) / ((np.float32(1) - smooth) / factor + smooth)
    return out


def llama3_params_from_factors(factors: np.ndarray, theta: float, dim: int, where: str) -> dict:
    """Llama 3 rope parameters reproducing ``factors`` exactly; ConfigError when none is found."""
    factors = np.asarray(factors, dtype=np.float32)
    factor = float(factors.max())
    freqs = 1.0 / (np.float32(theta) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
    wavelen = (2 * math.pi / freqs.astype(np.float64)).astype(np.float64)
    candidates = [8192.0]
    between = (factors > 1) & (factors < factor)
    for r, w in zip(factors[between], wavelen[between], strict=True):
        s = (1 / float(r) - 1 / factor) / (1 - 1 / factor)  # lo=1, hi=4: s = old/w/3 - 1/3
        candidates.append(float(round((3 * s + 1) * w)))
    if not between.any() and (factors == factor).any():
        candidates.append(float(math.floor(wavelen[factors == factor].min())))
    for old in candidates:
        params = {
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": int(old),
        }
        if np.array_equal(llama3_factors(theta, dim, params), factors):
            return params
    raise ConfigError(
        f"{where}: rope_freqs.weight does not match Llama 3 rope scaling (low/high frequency factors 1 "
        "and 4); cannot write a Hugging Face rope configuration for it"
    )
