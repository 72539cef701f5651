"""AdamW8bit / Adam8bit against bitsandbytes on CPU: parameters and every state tensor bit-identical."""

from __future__ import annotations

import copy

import pytest
import torch

from edgequant.optim import Adam8bit, AdamW8bit

bnb = pytest.importorskip("bitsandbytes")
pytestmark = pytest.mark.reference


@pytest.mark.parametrize(("ours", "theirs"), [(AdamW8bit, "AdamW8bit"), (Adam8bit, "Adam8bit")])
@pytest.mark.parametrize("kwargs", [{}, {"lr": 1e-2, "weight_decay": 0.1, "betas": (0.8, 0.99)}])
def test_bit_identical_over_steps(ours, theirs, kwargs):
    torch.manual_seed(0)
    m1 = torch.nn.Sequential(torch.nn.Linear(130, 97), torch.nn.Tanh(), torch.nn.Linear(97, 10))
    m2 = copy.deepcopy(m1)
    o1 = ours(m1.parameters(), **kwargs)
    o2 = getattr(bnb.optim, theirs)(m2.parameters(), **kwargs)
    for _ in range(4):
        x = torch.randn(16, 130)
        for m, o in ((m1, o1), (m2, o2)):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)
        s1, s2 = o1.state[a], o2.state[b]
        assert sorted(s1) == sorted(k for k in s2 if k != "unorm_vec")
        for k, v in s2.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(s1[k], v), k
                assert s1[k].dtype == v.dtype, k
            else:
                assert s1[k] == v


def test_resume_from_a_bitsandbytes_state_dict():
    torch.manual_seed(0)
    m1 = torch.nn.Linear(128, 64)
    m2 = copy.deepcopy(m1)
    o2 = bnb.optim.AdamW8bit(m2.parameters(), lr=1e-2)
    x = torch.randn(8, 128)
    for _ in range(2):
        o2.zero_grad()
        m2(x).square().mean().backward()
        o2.step()
    m1.load_state_dict(m2.state_dict())
    o1 = AdamW8bit(m1.parameters(), lr=1e-2)
    o1.load_state_dict(o2.state_dict())
    for m, o in ((m1, o1), (m2, o2)):
        o.zero_grad()
        m(x).square().mean().backward()
        o.step()
    assert torch.equal(m1.weight, m2.weight)
    assert torch.equal(m1.bias, m2.bias)
