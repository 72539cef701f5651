"""Mixed-precision master weights keep updates that bf16 alone loses; gradient checkpointing gives the same
gradients as storing the activations."""

from __future__ import annotations

import torch
from torch import nn

from edgequant.qat import QATConfig, QuantSpec, prepare
from edgequant.qat.mixed_precision import MasterWeights, checkpoint_modules


def test_master_weights_accumulate_small_updates():
    lin = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    mw = MasterWeights(lin, torch.bfloat16)
    assert lin.weight.dtype == torch.bfloat16
    opt = torch.optim.SGD(mw.parameters(), lr=1e-3)
    x = torch.ones(1, 4, dtype=torch.bfloat16)
    for _ in range(20):
        lin(x).sum().backward()  # dL/dw = 1: each step moves w by −1e-3, below bf16's spacing at 1.0 (2^-7)
        mw.step(opt)
    master = mw.parameters()[0]
    torch.testing.assert_close(master, torch.full_like(master, 1 - 20e-3), rtol=0, atol=1e-6)
    assert float(lin.weight[0, 0]) == float(torch.tensor(0.98).to(torch.bfloat16))
    # plain bf16 SGD would not move at all: 1 − 1e-3 rounds back to 1 in bf16
    assert float((torch.tensor(1.0, dtype=torch.bfloat16) - 1e-3).to(torch.bfloat16)) == 1.0


def test_checkpointing_gives_identical_gradients():
    def build():
        torch.manual_seed(0)
        m = nn.Sequential(*[nn.Sequential(nn.Linear(16, 16), nn.ReLU()) for _ in range(3)])
        return prepare(m, QATConfig(weight=QuantSpec(bits=4, method="lsq", group_size=16), skip=()))

    x = torch.randn(8, 16)
    a, b = build(), build()
    assert checkpoint_modules(b, (nn.Sequential,)) == 4  # the outer container and its three blocks
    a(x).square().sum().backward()
    b(x).square().sum().backward()
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=0, atol=0, msg=na)
