"""edgequant.analysis.propagation on tiny seeded models built here: amplification vs the book's bounds, the
additive model, the book's exercise 8."""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from edgequant.analysis.codec_grids import Uniform, reconstruct
from edgequant.analysis.propagation import (
    accumulated_error,
    additive_model,
    layer_amplification,
    spectral_bounds,
    swapped_weights,
)
from edgequant.errors import ConfigError, ShapeError

D = 16


def _q(bits: int):
    return functools.partial(reconstruct, codec=Uniform(bits, True, "channel"))


class Residual(nn.Module):
    """x <- x + W2 relu(W1 x), per block."""

    def __init__(self, d: int, hidden: int, n_blocks: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, d)) for _ in range(n_blocks)
        )

    def forward(self, x):
        for b in self.blocks:
            x = x + b(x)
        return x


def _linear_chain(seed: int, n: int = 4, bias: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Linear(D, D, bias=bias) for _ in range(n)]).double()


def _relu_mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(4):
        layers += [nn.Linear(D, D)] + ([nn.ReLU()] if i < 3 else [])
    return nn.Sequential(*layers).double()


def _residual(seed: int) -> Residual:
    torch.manual_seed(seed)
    return Residual(D, 2 * D, 3).double()


def _batches(seed: int, n: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(32, D, generator=g, dtype=torch.float64) for _ in range(n)]


def _linears(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def test_exercise_8():
    r = accumulated_error([2.0, 1.5, 1.2], [0.01, 0.02, 0.015])
    np.testing.assert_allclose(r.kappas, [1.8, 1.2, 1.0], rtol=1e-15)
    np.testing.assert_allclose(r.variances, [0.000324, 0.000576, 0.000225], rtol=1e-12)
    assert r.total_variance == pytest.approx(0.001125, rel=1e-12)
    assert r.total_std == pytest.approx(math.sqrt(0.001125), rel=1e-12)
    assert round(r.total_std, 4) == 0.0335


def test_product_of_norms_only_bounds_the_norm_of_the_product():
    g = torch.Generator().manual_seed(0)
    w2, w3 = (torch.randn(D, D, generator=g, dtype=torch.float64) for _ in range(2))
    w2 = w2 * 1.5 / torch.linalg.matrix_norm(w2, ord=2)
    w3 = w3 * 1.2 / torch.linalg.matrix_norm(w3, ord=2)
    kappa, norms = spectral_bounds([torch.eye(D), w2, w3])
    assert norms[0] == pytest.approx(1.8, rel=1e-12)
    assert kappa[0] == pytest.approx(float(torch.linalg.matrix_norm(w3 @ w2, ord=2)), rel=1e-12)
    assert kappa[0] < 1.8  # exercise 8's kappa_1 = 1.8 is an upper bound of ||W3 W2||_2, not its value


def test_spectral_bounds_closed_form():
    w1, w2, w3 = torch.eye(2), torch.diag(torch.tensor([3.0, 1.0])), torch.diag(torch.tensor([1.0, 3.0]))
    kappa, norms = spectral_bounds([w1, w2, w3])
    assert kappa == pytest.approx([3.0, 3.0, 1.0])  # ||W3 W2|| = ||diag(3, 3)|| = 3
    assert norms == pytest.approx([9.0, 3.0, 1.0])
    kappa, norms = spectral_bounds([torch.eye(2), torch.ones(3, 2), torch.ones(2, 2)])
    assert math.isnan(kappa[0])  # W3 [2, 2] cannot follow W2 [3, 2]
    assert norms[0] == pytest.approx(2.0 * math.sqrt(6.0))  # ||ones(2, 2)|| = 2, ||ones(3, 2)|| = sqrt(6)
    assert kappa[1] == pytest.approx(2.0)


def test_linear_chain_amplification_is_bounded_by_kappa():
    model = _linear_chain(0)
    rep = layer_amplification(model, {n: _q(4) for n in _linears(model)}, _batches(1))
    for r in rep.layers:
        assert 0 < r.amplification <= r.kappa * (1 + 1e-12)
        assert r.kappa <= r.kappa_norms * (1 + 1e-12)
        assert r.output_error > 0
    assert rep.layers[-1].amplification == pytest.approx(1.0, rel=1e-12)  # its own output is the output
    assert rep.layers[-1].kappa == 1.0
    assert rep.layers[0].amplification < 0.8 * rep.layers[0].kappa  # random errors: the bound is loose


def test_error_along_the_top_singular_vector_reaches_kappa():
    model = _linear_chain(2, bias=False)
    w0 = model[0].weight.detach()
    later = model[3].weight @ model[2].weight @ model[1].weight
    u = torch.linalg.svd(later.detach()).Vh[0]  # top right singular vector of W4 W3 W2
    v = torch.randn(D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    rep = layer_amplification(
        model, {"0": w0 + 1e-3 * torch.outer(u, v)}, _batches(4), chain=["0", "1", "2", "3"]
    )
    (r,) = rep.layers
    assert r.amplification == pytest.approx(float(torch.linalg.matrix_norm(later.detach(), ord=2)), rel=1e-9)
    assert r.kappa == pytest.approx(r.amplification, rel=1e-9)


def test_relu_mlp_below_the_product_of_norms():
    model = _relu_mlp(5)
    rep = layer_amplification(model, {n: _q(3) for n in _linears(model)}, _batches(6))
    for r in rep.layers:
        assert r.amplification <= r.kappa_norms * (1 + 1e-12)  # ReLU is 1-Lipschitz


def _residual_lipschitz(model: Residual) -> list[float]:
    """A true bound of A_l: the later blocks' Lipschitz constants 1 + ||W2|| ||W1||, and inside the own block
    ||W2|| for the first Linear (ReLU is 1-Lipschitz)."""

    def sn(m):
        return float(torch.linalg.matrix_norm(m.weight.detach(), ord=2))

    lips = [1 + sn(b[2]) * sn(b[0]) for b in model.blocks]
    out = []
    for i, b in enumerate(model.blocks):
        after = math.prod(lips[i + 1 :])
        out += [sn(b[2]) * after, after]
    return out


def test_residual_net_kappa_is_no_bound():
    model = _residual(7)
    rep = layer_amplification(model, {n: _q(4) for n in _linears(model)}, _batches(8))
    for r, lip in zip(rep.layers, _residual_lipschitz(model), strict=True):
        assert r.amplification <= lip * (1 + 1e-12)
    # the book's kappa multiplies the later branch weights and forgets the identity paths: the second Linear
    # of the first block passes its error on through two skips, far above kappa
    first_out = rep.layers[1]
    assert first_out.name == "blocks.0.2"
    assert first_out.amplification > 1.0 > 2 * first_out.kappa
    assert rep.book_total < rep.measured_total or rep.book_total > rep.measured_total  # a number, not nan
    assert rep.predicted_total == pytest.approx(rep.measured_total, rel=0.2)


def test_additive_model_single_layers_are_exact_and_correlation():
    model = _relu_mlp(9)
    names = _linears(model)
    batches = _batches(10)
    quant = {b: _q(b) for b in (3, 4, 6, 8)}
    single = additive_model(model, [{names[0]: quant[3]}, {names[2]: quant[4]}], batches)
    np.testing.assert_allclose(single.predicted, single.measured, rtol=1e-12)
    rng = np.random.default_rng(11)
    configs = [
        {n: quant[int(b)] for n, b in zip(names, rng.choice(list(quant), len(names)), strict=True)}
        for _ in range(12)
    ]
    rep = additive_model(model, configs, batches)
    # measured here: Pearson 0.975, Spearman 0.951, measured / predicted in [0.80, 1.34]
    assert rep.pearson > 0.9
    assert rep.spearman > 0.9
    ratio = rep.measured / rep.predicted
    assert ratio.min() > 0.6
    assert ratio.max() < 1.6


def test_weights_are_restored():
    model = _residual(12)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer_amplification(model, {n: _q(2) for n in _linears(model)}, _batches(13, 1))

    def fail_inside():
        with swapped_weights(model, {"blocks.1.0": torch.zeros(2 * D, D)}):
            assert model.blocks[1][0].weight.abs().sum() == 0
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_outputs_with_logits_attribute():
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = _linear_chain(14, 2)

        def forward(self, x):
            return SimpleNamespace(logits=self.inner(x))

    model = Wrapped()
    rep = layer_amplification(model, {"inner.1": _q(4)}, _batches(15, 1))
    assert rep.layers[0].amplification == pytest.approx(1.0, rel=1e-12)


def test_bad_inputs():
    model = _linear_chain(16, 2)
    with pytest.raises(ConfigError, match="no module"):
        layer_amplification(model, {"nope": _q(4)}, _batches(17, 1))
    with pytest.raises(ShapeError, match="shape"):
        layer_amplification(model, {"0": torch.zeros(3, 3)}, _batches(17, 1))
    with pytest.raises(ConfigError, match="empty"):
        layer_amplification(model, {}, _batches(17, 1))
    with pytest.raises(ConfigError, match="at least 2"):
        additive_model(model, [{"0": _q(4)}], _batches(17, 1))
    with pytest.raises(ConfigError, match="one value per layer"):
        accumulated_error([1.0, 2.0], [0.1])
