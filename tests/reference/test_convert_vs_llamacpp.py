"""HF <-> GGUF conversion against llama.cpp itself (llama-cpp-python): it loads our files, tokenizes as the
HF tokenizer does, and its logits agree with transformers'; conversion to a quantized ftype equals
``llama_model_quantize`` of the F32 conversion byte for byte; SmolLM2 survives GGUF -> HF -> GGUF."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = pytest.mark.reference
llama_cpp = pytest.importorskip("llama_cpp")

from edgequant.gguf.reader import GGUFFile  # noqa: E402
from edgequant.models import convert_hf_to_gguf, export_hf  # noqa: E402
from edgequant.models.verify import CHECK_PROMPTS, compare_logits, hf_logits, llama_cpp_logits  # noqa: E402
from tests.support.tiny import write_tiny_hf  # noqa: E402

TEXTS = (
    "Hello world! The capital of France is Paris; 12345 apples cost $3.50.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "  spaces   and\ttabs\n\nnew lines, Ünïcödé 漢字 🚀 I'm we'll they've",
)


def _llama_tokens(path: str, text: str) -> list[int]:
    llm = llama_cpp.Llama(path, vocab_only=True, verbose=False)
    try:
        return list(llm.tokenize(text.encode(), add_bos=False, special=False))
    finally:
        llm.close()


@pytest.mark.parametrize(
    ("arch", "tok", "ftype", "tied"),
    [("llama", "bpe", "F32", True), ("qwen2", "bpe", "Q4_K_M", False), ("mistral", "spm", "Q8_0", False)],
)
def test_convert_verifies_in_llamacpp_and_tokenizes_like_hf(tmp_path, arch, tok, ftype, tied):
    d = write_tiny_hf(str(tmp_path / f"{arch}-{tok}"), arch, tok, tie_word_embeddings=tied)
    out = str(tmp_path / "out.gguf")
    res = convert_hf_to_gguf(d, out, ftype)
    v = res.verification
    assert v["status"] == "ok"
    print(f"\n{arch}/{tok}/{ftype}: vs_hf {v['vs_hf']}\n  vs_dequantized {v['vs_dequantized']}")  # noqa: T201 (figures for the report, with -s)
    assert v["vs_dequantized"]["rel_diff"] <= v["tolerance_rel"]
    if ftype == "F32":
        assert v["vs_hf"]["rel_diff"] < 0.01
        assert v["vs_hf"]["top1_agreement"] == 1.0
    with GGUFFile(out) as r:
        names = {t.name for t in r.tensors}
        assert ("output.weight" in names) != tied
        assert ("blk.0.attn_q.bias" in names) == (arch == "qwen2")
        assert r.get("general.architecture") == ("qwen2" if arch == "qwen2" else "llama")
        assert r.get("tokenizer.ggml.model") == ("gpt2" if tok == "bpe" else "llama")
        if tok == "bpe":
            assert r.get("tokenizer.ggml.pre") == "smollm"
        assert r.get("tokenizer.chat_template").startswith("{% for message")
    # The model's own tokenizer files. (For a qwen2 config, transformers 5's AutoTokenizer swaps in Qwen2's
    # built-in pre-tokenizer regex instead of the one in tokenizer.json; llama.cpp follows tokenizer.json.)
    if tok == "bpe":
        from tokenizers import Tokenizer

        ref = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        encode = lambda text: ref.encode(text, add_special_tokens=False).ids  # noqa: E731
    else:  # sentencepiece itself (transformers would need protobuf to read tokenizer.model)
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=os.path.join(d, "tokenizer.model"))
        encode = sp.encode
    for text in TEXTS:
        assert _llama_tokens(out, text) == encode(text), text


def test_a_wrong_rope_layout_fails_the_check(tmp_path, monkeypatch):
    """The check can fail: without the q/k permutation llama.cpp's logits are far from the HF model's."""
    import edgequant.models.convert as conv
    from edgequant.models.verify import VerificationError

    d = write_tiny_hf(str(tmp_path / "m"), "llama", "bpe")
    monkeypatch.setattr(conv, "permute_qk", lambda w, n: w)
    with pytest.raises(VerificationError, match="disagree"):
        convert_hf_to_gguf(d, tmp_path / "bad.gguf", "F32")
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_quantized_convert_equals_llama_quantize_of_the_f32_conversion(tmp_path):
    from tests.support.compare import compare_gguf
    from tests.support.llama_peer import llama_quantize_file

    d = write_tiny_hf(str(tmp_path / "m"), "llama", "bpe")
    f32 = str(tmp_path / "f32.gguf")
    convert_hf_to_gguf(d, f32, "F32", verify=False)
    for ftype, fid in (("Q4_K_M", 15), ("Q5_0", 8)):
        ours, theirs = str(tmp_path / f"ours-{ftype}.gguf"), str(tmp_path / f"theirs-{ftype}.gguf")
        convert_hf_to_gguf(d, ours, ftype, verify=False)
        assert llama_quantize_file(f32, theirs, fid)["rc"] == 0
        cmp = compare_gguf(ours, theirs)
        assert cmp.all_equal, (ftype, cmp.mismatched[:3], cmp.kv_diffs[:3])


@pytest.fixture(scope="module")
def smollm2_hf(smollm2_q4_1, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("smol") / "smollm2-hf")
    export_hf(smollm2_q4_1, out)
    return out


def test_smollm2_export_loads_in_transformers_and_matches_llamacpp(smollm2_q4_1, smollm2_hf):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_hf)
    for text in TEXTS:
        assert tok(text, add_special_tokens=False)["input_ids"] == _llama_tokens(smollm2_q4_1, text), text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat.startswith("<|im_start|>system\n")
    model = AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32).eval()
    ids, cpp = llama_cpp_logits(smollm2_q4_1, CHECK_PROMPTS)
    r = compare_logits(hf_logits(model, ids), cpp)
    print(f"\nSmolLM2 Q4_1: llama.cpp vs exported HF model: {r}")  # noqa: T201 (figures for the report, with -s)
    assert r["rel_diff"] < 0.12
    assert r["top1_agreement"] >= 0.9


def _ppl(path: str, ids: list[int]) -> float:
    llm = llama_cpp.Llama(path, logits_all=True, n_ctx=512, n_threads=2, verbose=False)
    try:
        llm.eval(ids)
        logits = np.array(llm.scores[: len(ids)], dtype=np.float64)
    finally:
        llm.close()
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return float(np.exp(-np.mean(logp[np.arange(len(ids) - 1), ids[1:]])))


@pytest.mark.slow
def test_smollm2_round_trip_gguf_hf_gguf(smollm2_f32, smollm2_hf, tmp_path):
    """F32 GGUF -> HF -> F32 GGUF is bit-identical per tensor; perplexity in llama.cpp is equal."""
    hf = str(tmp_path / "hf")
    export_hf(smollm2_f32, hf)
    back = str(tmp_path / "back.gguf")
    convert_hf_to_gguf(hf, back, "F32", verify=False)
    with GGUFFile(smollm2_f32) as a, GGUFFile(back) as b:
        # (our order is llama-quantize's sorted order; the source file has the converter's order)
        assert sorted(t.name for t in a.tensors) == sorted(t.name for t in b.tensors)
        for ta in a.tensors:
            tb = b.tensor(ta.name)
            assert (ta.type_name, ta.shape_ne) == (tb.type_name, tb.shape_ne)
            assert np.array_equal(a.tensor_data(ta), b.tensor_data(tb)), ta.name
        for key in (
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.merges",
            "tokenizer.ggml.pre",
            "tokenizer.chat_template",
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id",
            "llama.rope.freq_base",
            "llama.attention.layer_norm_rms_epsilon",
            "tokenizer.ggml.add_bos_token",
        ):
            assert a.kvs[key] == b.kvs[key], key
    text = (
        open("/usr/share/common-licenses/GPL-3").read()[:4000]
        if os.path.exists("/usr/share/common-licenses/GPL-3")
        else " ".join(TEXTS) * 20
    )
    ids = _llama_tokens(smollm2_f32, text)[:256]
    p0, p1 = _ppl(smollm2_f32, ids), _ppl(back, ids)
    print(f"\nSmolLM2 F32 round trip: perplexity {p0:.6f} -> {p1:.6f} over {len(ids)} tokens")  # noqa: T201 (figures for the report, with -s)
    assert p0 == p1


def test_convert_with_an_imatrix_equals_llama_quantize_with_it(tmp_path):
    """``convert --imatrix``: the importance matrix reaches every tensor as llama-quantize applies it."""
    from edgequant.gguf.imatrix import ImatrixEntry, save_imatrix_gguf
    from tests.support.compare import compare_gguf
    from tests.support.llama_peer import llama_quantize_file

    d = write_tiny_hf(str(tmp_path / "m"), "llama", "bpe")
    f32 = str(tmp_path / "f32.gguf")
    convert_hf_to_gguf(d, f32, "F32", verify=False)
    rng = np.random.default_rng(7)
    stats = {}
    with GGUFFile(f32) as r:
        for t in r.tensors:
            if len(t.shape_ne) == 2 and t.name != "token_embd.weight":
                # Uneven column importances, so a lost or misrouted imatrix changes the chosen scales.
                sum2 = rng.gamma(0.5, 2.0, size=(1, t.shape_ne[0])).astype(np.float32) * 64
                stats[t.name] = ImatrixEntry(sum2, np.array([64], dtype=np.int64))
    imat = str(tmp_path / "imatrix.gguf")
    save_imatrix_gguf(imat, stats, chunk_size=64, datasets=["random"])
    for ftype, fid in (("Q4_K_M", 15), ("IQ4_XS", 30)):
        ours, theirs = str(tmp_path / f"ours-{ftype}.gguf"), str(tmp_path / f"theirs-{ftype}.gguf")
        convert_hf_to_gguf(d, ours, ftype, imatrix=imat, verify=False)
        assert llama_quantize_file(f32, theirs, fid, imatrix=imat)["rc"] == 0
        cmp = compare_gguf(ours, theirs)
        assert cmp.all_equal, (ftype, cmp.mismatched[:3], cmp.kv_diffs[:3])
        without = str(tmp_path / f"plain-{ftype}.gguf")
        convert_hf_to_gguf(d, without, ftype, verify=False)
        assert compare_gguf(without, theirs).mismatched  # the imatrix changed tensor bytes, not only metadata


def test_sentencepiece_gguf_exports_a_tokenizer_that_tokenizes_like_llamacpp(tmp_path):
    """GGUF with a SentencePiece ("llama") vocabulary -> HF folder: transformers' tokenizer from the exported
    tokenizer.json gives llama.cpp's token ids, and the weights come back to the original model's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = write_tiny_hf(str(tmp_path / "mistral-spm"), "mistral", "spm")
    gg = str(tmp_path / "spm-f32.gguf")
    convert_hf_to_gguf(d, gg, "F32", verify=False)
    out = str(tmp_path / "exported")
    export_hf(gg, out)
    tok = AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        assert tok(text, add_special_tokens=False)["input_ids"] == _llama_tokens(gg, text), text
    assert tok("hi")["input_ids"][0] == tok.bos_token_id  # add_bos carried over
    a = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).state_dict()
    b = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    for name, t in a.items():
        assert torch.equal(t, b[name]), name  # F32 in, F32 out: the inverse rope permutation is exact


def test_smollm2_tokenizer_has_llamacpps_check_hash(smollm2_hf):
    """The exported SmolLM2 tokenizer hashes (llama.cpp's chkhsh over CHKTXT) to llama.cpp's own "smollm"
    entry: CHKTXT is llama.cpp's text, and the pre-tokenizer is found by hash, not by the structural
    fallback."""
    from hashlib import sha256

    from transformers import AutoTokenizer

    from edgequant.models.hf_vocab import CHKHSH, CHKTXT

    tok = AutoTokenizer.from_pretrained(smollm2_hf)
    assert CHKHSH.get(sha256(str(tok.encode(CHKTXT)).encode()).hexdigest()) == "smollm"
