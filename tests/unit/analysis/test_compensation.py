"""analysis.compensation (bias correction, scale search, BN calibration) and qat's "noise" method."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import edgequant
from edgequant.analysis.compensation import DEFAULT_MULTIPLIERS, bias_correct, bn_calibrate, scale_search
from edgequant.errors import ConfigError
from edgequant.nn.configs import Int8Config, Int8DynamicConfig, NF4Config
from edgequant.qat import QATConfig, QuantSpec, prepare
from edgequant.qat.noise import NoiseQuantizer


def _mlp(seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32, bias=bias), nn.ReLU(), nn.Linear(32, 16, bias=bias)).eval()


def _quantized(model, config):
    q = copy.deepcopy(model)
    edgequant.quantize_(q, config)
    return q.eval()


CONFIGS = [NF4Config(), NF4Config(compress_statistics=False), Int8Config(threshold=0.0), Int8DynamicConfig()]


@pytest.mark.parametrize(
    "config", CONFIGS, ids=lambda c: type(c).__name__ + str(getattr(c, "compress_statistics", ""))
)
def test_bias_correction_zeroes_the_mean_output_error(config):
    f = _mlp()
    q = _quantized(f, config)
    x = torch.randn(200, 64) + 0.5  # a non-zero input mean, so (Ŵ−W)E[x] ≠ 0
    before = (q(x) - f(x)).mean(0).abs().max().item()
    done = bias_correct(f, q, [x[:100], x[100:]], include_activation_error=True)
    assert set(done) == {"0", "2"}
    # the last layer's mean error over its own (quantized-path) inputs is zero
    h = q[1](q[0](x))
    err = (q[2](h) - f[2](h)).mean(0)
    assert err.abs().max().item() < 1e-5 < before


def test_bias_correction_closed_form_single_layer():
    torch.manual_seed(1)
    f = nn.Sequential(nn.Linear(64, 8)).eval()
    q = _quantized(f, NF4Config(compress_statistics=False))
    x = torch.randn(50, 64) + 1.0
    w_hat = q[0].dequantize().float()
    expected = (w_hat - f[0].weight) @ x.double().mean(0).float()
    b0 = q[0].bias.detach().clone()
    done = bias_correct(f, q, [x])
    torch.testing.assert_close(done["0"], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(q[0].bias.detach(), b0 - expected, atol=1e-5, rtol=1e-4)


def test_bias_correction_default_is_the_weight_error_only():
    torch.manual_seed(2)
    f = nn.Sequential(nn.Linear(64, 8)).eval()
    q = _quantized(f, Int8DynamicConfig(percentile=90.0))  # a large activation error as well
    x = torch.randn(50, 64) + 1.0
    expected = (q[0].dequantize().float() - f[0].weight) @ x.double().mean(0).float()
    done = bias_correct(f, q, [x])
    torch.testing.assert_close(done["0"], expected, atol=1e-5, rtol=1e-4)
    q2 = _quantized(f, Int8DynamicConfig(percentile=90.0))
    with_act = bias_correct(f, q2, [x], include_activation_error=True)["0"]
    assert (with_act - expected).abs().max().item() > 1e-3  # the activation error is a different term


def test_bias_correction_skips_layers_without_bias_and_needs_batches():
    f = _mlp(bias=False)
    q = _quantized(f, NF4Config())
    assert bias_correct(f, q, [torch.randn(4, 64)]) == {}
    with pytest.raises(ConfigError):
        bias_correct(f, q, [])


def _weight_errors(f, q):
    return {
        n: (q.get_submodule(n).dequantize().float() - f.get_submodule(n).weight).pow(2) for n in ("0", "2")
    }


@pytest.mark.parametrize(
    "config", CONFIGS, ids=lambda c: type(c).__name__ + str(getattr(c, "compress_statistics", ""))
)
def test_scale_search_never_increases_the_weight_error(config):
    f = _mlp(3)
    with torch.no_grad():
        f[0].weight[0, 0] = 1.5  # an outlier: clipping it pays off for its row / block
    q = _quantized(f, config)
    before = _weight_errors(f, q)
    assert scale_search(f, q) == ["0", "2"]
    after = _weight_errors(f, q)
    for n in before:
        if isinstance(config, NF4Config) and config.compress_statistics:
            assert after[n].sum() <= before[n].sum()  # nested absmax: the guard is on the total
        elif isinstance(config, NF4Config):
            blocks_b, blocks_a = before[n].reshape(-1, 64).sum(1), after[n].reshape(-1, 64).sum(1)
            assert bool((blocks_a <= blocks_b).all())
        else:
            assert bool((after[n].sum(1) <= before[n].sum(1)).all())  # per output row
    assert after["0"].sum() < before["0"].sum()  # the outlier row/block improved strictly


@pytest.mark.parametrize(
    "config", CONFIGS, ids=lambda c: type(c).__name__ + str(getattr(c, "compress_statistics", ""))
)
def test_scale_search_keeps_the_format_valid(config):
    f = _mlp(4)
    q = _quantized(f, config)
    scale_search(f, q)
    fresh = _quantized(_mlp(5), config)
    fresh.load_state_dict(q.state_dict())
    x = torch.randn(3, 64)
    torch.testing.assert_close(fresh(x), q(x))
    for n in ("0", "2"):
        torch.testing.assert_close(fresh.get_submodule(n).dequantize(), q.get_submodule(n).dequantize())


def test_scale_search_with_only_absmax_changes_nothing_and_checks_grid():
    f = _mlp(6)
    q = _quantized(f, Int8DynamicConfig())
    w0 = q[0].weight.detach().clone()
    scale_search(f, q, multipliers=(1.0,))
    assert torch.equal(q[0].weight, w0)
    assert DEFAULT_MULTIPLIERS[0] == 0.5
    assert DEFAULT_MULTIPLIERS[-1] == 1.0
    assert len(DEFAULT_MULTIPLIERS) == 51
    with pytest.raises(ConfigError):
        scale_search(f, q, multipliers=())


def _cnn(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.BatchNorm2d(3))
    m.train()
    with torch.no_grad():
        for _ in range(5):
            m(torch.randn(16, 1, 8, 8))
    return m.eval()


def test_bn_calibration_matches_the_books_formula():
    f = _cnn()
    q = copy.deepcopy(f)
    prepare(q, QATConfig(weight=QuantSpec(bits=2, method="ste", granularity="channel"), skip=()))
    q.eval()
    x = torch.randn(32, 1, 8, 8)
    stats = bn_calibrate(f, q, [x[:16], x[16:]])
    assert set(stats) == {"1", "4"}
    # last BN: its input in the calibrated quantized model, mapped by x_cal, through the float BN
    h = q[:4](x)
    mu_q = h.double().mean((0, 2, 3)).view(1, -1, 1, 1)
    sd_q = h.double().var((0, 2, 3), unbiased=False).sqrt().view(1, -1, 1, 1)
    bn_f = f[4]
    mu_f, sd_f = (
        bn_f.running_mean.double().view(1, -1, 1, 1),
        bn_f.running_var.double().sqrt().view(1, -1, 1, 1),
    )
    x_cal = (h.double() - mu_q) * sd_f / sd_q + mu_f
    expected = copy.deepcopy(bn_f).double()(x_cal).float()
    torch.testing.assert_close(q[4](h), expected, atol=1e-4, rtol=1e-4)
    # and the calibrated BN output has the float model's per-channel mean (β) on the calibration data
    out = q(x)
    torch.testing.assert_close(out.mean((0, 2, 3)), f[4].bias.detach(), atol=1e-4, rtol=0)


def _noise_quantizer(eta, bits=4):
    spec = QuantSpec(bits=bits, method="noise", granularity="channel", noise_eta=eta)
    return NoiseQuantizer(spec, "weight", (8, 512), "w")


def test_noise_has_the_stated_variance():
    torch.manual_seed(0)
    w = torch.randn(8, 512)
    q = _noise_quantizer(0.5).train()
    q(w)  # init
    # σ² closed form: the symmetric 4-bit min-max grid per row
    s = w.abs().amax(1, keepdim=True) / 7
    err = torch.clamp(torch.round(w / s), -8, 7) * s - w
    var = err.pow(2).mean(1)
    torch.testing.assert_close(q.noise_variance(q.view(w)).view(-1), var, rtol=1e-5, atol=1e-9)
    draws = torch.stack([q(w) - w for _ in range(400)])  # 400 * 512 samples per row
    emp = draws.pow(2).mean((0, 2))
    # relative sd of a chi-square mean of 204800 samples: sqrt(2/204800) ≈ 0.3 %; allow 2 %
    torch.testing.assert_close(emp, 0.25 * var, rtol=0.02, atol=0)
    q.eval()
    torch.testing.assert_close(q(w), torch.clamp(torch.round(w / s), -8, 7) * s)  # hard quantization


def test_noise_with_eta_zero_is_plain_training():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    plain, noisy = copy.deepcopy(base), copy.deepcopy(base)
    prepare(
        noisy,
        QATConfig(weight=QuantSpec(bits=3, method="noise", granularity="channel", noise_eta=0.0), skip=()),
    )
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for model in (plain, noisy):
        torch.manual_seed(1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(5):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert torch.equal(plain[0].weight, noisy[0].weight)
    assert torch.equal(plain[2].bias, noisy[2].bias)
    with pytest.raises(ConfigError):
        QuantSpec(method="noise", noise_eta=-1.0)
    with pytest.raises(ConfigError):
        QATConfig(activation=QuantSpec(method="noise"))
