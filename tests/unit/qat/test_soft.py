"""Soft tanh, sigmoid-surrogate rounding and Gumbel-softmax quantizers: forward and gradients against finite
differences (float64, torch.autograd.gradcheck) and closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from edgequant.qat import QuantSpec, set_gumbel_step
from edgequant.qat.modules import make_quantizer
from edgequant.qat.soft import sigmoid_round


def _q(method, bits=3, **kw):
    q = make_quantizer(QuantSpec(bits=bits, method=method, granularity="tensor", **kw), "weight", (6,))
    q.double()
    q(torch.tensor([0.5, -1.0, 2.0, 0.1, -0.3, 1.4], dtype=torch.float64))  # init the step
    with torch.no_grad():
        q.step.fill_(0.5)
    q.train()
    return q


# points away from grid boundaries and kinks, inside the range [−4, 3]·0.5
X = torch.tensor([0.13, -0.61, 1.07, 0.38, -1.22, 0.77], dtype=torch.float64)


def test_tanh_soft_quantizer_forward_and_gradcheck():
    q = _q("tanh", softness=4.0)
    y = q(X)
    u = X / 0.5
    i = torch.floor(u)
    f = u - i
    ref = (i + 0.5 + 0.5 * torch.tanh(4.0 * (f - 0.5)) / math.tanh(2.0)) * 0.5
    torch.testing.assert_close(y, ref)
    # passes through the grid points, and approaches round() as k grows
    assert torch.allclose(
        q(torch.tensor([0.5, -1.0], dtype=torch.float64)), torch.tensor([0.5, -1.0], dtype=torch.float64)
    )
    x = X.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: q(v), (x,))
    # the step's gradient: finite differences of the same soft function (g = 1 ⇒ compare after undoing it)
    g = 1 / math.sqrt(6 * 3)
    q.zero_grad()
    q(X).sum().backward()
    eps = 1e-6
    with torch.no_grad():
        q.step.fill_(0.5 + eps)
        hi = q(X).sum()
        q.step.fill_(0.5 - eps)
        lo = q(X).sum()
        q.step.fill_(0.5)
    assert q.step.grad.item() / g == pytest.approx(float((hi - lo) / (2 * eps)), rel=1e-5)
    q.eval()
    torch.testing.assert_close(q(X), torch.clamp(torch.round(u), -4, 3) * 0.5)


def test_tanh_large_k_approaches_round():
    q = _q("tanh", softness=400.0)  # |f − ½| ≥ 0.04 here: tanh(16) ≈ 1
    torch.testing.assert_close(q(X), torch.round(X / 0.5) * 0.5, atol=1e-6, rtol=0)


def test_sigmoid_surrogate_gradient_matches_surrogate_finite_differences():
    u = torch.tensor([0.2, 1.45, -0.7, 2.9, -2.55], dtype=torch.float64, requires_grad=True)
    p = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    y = sigmoid_round(u, p)
    assert torch.equal(y.detach(), torch.round(u.detach()))  # hard forward
    y.sum().backward()

    def surrogate(uu, pp):
        return torch.floor(uu) + torch.sigmoid(pp * (uu - torch.floor(uu) - 0.5))

    eps = 1e-6
    du = (surrogate(u.detach() + eps, p.detach()) - surrogate(u.detach() - eps, p.detach())) / (2 * eps)
    torch.testing.assert_close(u.grad, du)
    dp = (surrogate(u.detach(), p.detach() + eps) - surrogate(u.detach(), p.detach() - eps)).sum() / (2 * eps)
    assert p.grad.item() == pytest.approx(float(dp), rel=1e-6)


def test_sigmoid_quantizer_learns_sharpness_and_is_hard_in_eval():
    q = _q("sigmoid", softness=5.0)
    y = q(X)
    torch.testing.assert_close(y.detach(), torch.clamp(torch.round(X / 0.5), -4, 3) * 0.5)
    y.pow(2).sum().backward()
    assert q.sharpness.grad is not None
    assert q.sharpness.grad.item() != 0.0


def test_gumbel_temperature_schedule():
    q = _q("gumbel", tau0=2.0, tau_decay=0.01)
    model = torch.nn.ModuleDict({"q": q})
    assert set_gumbel_step(model, 100) == [pytest.approx(2.0 * math.exp(-1.0))]
    assert q.tau == pytest.approx(2.0 * math.exp(-1.0))


def test_gumbel_closed_form_with_fixed_noise_and_gradcheck():
    q = _q("gumbel", tau0=0.7)
    noise = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    q.gumbel_noise = lambda shape, like: noise
    u = X / 0.5
    i = torch.floor(u)
    f = u - i
    logits = (torch.stack([torch.log(1 - f), torch.log(f)], -1) + noise) / 0.7
    ref = (i + torch.softmax(logits, -1)[:, 1]) * 0.5
    torch.testing.assert_close(q(X), ref)
    x = X.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: q(v), (x,))


def test_gumbel_low_temperature_is_unbiased_stochastic_rounding():
    q = _q("gumbel", tau0=1e-4)
    q.generator = torch.Generator().manual_seed(0)
    x = torch.full((20000,), 0.3, dtype=torch.float64)  # u = 0.6: 1 with p = 0.6, 0 with p = 0.4
    y = q(x)
    assert float(((y - 0.0).abs() < 1e-3).float().mean() + ((y - 0.5).abs() < 1e-3).float().mean()) > 0.999
    assert float(y.mean()) == pytest.approx(0.3, abs=0.005)
