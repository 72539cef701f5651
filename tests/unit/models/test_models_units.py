"""Unit tests of the HF <-> GGUF pieces that need no peer: rope permutation, checkpoint reader, bad input."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from edgequant.errors import ConfigError, FormatError, ShapeError
from edgequant.models.architectures import permute_qk, unpermute_qk
from edgequant.models.hf_checkpoint import HFCheckpoint


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


def _write_st(path, tensors: dict[str, np.ndarray], dtype="F32", cut: int = 0):
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        raw = (
            a.astype(np.float32).tobytes()
            if dtype == "F32"
            else (a.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
        )
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    data = struct.pack("<Q", len(h)) + h + b"".join(blobs)
    with open(path, "wb") as fh:
        fh.write(data[: len(data) - cut])


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    return tmp_path


def test_reads_bf16_exactly_and_shards_via_index(folder, rng):
    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal(7).astype(np.float32)
    _write_st(folder / "model-00001-of-00002.safetensors", {"a": a}, "BF16")
    _write_st(folder / "model-00002-of-00002.safetensors", {"b": b})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps(
            {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
        )
    )
    with HFCheckpoint(folder) as ck:
        bf = ((a.view(np.uint32) >> 16) << 16).view(np.float32)
        assert np.array_equal(ck.get("a"), bf)
        assert np.array_equal(ck.get("b"), b)
        assert ck.shape("a") == (3, 4)


def test_pickle_only_checkpoint_is_refused_with_the_fix(folder):
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(FormatError, match=r"pickle.*safetensors"):
        HFCheckpoint(folder)


def test_truncated_safetensors_names_file_and_tensor(folder, rng):
    _write_st(folder / "model.safetensors", {"w": rng.standard_normal((8, 8))}, cut=10)
    with pytest.raises(FormatError, match=r"model.safetensors: tensor 'w'.*truncated"):
        HFCheckpoint(folder)


def test_index_naming_a_missing_shard(folder, rng):
    _write_st(folder / "model-00001-of-00002.safetensors", {"a": rng.standard_normal(4)})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps(
            {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
        )
    )
    with pytest.raises(FormatError, match=r"model-00002-of-00002.safetensors"):
        HFCheckpoint(folder)


def test_no_config_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"config.json"):
        HFCheckpoint(tmp_path)


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


def test_export_refuses_non_empty_output_folder(tmp_path):
    from edgequant.errors import OutputError
    from edgequant.models.atomic_dir import atomic_directory

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match="not an empty folder"):
        with atomic_directory(tmp_path / "out"):
            pass

    def fail():
        with atomic_directory(tmp_path / "new") as tmp:
            open(os.path.join(tmp, "a"), "w").close()
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail()
    assert sorted(os.listdir(tmp_path)) == ["out"]
