"""edgequant.analysis.metrics against closed forms computed here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edgequant.analysis import metrics as m
from edgequant.errors import ConfigError, ShapeError

W = [[1.0, 2.0], [3.0, 4.0]]
WQ = [[1.1, 1.9], [3.2, 3.8]]


def test_mse_exercise_4():
    # the book's exercise 4: errors 0.1, -0.1, 0.2, -0.2 -> (0.01 + 0.01 + 0.04 + 0.04) / 4
    expected = (0.1**2 + 0.1**2 + 0.2**2 + 0.2**2) / 4
    assert expected == pytest.approx(0.025, rel=1e-15)
    assert m.mse(W, WQ) == pytest.approx(0.025, rel=1e-12)
    assert m.mse(np.array(W), torch.tensor(WQ, dtype=torch.float64)) == pytest.approx(0.025, rel=1e-12)


def test_mse_of_torch_float32_is_computed_in_float64():
    a = torch.tensor([1.0, 1.0 + 2.0**-23], dtype=torch.float32)
    b = torch.tensor([1.0, 1.0], dtype=torch.float32)
    assert m.mse(a, b) == 2.0**-47  # (2^-23)^2 / 2, exact in float64


def test_relative_error():
    assert m.relative_error(W, WQ) == pytest.approx(math.sqrt(0.1) / math.sqrt(30.0), rel=1e-12)
    assert m.relative_error([0.0, 0.0], [0.0, 0.0]) == 0.0
    assert m.relative_error([0.0, 0.0], [1.0, 0.0]) == math.inf


def test_cosine_similarity():
    a = np.array([1.0, 2.0, -3.0])
    assert m.cosine_similarity(a, 2 * a) == pytest.approx(1.0, abs=1e-15)
    assert m.cosine_similarity(a, -a) == pytest.approx(-1.0, abs=1e-15)
    assert m.cosine_similarity([1.0, 0.0], [0.0, 5.0]) == 0.0
    assert m.cosine_similarity([3.0, 4.0], [4.0, 3.0]) == pytest.approx(24.0 / 25.0, rel=1e-15)
    assert m.cosine_similarity([0.0, 0.0], [0.0, 0.0]) == 1.0
    assert m.cosine_similarity([0.0, 0.0], [1.0, 0.0]) == 0.0
    rows = m.cosine_similarity([[1.0, 0.0], [3.0, 4.0]], [[0.0, 1.0], [4.0, 3.0]], axis=1)
    np.testing.assert_allclose(rows, [0.0, 24.0 / 25.0], rtol=1e-15)


def test_sqnr_db():
    # ||W||^2 = 25, ||E||^2 = 0.09 + 0.16 = 0.25 -> 10 log10(100) = 20 dB
    assert m.sqnr_db([3.0, 4.0], [2.7, 3.6]) == pytest.approx(20.0, rel=1e-12)
    assert m.sqnr_db(W, WQ) == pytest.approx(10 * math.log10(30.0 / 0.1), rel=1e-12)
    assert m.sqnr_db([1.0], [1.0]) == math.inf
    assert m.sqnr_db([0.0], [1.0]) == -math.inf


def test_kl_of_two_bernoullis_and_from_logits():
    p, q = [0.5, 0.5], [0.25, 0.75]
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert m.kl_divergence(p, q) == pytest.approx(expected, rel=1e-14)
    # logits [0, ln 3] are the distribution (1/4, 3/4); shifting logits changes nothing
    lq = np.array([0.0, math.log(3.0)]) + 7.0
    assert m.kl_divergence([0.0, 0.0], lq, logits=True) == pytest.approx(expected, rel=1e-12)
    assert m.kl_divergence(p, p) == 0.0


def test_kl_zeros_and_reduction():
    # p_i = 0 terms vanish: KL([1, 0], [1/2, 1/2]) = ln 2
    assert m.kl_divergence([1.0, 0.0], [0.5, 0.5]) == pytest.approx(math.log(2.0), rel=1e-15)
    assert m.kl_divergence([0.5, 0.5], [1.0, 0.0]) == math.inf
    per = m.kl_divergence([[1.0, 0.0], [0.5, 0.5]], [[0.5, 0.5], [0.5, 0.5]], reduction="none")
    np.testing.assert_allclose(per, [math.log(2.0), 0.0], rtol=1e-15)
    both = [[1.0, 0.0], [0.5, 0.5]], [[0.5, 0.5], [0.5, 0.5]]
    assert m.kl_divergence(*both) == pytest.approx(math.log(2.0) / 2, rel=1e-15)
    assert m.kl_divergence(*both, reduction="sum") == pytest.approx(math.log(2.0), rel=1e-15)


def test_kl_rejects_non_distributions():
    with pytest.raises(ConfigError, match="sums to"):
        m.kl_divergence([0.5, 0.6], [0.5, 0.5])
    with pytest.raises(ConfigError, match="non-negative"):
        m.kl_divergence([1.5, -0.5], [0.5, 0.5])
    with pytest.raises(ConfigError, match="reduction"):
        m.kl_divergence([1.0], [1.0], reduction="max")


def test_js_closed_forms():
    # disjoint supports: ln 2, the maximum; symmetric; finite with zeros
    assert m.js_divergence([1.0, 0.0], [0.0, 1.0]) == pytest.approx(math.log(2.0), rel=1e-15)
    p, q = np.array([0.5, 0.5]), np.array([0.25, 0.75])
    mix = (p + q) / 2
    expected = 0.5 * np.sum(p * np.log(p / mix)) + 0.5 * np.sum(q * np.log(q / mix))
    assert m.js_divergence(p, q) == pytest.approx(expected, rel=1e-13)
    assert m.js_divergence(q, p) == pytest.approx(expected, rel=1e-13)
    assert m.js_divergence(np.log(p), np.log(q), logits=True) == pytest.approx(expected, rel=1e-12)


def test_delta_ppl_and_accuracy():
    nll_float = [math.log(2.0), math.log(2.0)]  # PPL 2
    nll_quant = [math.log(2.0), math.log(8.0)]  # mean ln 4 -> PPL 4
    assert m.perplexity(nll_quant) == pytest.approx(4.0, rel=1e-14)
    assert m.delta_ppl(nll_float, nll_quant) == pytest.approx(2.0, rel=1e-13)
    assert m.delta_accuracy([1, 1, 1, 0], [True, False, True, False]) == pytest.approx(0.25)
    with pytest.raises(ShapeError):
        m.delta_ppl([1.0, 2.0], [1.0])
    with pytest.raises(ConfigError, match="0/1"):
        m.accuracy([0.5])


def test_pearson_spearman_and_ranks():
    np.testing.assert_array_equal(m.ranks([10.0, 20.0, 20.0, 30.0]), [1.0, 2.5, 2.5, 4.0])
    x = np.arange(1.0, 8.0)
    assert m.spearman(x, x**3) == pytest.approx(1.0, abs=1e-15)
    assert m.pearson(x, x**3) < 1.0
    assert m.pearson(x, 2 * x + 1) == pytest.approx(1.0, abs=1e-15)
    # one swap among 5: rho = 1 - 6 * sum d^2 / (n (n^2 - 1)) = 1 - 6 * 2 / 120 = 0.9
    assert m.spearman([1, 2, 3, 4, 5], [1, 2, 3, 5, 4]) == pytest.approx(0.9, rel=1e-14)
    assert math.isnan(m.pearson([1.0, 1.0], [1.0, 2.0]))


def test_shape_mismatch_names_the_shapes():
    with pytest.raises(ShapeError, match=r"\(2,\) and \(3,\)"):
        m.mse([1.0, 2.0], [1.0, 2.0, 3.0])
