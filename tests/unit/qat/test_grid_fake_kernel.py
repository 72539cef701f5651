"""The one-pass numba path of ste.grid_fake (kernels.fake_quant) gives the torch path's bits."""

import numpy as np
import pytest
import torch

from edgequant.kernels import fake_quant
from edgequant.qat.ste import grid_fake


def _bits(t):
    return t.detach().contiguous().view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def _run(v0, d0, m0, g, qmin, qmax, kernel, need_d=True, need_m=True, monkeypatch=None):
    """(y, ∂v, ∂d, ∂m) of grid_fake; ``kernel`` False forces the torch path."""
    with monkeypatch.context() as mp:
        if not kernel:
            mp.setattr(fake_quant, "grid_fake_forward", lambda *a: None)
            mp.setattr(fake_quant, "grid_fake_backward", lambda *a: None)
        v = v0.detach().requires_grad_()  # new leaves on the same storage and strides
        d = d0.detach().requires_grad_(need_d)
        m = None if m0 is None else m0.detach().requires_grad_(need_m)
        y = grid_fake(v, d, m, qmin, qmax)
        y.backward(g)
    return [y, v.grad, d.grad, None if m is None else m.grad]


def _assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        assert (x is None) == (y is None)
        if x is not None:
            assert x.dtype == y.dtype
            assert x.shape == y.shape
            assert torch.equal(_bits(x), _bits(y))


def _case(shape, qmin, qmax, offset, seed=0):
    """Weights with ties, clamp-boundary values, ±0; fp16 scales; gradients over 8 decades."""
    gen = torch.Generator().manual_seed(seed)
    k = shape[-1]
    d = (torch.rand(*shape[:-1], 1, generator=gen) * 0.05 + 0.01).to(torch.float16).float()
    m = (torch.randn(*shape[:-1], 1, generator=gen) * 0.1).to(torch.float16).float() if offset else None
    base = torch.zeros(shape) if m is None else m.expand(shape)
    codes = torch.randint(qmin - 3, qmax + 4, shape, generator=gen).float()
    half = torch.randint(0, 2, shape, generator=gen).float() * 0.5  # x.5: rounding ties
    v = (codes + half) * d + base  # exact multiples of d/2 (d fp16): u = codes + half exactly when m is None
    noise = torch.randn(shape, generator=gen) * d
    v = torch.where(torch.rand(shape, generator=gen) < 0.4, v + noise, v)
    flat = v.view(-1, k)
    flat[0, :4] = torch.tensor([0.0, -0.0, -1e-9, 1e-9])  # ±0 and values rounding to −0
    flat[-1, 0] = (qmin * d.view(-1)[-1] + (0 if m is None else m.view(-1)[-1])).item()  # u = qmin
    flat[-1, 1] = (qmax * d.view(-1)[-1] + (0 if m is None else m.view(-1)[-1])).item()  # u = qmax
    g = torch.randn(shape, generator=gen) * torch.logspace(-4, 4, k)
    return v, d, m, g


GRIDS = [(-8, 7, False), (0, 15, True), (-127, 127, False), (-8, 7, True)]


@pytest.mark.parametrize(("qmin", "qmax", "offset"), GRIDS)
@pytest.mark.parametrize("shape", [(6, 4, 32), (3, 5, 20), (2, 40), (7, 8), (3, 2, 100), (1, 256), (40,)])
def test_kernel_equals_torch_path(qmin, qmax, offset, shape, monkeypatch):
    v, d, m, g = _case(shape, qmin, qmax, offset)
    assert fake_quant.grid_fake_forward(v, d, m, qmin, qmax) is not None  # the kernel runs on this layout
    _assert_same(
        _run(v, d, m, g, qmin, qmax, True, monkeypatch=monkeypatch),
        _run(v, d, m, g, qmin, qmax, False, monkeypatch=monkeypatch),
    )


def test_kernel_values_on_ties_clamp_and_zero(monkeypatch):
    d = torch.full((1, 1), 0.5)
    u = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 7.0, 7.5, 8.0, -8.0, -8.5, -9.0, 0.0, -0.0, -0.2])
    v = torch.cat([u * 0.5, torch.zeros(2)]).reshape(1, 16)
    y = fake_quant.grid_fake_forward(v, d, None, -8, 7)
    want = [0.0, 1.0, 1.0, 0.0, -1.0, 3.5, 3.5, 3.5, -4.0, -4.0, -4.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert y.view(-1).tolist() == want
    assert not torch.signbit(y[y == 0]).any()  # a rounded −0 is the code +0
    g = torch.ones(1, 16)
    gv, _, gm = fake_quant.grid_fake_backward(v, d, None, g, -8, 7, True, False)
    inside = [1.0] * 8 + [1.0, 0.0, 0.0] + [1.0] * 5  # u ∈ [−8, 7]; 7.5, 8.0 outside too
    inside[6] = inside[7] = 0.0
    assert gv.view(-1).tolist() == inside
    assert gm is None
    _assert_same(
        _run(v, d, None, g, -8, 7, True, monkeypatch=monkeypatch),
        _run(v, d, None, g, -8, 7, False, monkeypatch=monkeypatch),
    )


@pytest.mark.parametrize(("need_d", "need_m"), [(False, True), (True, False), (False, False)])
def test_kernel_partial_gradients(need_d, need_m, monkeypatch):
    v, d, m, g = _case((4, 3, 32), 0, 15, True, seed=3)
    a = _run(v, d, m, g, 0, 15, True, need_d, need_m, monkeypatch)
    b = _run(v, d, m, g, 0, 15, False, need_d, need_m, monkeypatch)
    _assert_same(a, b)
    assert (a[2] is None) == (not need_d)
    assert (a[3] is None) == (not need_m)


def test_kernel_non_contiguous_inputs(monkeypatch):
    v, d, m, g = _case((32, 6), -8, 7, True, seed=5)
    vt, dt, mt = v.t(), d[:6], m[:6]  # (6, 32) view with strides (1, 6)
    assert not vt.is_contiguous()
    gt = g.t()  # non-contiguous gradient: ∂m then runs the torch path (its sum order depends on strides)
    _assert_same(
        _run(vt, dt, mt, gt, -8, 7, True, monkeypatch=monkeypatch),
        _run(vt, dt, mt, gt, -8, 7, False, monkeypatch=monkeypatch),
    )
    d_wide = torch.full((1, 1), 0.03).expand(6, 1)  # expanded scale (stride 0)
    assert d_wide.stride() == (0, 1)
    _assert_same(
        _run(vt, d_wide, None, gt, -8, 7, True, monkeypatch=monkeypatch),
        _run(vt, d_wide, None, gt, -8, 7, False, monkeypatch=monkeypatch),
    )


def test_kernel_thread_count_does_not_change_bits(monkeypatch):
    v, d, m, g = _case((300, 4, 32), 0, 15, True, seed=7)  # 1200 rows: several ranges at 2+ threads
    old = torch.get_num_threads()
    try:
        out = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            out.append(_run(v, d, m, g, 0, 15, True, monkeypatch=monkeypatch))
        torch.set_num_threads(2)
        ref = _run(v, d, m, g, 0, 15, False, monkeypatch=monkeypatch)
    finally:
        torch.set_num_threads(old)
    for o in out:
        _assert_same(o, ref)


def test_other_layouts_and_dtypes_fall_back(monkeypatch):
    v, d, _, g = _case((4, 32), -8, 7, False)
    assert fake_quant.grid_fake_forward(v.double(), d.double(), None, -8, 7) is None
    assert fake_quant.grid_fake_forward(v, d.reshape(4), None, -8, 7) is None  # no trailing 1
    assert fake_quant.grid_fake_forward(v, torch.full((1, 1), 0.1), None, -8, 7) is None  # per-tensor scale
    assert fake_quant.grid_fake_forward(v[:, :4], d, None, -8, 7) is None  # 4 < 8 lanes: torch's scalar sum
    vd, dd, gd = v.double(), d.double(), g.double()
    _assert_same(
        _run(vd, dd, None, gd, -8, 7, True, monkeypatch=monkeypatch),
        _run(vd, dd, None, gd, -8, 7, False, monkeypatch=monkeypatch),
    )


def test_lane_width_reproduces_torch_sum_and_a_wrong_width_does_not():
    lanes = fake_quant.lane_width(32)
    assert lanes is not None, (
        "no lane width reproduces torch's float32 row sum here: the kernel is never used"
    )
    x = torch.randn(256, 32) * torch.logspace(-4, 4, 32)
    ref = x.sum_to_size(256, 1).numpy()[:, 0].view(np.int32)
    out = {}
    for w in (8, 16):
        s = np.empty(256, np.float32)
        fake_quant._row_sums(x.numpy(), w, s)
        out[w] = s.view(np.int32)
    assert np.array_equal(out[lanes], ref)
    assert not np.array_equal(out[24 - lanes], ref)  # the order matters: a plain reassociation differs
