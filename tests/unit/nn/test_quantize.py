"""quantize_: configs validate, patterns select layers, lm_head skipped, precision hatch, dynamic int8."""

import pytest
import torch
from torch import nn

from edgequant.errors import ConfigError
from edgequant.nn import (
    FP4Config,
    Int8Config,
    Int8DynamicConfig,
    Int8DynamicLinear,
    Linear4bit,
    Linear8bitLt,
    NF4Config,
    config_from_dict,
    quantize_,
)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"attn": nn.Linear(64, 64), "mlp": nn.Linear(64, 64)}) for _ in range(2)
        )
        self.lm_head = nn.Linear(64, 32)

    def forward(self, x):
        for b in self.blocks:
            x = torch.relu(b["mlp"](b["attn"](x)))
        return self.lm_head(x)


def test_configs_are_frozen_and_validate():
    c = NF4Config()
    with pytest.raises(AttributeError):
        c.blocksize = 128
    with pytest.raises(ConfigError, match="blocksize=100"):
        NF4Config(blocksize=100)
    with pytest.raises(ConfigError, match="compute_dtype"):
        FP4Config(compute_dtype="float64")
    with pytest.raises(ConfigError, match="tuple of pattern"):
        Int8Config(exclude="lm_head")
    with pytest.raises(ConfigError, match="percentile"):
        Int8DynamicConfig(percentile=0)
    with pytest.raises(ConfigError, match="granularity"):
        Int8DynamicConfig(granularity="per_channel")
    assert config_from_dict(NF4Config(exclude=("x",)).to_dict()) == NF4Config(exclude=("x",))


def test_patterns_and_lm_head_skip():
    torch.manual_seed(0)
    model = Tiny()
    x = torch.randn(3, 64)
    ref = model(x)
    report = quantize_(model, NF4Config(exclude=("blocks.1.*",)))
    assert sorted(report.quantized) == ["blocks.0.attn", "blocks.0.mlp"]
    assert sorted(report.skipped) == ["blocks.1.attn", "blocks.1.mlp", "lm_head"]
    assert isinstance(model.blocks[0]["attn"], Linear4bit)
    assert type(model.lm_head) is nn.Linear
    assert (model(x) - ref).abs().max() < 0.2 * ref.abs().max()
    m2 = Tiny()
    quantize_(m2, Int8Config(include=("*.mlp",)))
    assert isinstance(m2.blocks[1]["mlp"], Linear8bitLt)
    assert type(m2.blocks[1]["attn"]) is nn.Linear


def test_keep_high_precision_threshold():
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():
        model.blocks[0]["attn"].weight[:, ::64] *= 30.0  # one large weight per block crushes the others
    report = quantize_(model, NF4Config(keep_high_precision_above=0.12))
    assert list(report.kept_high_precision) == ["blocks.0.attn"]
    assert report.kept_high_precision["blocks.0.attn"] > 0.12
    assert all(err < 0.12 for err in report.quantized.values())
    assert type(model.blocks[0]["attn"]) is nn.Linear


def _rest_error(layer, lin, x):
    """Mean |error| on the rows (tokens) 1.. that hold no outlier."""
    with torch.no_grad():
        return (layer(x) - lin(x))[1:].abs().mean().item()


def test_dynamic_int8_granularity_and_percentile_effects():
    torch.manual_seed(0)
    lin = nn.Linear(256, 64)
    x = torch.randn(64, 256)
    x[0] *= 100.0  # one outlier token
    per_tensor = Int8DynamicLinear.from_linear(lin, granularity="per_tensor", percentile=100.0)
    per_token = Int8DynamicLinear.from_linear(lin, granularity="per_token", percentile=100.0)
    assert _rest_error(per_token, lin, x) < _rest_error(per_tensor, lin, x) / 5
    x = torch.randn(64, 256)
    x[0, 3] = 1000.0  # one outlier element
    clipped = Int8DynamicLinear.from_linear(lin, granularity="per_tensor", percentile=99.9)
    assert _rest_error(clipped, lin, x) < _rest_error(per_tensor, lin, x) / 5


def test_dynamic_int8_matches_definition():
    torch.manual_seed(0)
    lin = nn.Linear(96, 40)
    layer = Int8DynamicLinear.from_linear(lin, percentile=99.0)
    x = torch.randn(5, 96)
    a = x.abs()
    k = -(-99 * 96 // 100)
    clip = a.kthvalue(k, dim=1).values
    sx = (clip / 127.0)[:, None]
    xq = torch.clamp(torch.round(x / sx), -127, 127)
    acc = (xq @ layer.weight.float().T).to(torch.int32)
    ref = acc.float() * sx * layer.weight_scale[None, :] + lin.bias
    assert torch.equal(layer(x), ref)


def test_nan_weight_names_the_layer():
    from edgequant.errors import NonFiniteError

    model = Tiny()
    with torch.no_grad():
        model.blocks[1]["mlp"].weight[4, 9] = float("nan")
    with pytest.raises(NonFiniteError, match=r"blocks\.1\.mlp\.weight: element \(4, 9\)"):
        quantize_(model, NF4Config())
    with pytest.raises(NonFiniteError, match=r"blocks\.1\.mlp\.weight: element \(4, 9\)"):
        quantize_(model, Int8Config())
