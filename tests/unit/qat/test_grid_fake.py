"""The fused learned-scale fake quantization (ste.grid_fake: ggml grids, LSQ, LSQ+) equals the unfused
autograd graph bit for bit."""

import pytest
import torch

from edgequant.qat import QuantSpec
from edgequant.qat.quantizers import LSQPlusQuantizer, LSQQuantizer
from edgequant.qat.ste import grad_scale, grid_fake, round_ste


def _unfused(v, d, m, qmin, qmax):
    if m is None:
        return round_ste(torch.clamp(v / d, qmin, qmax)) * d
    return round_ste(torch.clamp((v - m) / d, qmin, qmax)) * d + m


def _bits(t):
    return t.detach().view(torch.int32)


@pytest.mark.parametrize(("qmin", "qmax", "offset"), [(-8, 7, False), (0, 15, True), (-127, 127, False)])
def test_grid_fake_values_and_gradients_bit_identical(qmin, qmax, offset):
    torch.manual_seed(0)
    w = torch.randn(8, 4, 32) * 0.05
    w[0, 0] = 0.0
    w[1, 1, 3] = -1e-9  # rounds to −0: the code is +0 either way
    d0 = (w.abs().amax(-1, keepdim=True) / (qmax * 0.8)).clamp_min(2.0**-24).to(torch.float16).float()
    m0 = w.amin(-1, keepdim=True).to(torch.float16).float() if offset else None
    g = torch.randn_like(w)
    results = []
    for fn in (_unfused, grid_fake):
        v = w.clone().requires_grad_()
        d = d0.clone().requires_grad_()
        m = m0.clone().requires_grad_() if offset else None
        y = fn(v, d, m, qmin, qmax)
        (y * g).sum().backward()
        results.append([y, v.grad, d.grad] + ([m.grad] if offset else []))
    for a, b in zip(*results, strict=True):
        assert torch.equal(_bits(a), _bits(b))
    assert (results[1][0] == 0).any()
    assert not torch.signbit(results[1][0][results[1][0] == 0]).any()


def test_grid_fake_without_scale_gradient():
    v = torch.randn(2, 3, 32, requires_grad=True)
    d = torch.full((2, 3, 1), 0.1)
    grid_fake(v, d, None, -8, 7).sum().backward()
    assert v.grad is not None
    assert v.grad.shape == v.shape


def _lsq_unfused(q, v):
    qmin, qmax = q.qrange()
    g = q.grad_factor(v)
    if isinstance(q, LSQPlusQuantizer):
        s, beta = grad_scale(q.step, g), grad_scale(q.offset, g)
        return round_ste(torch.clamp((v - beta) / s, qmin, qmax)) * s + beta
    s = grad_scale(q.step, g)
    return round_ste(torch.clamp(v / s, qmin, qmax)) * s


@pytest.mark.parametrize("cls", [LSQQuantizer, LSQPlusQuantizer])
@pytest.mark.parametrize(
    ("role", "spec", "shape"),
    [
        ("weight", QuantSpec(bits=3, method="lsq", granularity="group", group_size=32), (16, 64)),
        ("activation", QuantSpec(bits=4, method="lsq", granularity="tensor"), (3, 5, 64)),
        ("activation", QuantSpec(bits=8, method="lsq", granularity="channel"), (3, 5, 64)),
    ],
)
def test_lsq_fused_forward_equals_the_unfused_graph(cls, role, spec, shape):
    torch.manual_seed(1)
    x = torch.randn(shape)
    q = cls(spec, role, (shape[-1],) if role == "activation" else shape, "t")
    q(x)  # init
    with torch.no_grad():
        q.step.mul_(0.7)
    g = torch.randn(shape)
    out = []
    for fn in (lambda v: q(v), lambda v: _lsq_unfused(q, q.view(v)).reshape(v.shape)):
        q.zero_grad(set_to_none=True)
        v = x.clone().requires_grad_()
        y = fn(v)
        (y * g).sum().backward()
        out.append([y, v.grad, q.step.grad] + ([q.offset.grad] if cls is LSQPlusQuantizer else []))
    for a, b in zip(*out, strict=True):
        assert torch.equal(_bits(a), _bits(b))
