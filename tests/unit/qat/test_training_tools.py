"""Schedules, distillation loss, range regularizer, BN re-estimation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgequant.errors import ConfigError
from edgequant.qat import (
    DecayingWeight,
    ProgressiveBits,
    ProgressiveScope,
    QATConfig,
    QuantSpec,
    cosine_lr_lambda,
    freeze_modules,
    kd_kl_loss,
    prepare,
    qat_learning_rate,
    quantizers,
    range_regularizer,
    reestimate_bn,
)


def test_cosine_lr_and_fraction():
    f = cosine_lr_lambda(100, warmup_steps=10, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.55)
    assert f(100) == pytest.approx(0.1)
    assert qat_learning_rate(3e-4) == pytest.approx(3e-5)
    with pytest.raises(ConfigError):
        qat_learning_rate(1e-3, 0.0)


def test_progressive_bits_and_scope():
    torch.manual_seed(0)
    m = prepare(
        nn.Sequential(nn.Linear(32, 32)),
        QATConfig(
            weight=QuantSpec(bits=8),
            activation=QuantSpec(bits=8, symmetric=False, granularity="tensor"),
            skip=(),
        ),
    )
    pb = ProgressiveBits(((0, 8), (10, 4), (20, 3)))
    assert [pb.bits_at(t) for t in (0, 9, 10, 19, 20, 1000)] == [8, 8, 4, 4, 3, 3]
    assert pb.apply(m, 15) == 4
    assert {q.bits for _, q in quantizers(m, "weight")} == {4}
    assert {q.bits for _, q in quantizers(m, "activation")} == {8}
    ps = ProgressiveScope(((0, "weights"), (5, "activations"), (9, "all")))
    ps.apply(m, 0)
    assert not m[0].input_quantizer.enabled
    ps.apply(m, 6)
    assert m[0].input_quantizer.enabled
    with pytest.raises(ConfigError, match="start at step 0"):
        ProgressiveBits(((5, 8),))
    with pytest.raises(ConfigError, match=r"2\.\.8"):
        ProgressiveBits(((0, 1),))


def test_freeze_modules():
    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    assert freeze_modules(m, ("0.",)) == ["0.weight", "0.bias"]
    assert not m[0].weight.requires_grad
    assert m[1].weight.requires_grad
    freeze_modules(m, ("0.",), frozen=False)
    assert m[0].weight.requires_grad
    with pytest.raises(ConfigError, match="no parameter"):
        freeze_modules(m, ("embed",))


def test_decaying_weight():
    assert DecayingWeight(1.0, 0.0, 10, "linear").value(5) == pytest.approx(0.5)
    assert DecayingWeight(1.0, 0.0, 10, "cosine").value(5) == pytest.approx(0.5)
    assert DecayingWeight(1.0, 0.01, 10, "exp").value(5) == pytest.approx(0.1)
    assert DecayingWeight(1.0, 0.2, 10).value(50) == pytest.approx(0.2)


def test_kd_kl_closed_form_and_mask():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    pt = F.softmax(t / 2, -1)
    ref = (pt * (pt.log() - F.log_softmax(s / 2, -1))).sum(-1).mean() * 4
    assert float(kd_kl_loss(s, t, 2.0)) == pytest.approx(float(ref), rel=1e-5)
    assert float(kd_kl_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    mask = torch.tensor([[True, False, False], [False, False, True]])
    ref_m = (pt * (pt.log() - F.log_softmax(s / 2, -1))).sum(-1)[mask].mean() * 4
    assert float(kd_kl_loss(s, t, 2.0, mask)) == pytest.approx(float(ref_m), rel=1e-5)


def test_range_regularizer_value_and_gradient():
    lin = nn.Linear(64, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.linspace(-1, 1, 128).reshape(2, 64))
    m = prepare(nn.Sequential(lin), QATConfig(weight=QuantSpec(bits=4, group_size=32), skip=()))
    r = range_regularizer(m, 0.5)
    g = lin.weight.detach().reshape(4, 32)
    ref = 0.5 * ((g.amax(-1) - g.amin(-1)) ** 2).sum()
    assert float(r) == pytest.approx(float(ref))
    r.backward()
    grad = lin.weight.grad.reshape(4, 32)
    rng = g.amax(-1) - g.amin(-1)
    torch.testing.assert_close(grad[:, -1], rng)  # 2·λ·range on the max (λ = 0.5)
    torch.testing.assert_close(grad[:, 0], -rng)
    assert float(grad[:, 1:-1].abs().sum()) == 0.0


def test_reestimate_bn_gives_exact_batch_statistics():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU())
    prepare(m, QATConfig(weight=QuantSpec(bits=4, method="lsq", granularity="channel"), skip=()))
    m.train()
    for _ in range(3):
        m(torch.randn(4, 1, 6, 6) * 5)  # stale statistics
    batches = [torch.randn(4, 1, 6, 6) for _ in range(5)]
    assert reestimate_bn(m, batches) == 5
    with torch.no_grad():
        feats = torch.cat([m[0](b) for b in batches])
    torch.testing.assert_close(m[1].running_mean, feats.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    per_batch_var = torch.stack([m[0](b).detach().var((0, 2, 3), unbiased=True) for b in batches])
    torch.testing.assert_close(m[1].running_var, per_batch_var.mean(0), rtol=1e-5, atol=1e-6)
    assert m[1].momentum == 0.1
    assert m.training
    with pytest.raises(ConfigError, match="no BatchNorm"):
        reestimate_bn(nn.Linear(2, 2), [torch.zeros(1, 2)])
