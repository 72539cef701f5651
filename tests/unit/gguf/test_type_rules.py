"""llama-quantize's per-tensor type choice (``gguf/type_rules.py``: llama.cpp's ``llama_tensor_get_type``)."""

from collections import Counter

import pytest

from edgequant.gguf.ftypes import FType, ModelInfo, QuantizeOptions
from edgequant.gguf.type_rules import choose_types, use_more_bits


def llama_like(n_layer, d_model, d_ff, tied):
    """Tensor list of a llama-architecture model: (name, ne with ne[0] = row length, type)."""
    ts = [("token_embd.weight", (d_model, 49152), "F32"), ("output_norm.weight", (d_model,), "F32")]
    if not tied:
        ts.append(("output.weight", (d_model, 49152), "F32"))
    for i in range(n_layer):
        p = f"blk.{i}."
        ts += [
            (p + "attn_norm.weight", (d_model,), "F32"),
            (p + "ffn_norm.weight", (d_model,), "F32"),
            (p + "attn_q.weight", (d_model, d_model), "F32"),
            (p + "attn_k.weight", (d_model, d_model // 4), "F32"),
            (p + "attn_v.weight", (d_model, d_model // 4), "F32"),
            (p + "attn_output.weight", (d_model, d_model), "F32"),
            (p + "ffn_gate.weight", (d_model, d_ff), "F32"),
            (p + "ffn_up.weight", (d_model, d_ff), "F32"),
            (p + "ffn_down.weight", (d_ff, d_model), "F32"),
        ]
    return ts


SMOL = ModelInfo("llama", 30, 9, 3)


@pytest.mark.parametrize(
    ("n", "layers"),
    [
        (32, {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31}),
        (28, {0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27}),
    ],
)
def test_use_more_bits_matches_spec_examples(n, layers):
    assert {i for i in range(n) if use_more_bits(i, n)} == layers


def test_smollm2_q4_k_m_type_counts_match_llama_cpp():
    # The Q4_K_M file llama.cpp writes for SmolLM2-135M has F32 61, Q5_0 166, Q4_K 16, Q6_K 14, Q8_0 15.
    choices = choose_types(
        llama_like(30, 576, 1536, tied=True), FType.parse("Q4_K_M"), SMOL, QuantizeOptions(), False
    )
    counts = Counter(c.new_type for c in choices)
    assert counts == {"F32": 61, "Q5_0": 166, "Q4_K": 16, "Q6_K": 14, "Q8_0": 15}
    assert sum(c.fallback_from is not None for c in choices) == 180  # llamacpp.md: 180 fallback tensors


def test_llama3_8b_like_q4_k_m_worked_example():
    model = ModelInfo("llama", 32, 32, 8)
    choices = {
        c.name: c.new_type
        for c in choose_types(
            llama_like(32, 4096, 14336, tied=False), FType.parse("Q4_K_M"), model, QuantizeOptions(), False
        )
    }
    more = {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31}
    assert choices["output.weight"] == "Q6_K"
    assert choices["token_embd.weight"] == "Q4_K"
    for i in range(32):
        want = "Q6_K" if i in more else "Q4_K"
        assert choices[f"blk.{i}.attn_v.weight"] == want
        assert choices[f"blk.{i}.ffn_down.weight"] == want
        assert choices[f"blk.{i}.attn_q.weight"] == "Q4_K"
        assert choices[f"blk.{i}.attn_norm.weight"] == "F32"


def test_output_order_is_layer_then_bytewise_name():
    names = [
        c.name
        for c in choose_types(
            llama_like(12, 256, 512, tied=True), FType.parse("Q8_0"), SMOL, QuantizeOptions(), False
        )
    ]
    assert names[:2] == ["output_norm.weight", "token_embd.weight"]
    assert names.index("blk.2.attn_k.weight") < names.index("blk.10.attn_k.weight")
    assert names[2:11] == sorted(names[2:11])


def test_overrides_precedence_and_pure():
    ts = llama_like(4, 512, 1024, tied=False)
    opts = QuantizeOptions(
        pure=True,
        output_tensor_type="Q8_0",
        token_embedding_type="F16",
        tensor_types=(("attn_v", "Q8_0"), ("blk\\.0\\.", "Q2_K")),
    )
    got = {
        c.name: c for c in choose_types(ts, FType.parse("Q4_K_M"), ModelInfo("llama", 4, 8, 2), opts, False)
    }
    assert got["output.weight"].new_type == "Q8_0"
    assert got["token_embd.weight"].new_type == "F16"
    assert got["blk.0.attn_v.weight"].new_type == "Q8_0"  # first matching pattern wins
    assert got["blk.0.attn_q.weight"].new_type == "Q2_K"
    assert got["blk.1.ffn_down.weight"].new_type == "Q4_K"  # --pure: no mixture rule


def test_q4_0_with_imatrix_upgrades_first_eighth_of_ffn_down():
    ts = llama_like(16, 512, 1024, tied=False)
    got = {
        c.name: c.new_type
        for c in choose_types(ts, FType.parse("Q4_0"), ModelInfo("llama", 16, 8, 8), QuantizeOptions(), True)
    }
    assert [got[f"blk.{i}.ffn_down.weight"] for i in range(3)] == ["Q4_1", "Q4_1", "Q4_0"]
    assert got["output.weight"] == "Q6_K"


def test_fallback_to_f16_when_row_length_fits_no_block():
    got = choose_types(
        [("blk.0.ffn_down.weight", (100, 64), "F32")],
        FType.parse("Q4_K_M"),
        ModelInfo("llama", 1, 1, 1),
        QuantizeOptions(),
        False,
    )
    assert got[0].new_type == "F16"
    assert got[0].fallback_from == "Q6_K"
