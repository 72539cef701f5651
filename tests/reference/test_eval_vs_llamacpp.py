"""edgequant's perplexity of a quantized SmolLM2 file agrees with llama.cpp's on the same file (< 0.5 %).

The Q4_K_M file is written by edgequant (byte-identical to llama-quantize's). edgequant runs it in PyTorch
from the dequantized weights with llama.cpp's matmul-input rounding; llama.cpp runs the file itself.

Why ctx 512 x 4 chunks (1020 scored tokens) and 0.5 %: on a quantized file the two runtimes' per-token
log-losses differ by zero-mean noise of sd ~0.1 nats, because activation rounding turns 1-ulp
summation-order differences into whole rounding steps (measured and explained in
``edgequant.eval.ggml_activations``). The standard error of the relative perplexity difference is then
~0.1/sqrt(N): 0.3 % here (measured: -0.08 %), but 0.9 % with 126 tokens, where a real mismatch could not
be told from noise. A systematic error (a wrong rounding type, a missing layer, rope, eps) shows up far
above that; the F32 file, with no activation rounding, must agree much more closely.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.reference, pytest.mark.slow]


@pytest.fixture(scope="module")
def q4_k_m(smollm2_f32, tmp_path_factory):
    from edgequant.workflows.quantize import quantize_model

    path = str(tmp_path_factory.mktemp("eval") / "smollm2-Q4_K_M.gguf")
    quantize_model(smollm2_f32, path, "Q4_K_M", threads=2)
    return path


def test_perplexity_and_kl_agree_with_llama_cpp(q4_k_m, smollm2_f32):
    pytest.importorskip("llama_cpp")
    from edgequant.eval import CachedLogits, Chunking, evaluate_chunks, split_chunks
    from edgequant.eval.llamacpp_backend import LlamaCppBackend
    from edgequant.eval.scoring import load_torch_backend
    from edgequant.eval.text import hf_tokenize, read_text

    text, _ = read_text(None)
    ch = Chunking(512, 4)
    model_t, tok = load_torch_backend(q4_k_m, threads=2)
    model_l = LlamaCppBackend(q4_k_m, 512, 2)
    hf_tokens, hf_bos = hf_tokenize(tok, text)
    ll_tokens, ll_bos = model_l.tokenize(text)
    assert hf_tokens.tolist() == ll_tokens.tolist()  # the tokenizer rebuilt from the GGUF is llama.cpp's
    assert hf_bos == ll_bos
    chunks = split_chunks(ll_tokens, ch, ll_bos)
    base_t, _ = load_torch_backend(smollm2_f32, threads=2)
    base_l = LlamaCppBackend(smollm2_f32, 512, 2)
    ours = evaluate_chunks(model_t, chunks, ch, base=CachedLogits(base_t))
    ref = evaluate_chunks(model_l, chunks, ch, base=CachedLogits(base_l))
    model_l.close()
    base_l.close()
    assert ours["n_scored_tokens"] == ref["n_scored_tokens"] == 4 * 255
    assert abs(ours["ppl"] / ref["ppl"] - 1) < 0.005
    assert abs(ours["ppl_base"] / ref["ppl_base"] - 1) < 0.005  # F32: no activation rounding on either side
    # KL statistics of one quantized file against F32, by both runtimes: same size and agreement
    assert ours["mean_kld"] == pytest.approx(ref["mean_kld"], rel=0.25)
    assert ours["same_top_fraction"] == pytest.approx(ref["same_top_fraction"], abs=0.04)
    assert ours["mean_kld"] > 0.005  # Q4_K_M really differs from F32 on this model


def test_perplexity_api_runs_llama_cpp_backend(q4_k_m):
    pytest.importorskip("llama_cpp")
    from edgequant.eval import perplexity

    res = perplexity(q4_k_m, n_ctx=128, n_chunks=2, backend="llama.cpp")
    assert res["backend"] == "llama.cpp"
    assert res["n_scored_tokens"] == 2 * 63
    assert res["text"] == "/usr/share/common-licenses/GPL-3"
    assert 5 < res["ppl"] < 100
