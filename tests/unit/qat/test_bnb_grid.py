"""NF4/FP4 QAT: the fake weights are the 4-bit round trip of edgequant.bnb (byte-identical to bitsandbytes,
tested in tests/unit/bnb), and the exported Linear4bit dequantizes to them bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgequant.errors import ConfigError
from edgequant.nn import Linear4bit
from edgequant.qat import QATConfig, QuantSpec, prepare
from edgequant.qat.export import to_linear4bit


@pytest.mark.parametrize(("fmt", "double"), [("NF4", True), ("FP4", False)])
def test_train_then_export_linear4bit_equals_fake_weights(fmt, double):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 8))
    prepare(
        m, QATConfig(weight=QuantSpec(method="bnb", format=fmt, group_size=64, double_quant=double), skip=())
    )
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    x, y = torch.randn(32, 128), torch.randint(0, 8, (32,))
    w0 = m[0].weight.detach().clone()
    for _ in range(3):
        loss = nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(w0, m[0].weight)  # the straight-through gradient reached the weights
    m.eval()
    with torch.no_grad():
        fakes = [m[i].quantized_weight().clone() for i in (0, 2)]
        out = m(x)
    assert len(torch.unique(fakes[0][0, :64])) <= 16  # one block: at most 16 code values
    to_linear4bit(m)
    assert isinstance(m[0], Linear4bit)
    assert isinstance(m[2], Linear4bit)
    for i, f in zip((0, 2), fakes, strict=True):
        assert torch.equal(m[i].dequantize(), f)
    torch.testing.assert_close(m(x), out, rtol=1e-5, atol=1e-5)  # fast kernel: another summation order


def test_bnb_spec_validation():
    with pytest.raises(ConfigError, match="NF4"):
        QuantSpec(method="bnb", format="Q4_0")
    with pytest.raises(ConfigError, match="group_size"):
        QuantSpec(method="bnb", format="NF4", group_size=32)
