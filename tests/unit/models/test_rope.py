"""models/rope.py: Llama 3's rope frequency factors and their inverse (GGUF rope_freqs -> config.json)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgequant.errors import ConfigError
from edgequant.models.rope import llama3_factors, llama3_params_from_factors, rope_partial, rope_theta

LLAMA32 = {
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def test_factors_match_transformers_llama3_inv_freq():
    """ggml divides each frequency by the factor; transformers' llama3 inv_freq is the same division."""
    import torch
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = LlamaConfig(
        hidden_size=2048,
        num_attention_heads=32,
        max_position_embeddings=131072,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, **LLAMA32},
    )
    inv, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, torch.device("cpu"))
    base = 1.0 / (500000.0 ** (np.arange(0, 64, 2, dtype=np.float32) / np.float32(64)))
    f = llama3_factors(500000.0, 64, LLAMA32)
    assert f.dtype == np.float32
    assert f.shape == (32,)
    assert f[0] == 1.0
    assert f[-1] == 32.0
    assert ((f > 1) & (f < 32)).any()  # the smooth band
    np.testing.assert_allclose(base / f, inv.numpy(), rtol=2e-6)


@pytest.mark.parametrize("old_ctx", [8192, 64, 1000])
def test_parameters_recovered_from_factors_give_identical_factors(old_ctx):
    params = {**LLAMA32, "original_max_position_embeddings": old_ctx}
    f = llama3_factors(500000.0, 64, params)
    back = llama3_params_from_factors(f, 500000.0, 64, "x.gguf")
    assert back["rope_type"] == "llama3"
    assert np.array_equal(llama3_factors(500000.0, 64, back), f)


def test_factors_that_are_not_llama3_are_refused_in_one_line():
    f = llama3_factors(500000.0, 64, LLAMA32)
    f[3] = 5.5  # no smooth-band formula gives this
    with pytest.raises(ConfigError, match=r"x\.gguf: rope_freqs\.weight does not match Llama 3"):
        llama3_params_from_factors(f, 500000.0, 64, "x.gguf")


def test_theta_and_partial_rotary_from_either_config_layout():
    assert rope_theta({"rope_theta": 5e5}) == 5e5
    gemma = {
        "rope_parameters": {"full_attention": {"rope_theta": 1e6}, "sliding_attention": {"rope_theta": 1e4}}
    }
    assert rope_theta(gemma) == 1e6
    assert rope_partial({"rope_parameters": {"partial_rotary_factor": 0.75}}) == 0.75
    assert rope_partial({}) == 1.0
    assert math.isclose(rope_partial({"partial_rotary_factor": 0.5}), 0.5)


def test_longrope_tensors_and_attention_factor():
    from edgequant.models.rope import longrope_attn_factor, rope_tensors

    hp = {
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096,
        "rope_scaling": {"rope_type": "longrope", "long_factor": [2.0] * 48, "short_factor": [1.0] * 48},
    }
    t = rope_tensors(hp, 128, 96)  # Phi-4-mini: 96 of 128 dimensions rotated
    assert sorted(t) == ["rope_factors_long.weight", "rope_factors_short.weight"]
    assert t["rope_factors_long.weight"].dtype == np.float32
    assert math.isclose(longrope_attn_factor(hp), math.sqrt(1 + math.log(32) / math.log(4096)))
    with pytest.raises(ConfigError, match="64 values"):
        rope_tensors(hp, 128, 128)
