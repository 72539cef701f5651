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
