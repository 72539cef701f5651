"""Merged LoRA export: a transformers folder and a GGUF (edgequant's codecs), read back and run."""

from __future__ import annotations

import os

import pytest
import torch

from edgequant.errors import ConfigError, OutputError
from edgequant.nn.lora import apply_lora, lora_modules
from edgequant.nn.lora_config import LoraConfig
from edgequant.nn.lora_export import export_merged_gguf, export_merged_hf

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """A tiny tied-embedding llama folder (built in code), loaded, with random LoRA updates on all Linears."""
    from edgequant.models import load_causal_lm
    from tests.support.tiny import write_tiny_hf

    folder = write_tiny_hf(str(tmp_path_factory.mktemp("tiny") / "base"), tie_word_embeddings=True)
    model, tok = load_causal_lm(folder)
    torch.manual_seed(0)
    apply_lora(model, LoraConfig(r=4, alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for m in lora_modules(model).values():
            torch.nn.init.normal_(m.lora_B.weight, std=0.02)
    ids = tok("The quick brown fox jumps over the lazy dog. 1234", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    return model, tok, ids, logits


def _logits(path, ids):
    from edgequant.models import load_causal_lm

    model, _ = load_causal_lm(path)
    with torch.no_grad():
        return model(ids).logits


def test_merged_hf_folder_runs_like_the_adapted_model(adapted, tmp_path):
    model, tok, ids, logits = adapted
    files = export_merged_hf(model, tok, tmp_path / "merged")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    assert len(lora_modules(model)) == 14  # the live model keeps its adapters
    # merged weights are W + BA rounded once in float32: differences at float32 rounding level
    torch.testing.assert_close(_logits(tmp_path / "merged", ids), logits, rtol=0, atol=1e-4)
    with pytest.raises(OutputError, match="not an empty folder"):
        export_merged_hf(model, tok, tmp_path / "merged")


def test_merged_gguf_runs_like_the_adapted_model(adapted, tmp_path):
    model, tok, ids, logits = adapted
    out = tmp_path / "merged-f32.gguf"
    result = export_merged_gguf(model, tok, out, "F32")
    assert result.ftype == "F32"
    assert sorted(os.listdir(tmp_path)) == ["merged-f32.gguf"]  # the intermediate folder is gone
    torch.testing.assert_close(_logits(out, ids), logits, rtol=0, atol=1e-4)
    q8 = tmp_path / "merged-q8.gguf"
    export_merged_gguf(model, tok, q8, "Q8_0")
    q8_logits = _logits(q8, ids)
    assert (q8_logits - logits).abs().max() < 0.05 * logits.abs().max()  # Q8_0 rounding, not garbage


@pytest.mark.reference
def test_merged_gguf_verified_by_llamacpp(adapted, tmp_path):
    pytest.importorskip("llama_cpp")
    model, tok, _, _ = adapted
    result = export_merged_gguf(model, tok, tmp_path / "merged-q8.gguf", "Q8_0", verify=True)
    assert result.verification["status"] == "ok"  # a disagreement would have raised VerificationError


def test_export_errors(adapted, tmp_path):
    model, _, _, _ = adapted
    with pytest.raises(ConfigError, match="needs the model's tokenizer"):
        export_merged_gguf(model, None, tmp_path / "x.gguf")
    with pytest.raises(OutputError, match="does not exist"):
        export_merged_gguf(model, adapted[1], tmp_path / "nope" / "x.gguf")
    with pytest.raises(ConfigError, match="needs a transformers model"):
        export_merged_hf(torch.nn.Linear(2, 2), None, tmp_path / "lin")
