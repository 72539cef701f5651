"""The attribution glue of edgequant evaluate on a tiny llama (HF -> F32 GGUF in code, quantized to Q4_0): the
total equals the PyTorch scorer's mean KLD of the candidate file on the same chunks (an independent path:
the file loaded by load_causal_lm with llama.cpp's activation rounding installed); the label rules."""

from __future__ import annotations

import pytest

from edgequant.errors import ConfigError
from edgequant.workflows.evaluate_attribution import attribute_candidate, attribution_labels


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from edgequant.models.convert import convert_hf_to_gguf
    from edgequant.workflows.quantize import quantize_model
    from tests.support.tiny import TRAIN_TEXT, write_tiny_hf

    d = tmp_path_factory.mktemp("attribution")
    base, cand = str(d / "tiny-F32.gguf"), str(d / "tiny-Q4_0.gguf")
    convert_hf_to_gguf(write_tiny_hf(str(d / "hf"), "llama", "bpe", init_std=0.05), base, "F32", verify=False)
    quantize_model(base, cand, "Q4_0", threads=1)
    (d / "text.txt").write_text(TRAIN_TEXT * 12)
    return base, cand, str(d / "text.txt"), TRAIN_TEXT * 12


def test_total_is_the_torch_scorers_kld(files):
    from edgequant.eval.scoring import perplexity

    base, cand, path, text = files
    a = attribute_candidate(base, cand, text, n_ctx=32, n_chunks=2, threads=1)
    names = [u["name"] for u in a["units"]]
    assert names == ["token_embd", "blk.0", "blk.1", "output"]  # tied: token_embd is also the output head
    assert sum(u["increment"] for u in a["units"]) == pytest.approx(a["total"], rel=1e-12)
    assert a["n_tokens"] == 2 * 15
    ref = perplexity(cand, path, n_ctx=32, n_chunks=2, base_path=base, backend="torch", threads=1)
    assert ref["n_scored_tokens"] == a["n_tokens"]
    assert a["total"] == pytest.approx(ref["mean_kld"], rel=1e-5)
    kinds = {u["name"]: u["kinds"] for u in a["units"]}
    top = [n for n in a["critical_path"] if n.startswith("blk.")]
    for n in top[:3]:
        assert set(kinds[n]) == {
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        }


def test_labels():
    labels = ["Q8_0", "Q5_0", "Q4_K_M", "Q2_K", "Q4_K_M+imatrix"]
    assert attribution_labels(("auto",), labels) == ["Q4_K_M"]
    assert attribution_labels(("auto",), ["Q8_0", "Q5_0", "Q2_K", "Q2_K+imatrix"]) == ["Q5_0"]
    assert attribution_labels(("q2_k", "Q4_K_M+IMATRIX", "Q2_K"), labels) == ["Q2_K", "Q4_K_M+imatrix"]
    assert attribution_labels((), labels) == []
    with pytest.raises(ConfigError, match="attribution candidate 'Q3_K_M' is not swept") as e:
        attribution_labels(("Q3_K_M",), labels)
    assert "\n" not in str(e.value)
