"""The reference LM (``assets/reference-lm``): shapes that let every ggml type apply, weights on no
quantization grid, and llama.cpp reading it as transformers does (tokens, perplexity, quantized bytes)."""

from __future__ import annotations

import os
import sysconfig

import numpy as np
import pytest

from edgequant.errors import ConfigError
from edgequant.gguf.codecs import dequantize, quantize
from edgequant.gguf.ftypes import FTYPES, parse_ftype
from edgequant.gguf.reader import GGUFFile
from edgequant.models.packaged import reference_lm
from tests.support import ggml_peer

pytestmark = [pytest.mark.reference, pytest.mark.slow]


@pytest.fixture(scope="module")
def reflm():
    try:
        return reference_lm()
    except ConfigError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def reflm_f32(reflm, tmp_path_factory):
    from edgequant.models.convert import convert_hf_to_gguf

    path = str(tmp_path_factory.mktemp("reflm") / "reference-lm-F32.gguf")
    convert_hf_to_gguf(reflm, path, "F32", verify=ggml_peer.available(), threads=2)
    return path


def _heldout_sample() -> str:
    """Two held-out modules (never trained on): the tokenizer has to agree on unseen code."""
    root = sysconfig.get_paths()["stdlib"]
    parts = []
    for rel in ("json/decoder.py", "email/utils.py"):
        with open(os.path.join(root, rel), encoding="utf-8") as f:
            parts.append(f.read())
    return "\n\n".join(parts)


def test_every_weight_matrix_is_a_multiple_of_256(reflm_f32):
    with GGUFFile(reflm_f32) as r:
        mats = [t for t in r.tensors if len(t.shape_ne) == 2]
        assert len(mats) == 1 + 6 * 7  # tied embeddings: token_embd only, 7 matrices per block
        for t in mats:
            assert t.shape_ne[0] % 256 == 0, (t.name, t.shape_ne)
            assert t.shape_ne[1] % 256 == 0, (t.name, t.shape_ne)


@pytest.mark.parametrize("codec", ["Q8_0", "Q4_1", "Q4_K"])
def test_weights_lie_on_no_quantization_grid(reflm_f32, codec):
    """A dequantized checkpoint (SmolLM2's F32 is Q4_1 expanded) re-encodes to its own grid with zero error;
    a natively float one loses something in every type."""
    with GGUFFile(reflm_f32) as r:
        for name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.5.ffn_down.weight"):
            x = np.ascontiguousarray(r.tensor_data(name), dtype=np.float32).reshape(
                -1, r.tensor(name).shape_ne[0]
            )
            back = dequantize(quantize(x, codec), codec, x.shape)
            rel = np.sqrt(np.mean((back - x) ** 2)) / np.sqrt(np.mean(x**2))
            assert rel > 1e-4, (name, codec, rel)


@pytest.mark.skipif(not ggml_peer.available(), reason="llama-cpp-python is not installed")
def test_llamacpp_tokenizes_heldout_code_like_transformers(reflm, reflm_f32):
    import llama_cpp
    from transformers import AutoTokenizer

    text = _heldout_sample()
    hf = AutoTokenizer.from_pretrained(reflm)(text, add_special_tokens=False)["input_ids"]
    llm = llama_cpp.Llama(model_path=reflm_f32, vocab_only=True, verbose=False)
    try:
        theirs = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    finally:
        llm.close()
    assert len(hf) > 5000
    assert theirs == hf


@pytest.mark.skipif(not ggml_peer.available(), reason="llama-cpp-python is not installed")
def test_llamacpp_perplexity_agrees_with_transformers(reflm_f32, tmp_path):
    """llama-perplexity's method on the F32 file: llama.cpp vs PyTorch (float activations), within 0.5 %."""
    from edgequant.eval import perplexity

    text = tmp_path / "heldout.txt"
    text.write_text(_heldout_sample())
    llama = perplexity(reflm_f32, text, n_ctx=256, n_chunks=4, backend="llama.cpp", threads=2)
    torch_ = perplexity(
        reflm_f32, text, n_ctx=256, n_chunks=4, backend="torch", threads=2, ggml_rounding=False
    )
    assert abs(llama["ppl"] / torch_["ppl"] - 1) < 0.005, (llama["ppl"], torch_["ppl"])


@pytest.mark.skipif(not ggml_peer.available(), reason="llama-cpp-python is not installed")
@pytest.mark.parametrize("ftype", list(FTYPES))
def test_every_ftype_without_fallbacks_and_byte_identical_to_llama_quantize(reflm_f32, tmp_path, ftype):
    """Every row is a multiple of 256, so no mixture falls back from a K-quant (SmolLM2's 576-wide rows make
    llama.cpp fall back for most tensors); edgequant's file equals llama.cpp's byte for byte."""
    from edgequant.workflows.quantize import quantize_model
    from tests.support import llama_peer
    from tests.support.compare import compare_gguf

    name, fid = parse_ftype(ftype)
    ours, theirs = str(tmp_path / "ours.gguf"), str(tmp_path / "llama.gguf")
    report = quantize_model(reflm_f32, ours, name, threads=2)
    assert report.n_fallback == 0, [t for t in report.tensors if t.fallback_from]
    res = llama_peer.llama_quantize_file(reflm_f32, theirs, fid, nthread=2)
    assert res["rc"] == 0, res["log"][-2000:]
    cmp = compare_gguf(ours, theirs)
    assert cmp.mismatched == [], cmp.mismatched[:5]
    assert cmp.files_identical
