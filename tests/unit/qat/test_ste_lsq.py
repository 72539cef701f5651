"""STE, min-max, LSQ and LSQ+ quantizers: forward and gradients against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from edgequant.errors import ConfigError
from edgequant.qat import QuantSpec
from edgequant.qat.modules import make_quantizer
from edgequant.qat.ste import fake_quant_ste, round_ste


def test_ste_book_exercise_gradient_passes_inside_range():
    # Book §8.3 exercise 3: x = 3.4 in range [0, 10], upstream 0.5 → ∂L/∂x = 0.5; outside the range → 0.
    x = torch.tensor([3.4, 11.0, -0.7], requires_grad=True)
    y = fake_quant_ste(x, torch.tensor(1.0), 0.0, 0, 10)
    assert y.tolist() == [3.0, 10.0, 0.0]
    y.backward(torch.full_like(y, 0.5))
    assert x.grad.tolist() == [0.5, 0.0, 0.0]


def test_round_ste_is_exact_and_identity_gradient():
    x = torch.linspace(-5, 5, 1001, requires_grad=True)
    y = round_ste(x)
    assert torch.equal(y.detach(), torch.round(x.detach()) + 0.0)
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


@pytest.mark.parametrize("symmetric", [True, False])
def test_minmax_weight_group_forward(symmetric):
    torch.manual_seed(0)
    w = torch.randn(4, 64)
    q = make_quantizer(QuantSpec(bits=4, method="ste", symmetric=symmetric, group_size=32), "weight", (4, 64))
    y = q(w)
    g = w.reshape(4, 2, 32)
    if symmetric:
        s = g.abs().amax(-1, keepdim=True) / 7
        ref = torch.clamp(torch.round(g / s), -8, 7) * s
    else:
        lo, hi = g.amin(-1, keepdim=True).clamp(max=0), g.amax(-1, keepdim=True).clamp(min=0)
        s = (hi - lo) / 15
        z = torch.round(-lo / s)
        ref = (torch.clamp(torch.round(g / s) + z, 0, 15) - z) * s
    torch.testing.assert_close(y, ref.reshape(4, 64), rtol=0, atol=1e-6)
    # at most half a step from the input everywhere (nothing clipped: the range is the data's)
    assert float(((y - w).reshape(4, 2, 32).abs() / s).max()) <= 0.5 + 1e-5


def test_minmax_activation_ema_and_eval_uses_running_range():
    q = make_quantizer(
        QuantSpec(bits=8, method="ste", symmetric=False, granularity="tensor", ema=0.5), "activation", (3,)
    )
    q.train()
    q(torch.tensor([[0.0, 1.0, 2.0]]))
    q(torch.tensor([[0.0, 1.0, 4.0]]))
    assert float(q.running_max) == pytest.approx(3.0)  # init 2, then 0.5*2 + 0.5*4
    q.eval()
    y = q(torch.tensor([[10.0]]))
    assert float(y) == pytest.approx(3.0, abs=0.02)  # clipped to the running range


def _lsq(bits=3, gran="tensor", shape=(4,), role="weight", symmetric=True):
    return make_quantizer(
        QuantSpec(bits=bits, method="lsq", granularity=gran, symmetric=symmetric), role, shape
    )


def test_lsq_init_book_exercise():
    # Book §8.3 exercise 6: w = [1.2, −0.8, 2.1, −1.5], 3 bits (Q_P = 3): s_init = 2·1.4/√3 ≈ 1.6166
    w = torch.tensor([1.2, -0.8, 2.1, -1.5])
    q = _lsq()
    q(w)
    assert q.step.item() == pytest.approx(2 * 1.4 / math.sqrt(3), rel=1e-6)


def test_lsq_gradients_match_the_paper_closed_form():
    # Book exercise 6 again, with its upstream gradient [0.1, −0.2, 0.3, −0.1] and a step that clips one
    # element.
    w = torch.tensor([1.2, -0.8, 2.1, -1.5], requires_grad=True)
    q = _lsq()
    q(w.detach())  # init
    with torch.no_grad():
        q.step.fill_(0.6)  # w/s = [2, −1.33, 3.5, −2.5]: 2.1 clips at Q_P = 3
    up = torch.tensor([0.1, -0.2, 0.3, -0.1])
    y = q(w)
    y.backward(up)
    s, qn, qp = 0.6, -4, 3
    u = w.detach() / s
    ref_y = torch.clamp(torch.round(u), qn, qp) * s
    torch.testing.assert_close(y.detach(), ref_y)
    inside = (u >= qn) & (u <= qp)
    dyds = torch.where(
        inside, -u + torch.round(u), torch.where(u < qn, torch.tensor(qn * 1.0), torch.tensor(qp * 1.0))
    )
    g = 1 / math.sqrt(4 * qp)  # N = 4 weights share the step
    assert q.step.grad.item() == pytest.approx(float((up * dyds).sum()) * g, rel=1e-6)
    torch.testing.assert_close(w.grad, up * inside)
    # the book's variant (floor instead of round) would differ here: −1.333 rounds to −1 but floors to −2
    book = torch.where(inside, -u + torch.floor(u), dyds)
    assert float((up * book).sum()) * g != pytest.approx(q.step.grad.item(), rel=1e-3)


def test_lsq_group_step_shape_and_grad_scale():
    torch.manual_seed(1)
    w = torch.randn(8, 64, requires_grad=True)
    q = _lsq(bits=4, gran="group", shape=(8, 64))
    q(w.detach())
    assert tuple(q.step.shape) == (8, 2, 1)
    torch.testing.assert_close(
        q.step, 2 * w.detach().reshape(8, 2, 32).abs().mean(-1, keepdim=True) / math.sqrt(7)
    )
    q(w).sum().backward()
    u = w.detach().reshape(8, 2, 32) / q.step.detach()
    d = torch.where((u >= -8) & (u <= 7), torch.round(u) - u, torch.clamp(u, -8, 7).round())
    torch.testing.assert_close(q.step.grad, d.sum(-1, keepdim=True) / math.sqrt(32 * 7), rtol=1e-5, atol=1e-6)


def test_lsq_set_bits_reinitializes_step():
    w = torch.randn(256)
    q = _lsq(bits=8)
    q(w)
    s8 = q.step.item()
    q.set_bits(4)
    q(w)
    assert q.step.item() == pytest.approx(s8 * math.sqrt(127) / math.sqrt(7), rel=1e-5)


def test_lsq_plus_gradients_closed_form():
    x = torch.tensor([[0.3, 1.7, 2.2, 5.0, -1.0]], requires_grad=True)
    q = make_quantizer(
        QuantSpec(bits=2, method="lsq+", symmetric=False, granularity="tensor"), "activation", (5,)
    )
    q(x.detach())
    # init: s = (max − min)/3 = 2, β = min = −1
    assert q.step.item() == pytest.approx(2.0)
    assert q.offset.item() == pytest.approx(-1.0)
    with torch.no_grad():
        q.step.fill_(1.0)
        q.offset.fill_(0.5)
    y = q(x)
    y.sum().backward()
    u = (x.detach() - 0.5) / 1.0
    inside = (u >= 0) & (u <= 3)
    torch.testing.assert_close(y.detach(), torch.clamp(torch.round(u), 0, 3) * 1.0 + 0.5)
    g = 1 / math.sqrt(5 * 3)
    ds = torch.where(inside, torch.round(u) - u, torch.clamp(u, 0, 3))
    assert q.step.grad.item() == pytest.approx(float(ds.sum()) * g, rel=1e-6)
    assert q.offset.grad.item() == pytest.approx(float((~inside).sum()) * g, rel=1e-6)
    torch.testing.assert_close(x.grad, inside.float())


def test_specs_validate():
    with pytest.raises(ConfigError, match="bits"):
        QuantSpec(bits=1)
    with pytest.raises(ConfigError, match="format"):
        QuantSpec(method="ggml", format="Q5_0")
    with pytest.raises(ConfigError, match="method"):
        QuantSpec(method="adaround")
