"""save_quantized / load_quantized: round trip, atomic output, key-based layer inference, errors."""

import pytest
import torch
from torch import nn

from edgequant.errors import FormatError
from edgequant.nn import Int8Config, Linear4bit, NF4Config, load_quantized, quantize_, save_quantized
from edgequant.nn.checkpoint import read_safetensors


def _model():
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64), nn.Linear(64, 10))


@pytest.mark.parametrize(
    "config", [NF4Config(), Int8Config(), NF4Config(compress_statistics=False, blocksize=32)]
)
def test_round_trip(tmp_path, config):
    torch.manual_seed(0)
    model = _model().eval()
    quantize_(model, config)
    path = tmp_path / "q.safetensors"
    save_quantized(model, path, config)
    _, meta = read_safetensors(path)
    assert '"_type"' in meta["edgequant_quantization"]
    fresh = _model().eval()
    load_quantized(fresh, path)
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    assert [type(m).__name__ for m in fresh] == [type(m).__name__ for m in model]


def test_wrong_architecture_and_garbage(tmp_path):
    model = _model()
    quantize_(model, NF4Config())
    save_quantized(model, tmp_path / "q.safetensors")
    other = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 32))
    with pytest.raises(Exception, match=r"^2: checkpoint weight shape \(64, 128\) does not fit"):
        load_quantized(other, tmp_path / "q.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(FormatError, match=r"bad\.safetensors"):
        load_quantized(_model(), tmp_path / "bad.safetensors")
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp files left


def test_tied_weights_saved(tmp_path):
    model = nn.Sequential(nn.Embedding(10, 64), nn.Linear(64, 64), nn.Linear(64, 10, bias=False))
    model[2].weight = model[0].weight.__class__(model[0].weight.data.T.contiguous().T)  # not tied: fine
    quantize_(model, NF4Config(exclude=("2",)))
    save_quantized(model, tmp_path / "m.safetensors")
    assert isinstance(model[1], Linear4bit)
