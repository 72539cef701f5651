"""models/hf_checkpoint.py: the safetensors checkpoint reader (dtypes, shards, refused and broken inputs)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from edgequant.errors import ConfigError, FormatError
from edgequant.models.hf_checkpoint import HFCheckpoint


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
