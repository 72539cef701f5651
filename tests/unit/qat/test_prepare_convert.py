"""prepare → train → convert on small models; scopes, bit changes, config JSON."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgequant.errors import ConfigError, ShapeError
from edgequant.qat import QATConfig, QuantSpec, convert, prepare, quantizers, set_bits, set_scope
from edgequant.qat.modules import QATConv2d, QATLinear


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))


def _cfg(**kw):
    return QATConfig(
        weight=QuantSpec(bits=4, method="lsq", group_size=32),
        activation=QuantSpec(bits=8, method="lsq", symmetric=False, granularity="tensor"),
        skip=(),
        **kw,
    )


def test_prepare_swaps_modules_keeps_parameters_and_trains():
    m = _mlp()
    w0 = m[0].weight
    x = torch.rand(16, 64)
    prepare(m, _cfg(), example_inputs=x)
    assert isinstance(m[0], QATLinear)
    assert m[0].weight is w0
    assert all(bool(q.initialized) for _, q in quantizers(m))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    y = torch.randint(0, 10, (16,))
    losses = []
    for _ in range(20):
        loss = nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert m[0].weight_quantizer.step.grad is not None


def test_convert_bakes_the_fake_weights_and_keeps_eval_outputs():
    m = _mlp()
    x = torch.rand(8, 64)
    prepare(m, _cfg(), example_inputs=x)
    m.eval()
    with torch.no_grad():
        before = m(x)
        wq = m[2].quantized_weight().clone()
    convert(m)
    assert type(m[2]) is nn.Linear
    assert torch.equal(m[2].weight, wq)
    assert torch.equal(m(x), before)


def test_conv_and_scope_and_edge_modules():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 10))
    prepare(
        m,
        QATConfig(
            weight=QuantSpec(bits=4, method="ste", granularity="channel"),
            activation=QuantSpec(bits=8, method="ste", symmetric=False, granularity="tensor"),
            skip=(),
            edge_modules=("3",),
        ),
    )
    assert isinstance(m[0], QATConv2d)
    set_scope(m, "weights")
    assert m[0].weight_quantizer.enabled
    assert not m[0].input_quantizer.enabled
    assert not m[3].weight_quantizer.enabled
    set_scope(m, "activations")
    assert m[0].input_quantizer.enabled
    assert not m[3].input_quantizer.enabled
    set_scope(m, "all")
    assert m[3].weight_quantizer.enabled
    assert m[3].input_quantizer.enabled
    with pytest.raises(ConfigError, match="scope"):
        set_scope(m, "everything")
    x = torch.rand(2, 1, 8, 8)
    m.eval()
    before = m(x)
    convert(m)
    assert type(m[0]) is nn.Conv2d
    torch.testing.assert_close(m(x), before)


def test_set_bits_changes_the_grid():
    m = _mlp()
    prepare(m, QATConfig(weight=QuantSpec(bits=8, method="lsq"), skip=()))
    set_bits(m, 2)
    w = m[0].quantized_weight().detach()
    steps = m[0].weight_quantizer.step.detach()
    codes = (w.reshape(32, 2, 32) / steps).round()
    assert codes.min() >= -2
    assert codes.max() <= 1
    assert len(torch.unique(codes)) <= 4


def test_config_json_round_trip_and_errors():
    c = _cfg(edge_modules=("lm_head",))
    assert QATConfig.from_json(c.to_json()) == c
    with pytest.raises(ConfigError, match="quantizes nothing"):
        QATConfig(weight=None, activation=None)
    with pytest.raises(ConfigError, match=r"no nn\.Linear"):
        prepare(_mlp(), QATConfig(skip=("",)))
    with pytest.raises(ShapeError, match=r"0\.weight.*group_size 48"):
        prepare(_mlp(), QATConfig(weight=QuantSpec(group_size=48), skip=()))
