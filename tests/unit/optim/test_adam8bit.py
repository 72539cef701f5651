"""Adam8bit / AdamW8bit: state layout (bnb's keys), training progress, 32-bit fallback, errors."""

import pytest
import torch

from edgequant.errors import ConfigError
from edgequant.optim import Adam8bit, AdamW8bit


def test_state_layout_and_progress():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    opt = AdamW8bit(model.parameters(), lr=3e-3)
    x = torch.randn(256, 128)
    y = x[:, :1] * 2 - x[:, 1:2]
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    big = opt.state[model[0].weight]
    assert big["state1"].dtype == torch.uint8
    assert big["absmax1"].shape == (32,)
    assert big["step"] == 60
    assert big["qmap2"][0] == 0
    assert big["qmap1"][127] == 0
    small = opt.state[model[2].weight]  # 64 < min_8bit_size: float32 states
    assert small["state1"].dtype == torch.float32
    assert "absmax1" not in small


def test_defaults_and_errors():
    p = [torch.nn.Parameter(torch.zeros(10))]
    assert AdamW8bit(p).param_groups[0]["weight_decay"] == 1e-2
    assert Adam8bit(p).param_groups[0]["weight_decay"] == 0.0
    with pytest.raises(ConfigError, match="amsgrad"):
        AdamW8bit(p, amsgrad=True)
    with pytest.raises(ConfigError, match="betas"):
        AdamW8bit(p, betas=(0.9, 1.0))


def test_state_dict_resume_is_identical():
    torch.manual_seed(0)
    a = torch.nn.Linear(128, 64)
    b = torch.nn.Linear(128, 64)
    b.load_state_dict(a.state_dict())
    oa = AdamW8bit(a.parameters(), lr=1e-2)
    x = torch.randn(16, 128)
    for _ in range(2):
        oa.zero_grad()
        a(x).square().mean().backward()
        oa.step()
    b.load_state_dict(a.state_dict())
    ob = AdamW8bit(b.parameters(), lr=1e-2)
    ob.load_state_dict(oa.state_dict())
    for m, o in ((a, oa), (b, ob)):
        o.zero_grad()
        m(x).square().mean().backward()
        o.step()
    assert torch.equal(a.weight, b.weight)
    assert torch.equal(oa.state[a.weight]["state2"], ob.state[b.weight]["state2"])


def test_bfloat16_parameters():
    p = torch.nn.Parameter(torch.randn(64, 128, dtype=torch.bfloat16))
    opt = AdamW8bit([p], lr=1e-2)
    p.grad = torch.randn_like(p)
    before = p.detach().clone()
    opt.step()
    assert p.dtype == torch.bfloat16
    assert not torch.equal(p, before)


def test_foreign_state_dict_is_refused():
    from edgequant.errors import FormatError

    p = torch.nn.Parameter(torch.zeros(10))
    opt = AdamW8bit([p])
    bad = {
        "state": {0: {"exp_avg": torch.zeros(10), "step": torch.tensor(1.0)}},
        "param_groups": opt.state_dict()["param_groups"],
    }
    with pytest.raises(FormatError, match="state of parameter 0"):
        opt.load_state_dict(bad)
