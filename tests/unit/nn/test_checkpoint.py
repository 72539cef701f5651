"""save_quantized / load_quantized: round trip of every config, atomic output, key-based layer inference,
errors."""

import pytest
import torch
from torch import nn

from edgequant.errors import FormatError
from edgequant.nn import (
    FP4Config,
    Int8Config,
    Int8DynamicConfig,
    Linear4bit,
    NF4Config,
    load_quantized,
    quantize_,
    save_quantized,
)
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


_NON_DEFAULT = [
    NF4Config(blocksize=128),
    NF4Config(compress_statistics=False, blocksize=256),
    NF4Config(compute_dtype="bfloat16", bnb_cpu_compatible=True),
    FP4Config(),
    FP4Config(compress_statistics=False, blocksize=128),
    FP4Config(compress_statistics=True, blocksize=32, compute_dtype="bfloat16"),
    Int8Config(threshold=0.0),
    Int8Config(threshold=2.5),
    Int8DynamicConfig(granularity="per_tensor", percentile=99.0),
    Int8DynamicConfig(percentile=100.0),
]
_SETTINGS = (
    "quant_type",
    "blocksize",
    "compress_statistics",
    "compute_dtype",
    "bnb_cpu_compatible",
    "threshold",
    "granularity",
    "percentile",
)


def _settings(layer: nn.Module) -> dict:
    return {k: getattr(layer, k) for k in _SETTINGS if hasattr(layer, k)}


@pytest.mark.parametrize("config", _NON_DEFAULT, ids=lambda c: repr(c.to_dict()))
def test_round_trip_rebuilds_layers_from_the_saved_config(tmp_path, config):
    torch.manual_seed(1)
    model = _model().eval()
    quantize_(model, config)
    save_quantized(model, tmp_path / "q.safetensors", config)
    fresh = _model().eval()
    load_quantized(fresh, tmp_path / "q.safetensors")
    for ours, theirs in zip(fresh, model, strict=True):
        assert type(ours) is type(theirs)
        assert _settings(ours) == _settings(theirs)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    x = torch.randn(5, 64) * 3  # |x| > 2.5 somewhere: LLM.int8's outlier columns take part
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16):
            assert torch.equal(fresh(x.to(dtype)), model(x.to(dtype)))


def test_checkpoint_without_config_is_read_from_its_keys(tmp_path):
    """bitsandbytes / transformers files carry no config: the layout alone decides (bnb's defaults)."""
    torch.manual_seed(2)
    model = _model().eval()
    quantize_(model, FP4Config(blocksize=128, compress_statistics=False))
    save_quantized(model, tmp_path / "q.safetensors")
    fresh = load_quantized(_model().eval(), tmp_path / "q.safetensors")
    assert isinstance(fresh[0], Linear4bit)
    assert (fresh[0].quant_type, fresh[0].blocksize, fresh[0].compress_statistics) == ("fp4", 128, False)
    assert fresh[0].compute_dtype is None  # the layer's own default, not the config's float32
    assert torch.equal(fresh[0].dequantize(), model[0].dequantize())


def test_unreadable_saved_config_names_the_file(tmp_path):
    from safetensors.torch import save_file

    model = _model()
    quantize_(model, Int8Config())
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, tmp_path / "m.safetensors", metadata={"format": "pt", "edgequant_quantization": "{bad"})
    with pytest.raises(FormatError, match=r"m\.safetensors: header entry 'edgequant_quantization'"):
        load_quantized(_model(), tmp_path / "m.safetensors")
