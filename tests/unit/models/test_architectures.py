"""models/architectures.py: llama.cpp's rope permutation of attn_q / attn_k rows and its inverse."""

from __future__ import annotations

import numpy as np

from edgequant.models.architectures import permute_qk, unpermute_qk


def test_unpermute_inverts_permute_and_pairs_halves(rng):
    w = rng.standard_normal((4 * 8, 5)).astype(np.float32)
    p = permute_qk(w, 4)
    assert np.array_equal(unpermute_qk(p, 4), w)
    # head 0: HF rows (0, 4) (first/second half of the head) become adjacent ggml rows (0, 1)
    assert np.array_equal(p[0], w[0])
    assert np.array_equal(p[1], w[4])
    assert np.array_equal(p[2], w[1])
    b = rng.standard_normal(32).astype(np.float32)
    assert np.array_equal(unpermute_qk(permute_qk(b, 4), 4), b)


def test_every_architecture_is_one_row_and_exports_back_to_itself():
    from edgequant.models.architectures import ARCHS, GGUF_TO_HF

    assert list(GGUF_TO_HF) == ["llama", "qwen2", "qwen3", "gemma3", "phi3"]
    for spec in ARCHS.values():
        assert GGUF_TO_HF[spec.gguf_arch].gguf_arch == spec.gguf_arch
    assert GGUF_TO_HF["llama"].hf_arch == "LlamaForCausalLM"  # not Mistral


def test_unknown_gguf_architecture_names_the_supported_ones_and_llamacpp(tmp_path):
    import pytest

    from edgequant.errors import ConfigError
    from edgequant.models.architectures import arch_from_gguf, arch_without_torch_form
    from tests.support.tiny import rename_arch, write_tiny_llama

    with pytest.raises(ConfigError) as e:
        arch_from_gguf("xverse", "m.gguf")
    msg = str(e.value)
    assert "\n" not in msg
    assert "'xverse'" in msg
    assert "supported: llama, qwen2, qwen3, gemma3, phi3" in msg
    assert "--backend llama.cpp" in msg
    llama = write_tiny_llama(str(tmp_path / "l.gguf"), width=32, ff=64, vocab=16)
    assert arch_without_torch_form(llama) is None
    assert arch_without_torch_form(rename_arch(llama, str(tmp_path / "x.gguf"), "xverse")) == "xverse"
    assert arch_without_torch_form(str(tmp_path)) is None  # a folder: the HF loader decides


def test_gemma_norm_offset_round_trips_exactly_for_hf_weights_above_minus_half(rng):
    """GGUF holds 1 + w (float32); going back subtracts 1: exact for w >= -0.5 (both steps are exact)."""
    import dataclasses

    from edgequant.models.architectures import ARCHS
    from edgequant.models.gguf_model import hf_layout

    spec = ARCHS["Gemma3ForCausalLM"]
    w = (0.2 * rng.standard_normal(4096)).clip(-0.5, None).astype(np.float32)
    g = w + np.float32(spec.norm_offset)
    back = hf_layout("blk.0.attn_q_norm.weight", g, spec, {})
    assert np.array_equal(back + np.float32(1.0), g)
    assert np.array_equal(hf_layout("blk.0.attn_q.weight", g, spec, {}), g)  # only norms move
    plain = dataclasses.replace(spec, norm_offset=0.0)
    assert np.array_equal(hf_layout("blk.0.attn_norm.weight", g, plain, {}), g)
