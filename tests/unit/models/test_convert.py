"""models/convert.py: bad input to HF -> GGUF conversion fails with a clear error and writes nothing."""

from __future__ import annotations

import json
import os

import pytest

from edgequant.errors import ConfigError, ShapeError


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from tests.support.tiny import write_tiny_hf

    return write_tiny_hf(str(tmp_path_factory.mktemp("m") / "tiny-llama"), "llama", "bpe")


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_unsupported_architecture(tiny_llama, tmp_path):
    from edgequant.models import convert_hf_to_gguf

    d = _copy(tiny_llama, tmp_path / "gpt2")
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"GPT2LMHeadModel is not supported.*LlamaForCausalLM"):
        convert_hf_to_gguf(d, tmp_path / "out.gguf", verify=False)
    assert not os.path.exists(tmp_path / "out.gguf")


def test_missing_tokenizer(tiny_llama, tmp_path):
    from edgequant.models import convert_hf_to_gguf

    d = _copy(tiny_llama, tmp_path / "notok")
    os.unlink(d / "tokenizer.json")
    with pytest.raises(ConfigError, match=r"no tokenizer.model .* or tokenizer.json"):
        convert_hf_to_gguf(d, tmp_path / "out.gguf", verify=False)
    assert sorted(os.listdir(tmp_path)) == ["notok"]


def test_mismatched_shapes(tiny_llama, tmp_path):
    from edgequant.models import convert_hf_to_gguf

    d = _copy(tiny_llama, tmp_path / "shapes")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 384
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ShapeError, match=r"mlp\.\w+_proj\.weight' has shape \[.*config.json implies"):
        convert_hf_to_gguf(d, tmp_path / "out.gguf", verify=False)
    assert sorted(os.listdir(tmp_path)) == ["shapes"]
