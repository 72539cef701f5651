"""QuantizedLinear: construction, from_linear and state_dict checks shared by the three quantized layers."""

import pytest
import torch
from torch import nn

from edgequant.errors import FormatError, NonFiniteError, ShapeError
from edgequant.nn import Int8DynamicLinear, Linear4bit, Linear8bitLt

LAYERS = [Linear4bit, Linear8bitLt, Int8DynamicLinear]


@pytest.mark.parametrize("cls", LAYERS)
def test_construction_checks_name_the_layer(cls):
    with pytest.raises(ShapeError, match=rf"^{cls.__name__} blk\.0: in/out features must be positive"):
        cls(0, 8, name="blk.0")
    layer = cls(64, 8, name="blk.0")
    with pytest.raises(ShapeError, match=rf"^{cls.__name__} blk\.0: weight shape \(8, 65\) does not fit"):
        layer.set_weight(torch.randn(8, 65))
    with pytest.raises(ShapeError, match=rf"^{cls.__name__} blk\.0: input last dim 63 != in_features 64"):
        layer(torch.randn(2, 63))
    w = torch.randn(8, 64)
    w[3, 5] = float("nan")
    with pytest.raises(NonFiniteError, match=r"blk\.0\.weight: element \(3, 5\)"):
        cls(64, 8, weight=w, name="blk.0")


@pytest.mark.parametrize("cls", LAYERS)
def test_from_linear_copies_the_bias(cls):
    lin = nn.Linear(64, 8)
    lin.bias.requires_grad_(False)
    layer = cls.from_linear(lin, name="x")
    assert torch.equal(layer.bias, lin.bias)
    assert layer.layer_name == "x"
    assert layer.bias.requires_grad is (cls is not Linear4bit)  # only Linear4bit keeps the float bias' flag
    assert cls.from_linear(nn.Linear(64, 8, bias=False)).bias is None


@pytest.mark.parametrize("cls", LAYERS)
def test_state_dict_round_trip_and_errors_name_the_layer(cls):
    src = nn.Sequential(cls(64, 8))
    dst = nn.Sequential(cls(64, 8))
    dst.load_state_dict(src.state_dict())
    assert torch.equal(dst[0].dequantize(), src[0].dequantize())
    assert torch.equal(dst[0].bias, src[0].bias)
    with pytest.raises(FormatError, match=r"^0: "):  # a float checkpoint
        dst.load_state_dict(nn.Sequential(nn.Linear(64, 8)).state_dict())
    with pytest.raises(ShapeError, match=r"^0: .*(does|do) not fit"):
        dst.load_state_dict(nn.Sequential(cls(64, 16)).state_dict())
    sd = src.state_dict()
    sd["0.bias"] = torch.zeros(9)
    with pytest.raises(ShapeError, match=r"^0: bias shape \(9,\) != \(8,\)"):
        dst.load_state_dict(sd)
    sd = {**src.state_dict(), "0.extra": torch.zeros(1)}
    assert dst.load_state_dict(sd, strict=False).unexpected_keys == ["0.extra"]
    sd = {k: v for k, v in src.state_dict().items() if k != "0.bias"}
    assert dst.load_state_dict(sd, strict=False).missing_keys == ["0.bias"]
