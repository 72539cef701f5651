import math

import numpy as np

from edgequant.eval.metrics import TokenStats


def _reference(lq_logits, lb_logits, y):
    """Straightforward float64 numpy versions of llama.cpp's per-token statistics."""

    def logsm(z):
        z = z.astype(np.float64)
        m = z.max(1, keepdims=True)
        return z - m - np.log(np.exp(z - m).sum(1, keepdims=True))

    lq, lb = logsm(lq_logits), logsm(lb_logits)
    idx = np.arange(len(y))
    nll, nllb = -lq[idx, y], -lb[idx, y]
    kld = (np.exp(lb) * (lb - lq)).sum(1)
    dp = np.exp(-nll) - np.exp(-nllb)
    top = lq.argmax(1) == lb.argmax(1)
    return nll, nllb, kld, dp, top


def test_summary_matches_direct_formulas():
    rng = np.random.default_rng(3)
    v, n = 50, 150
    base = rng.standard_normal((n, v)).astype(np.float32) * 3
    model = (base + rng.standard_normal((n, v)).astype(np.float32) * 0.5).astype(np.float32)
    y = rng.integers(0, v, n)
    st = TokenStats()
    st.add_chunk(model[:70], y[:70], base[:70])  # two chunks, streamed
    st.add_chunk(model[70:], y[70:], base[70:])
    s = st.summary()
    nll, nllb, kld, dp, top = _reference(model, base, y)
    assert s["n_scored_tokens"] == n
    assert math.isclose(s["ppl"], math.exp(nll.mean()), rel_tol=1e-12)
    assert math.isclose(s["ppl_base"], math.exp(nllb.mean()), rel_tol=1e-12)
    assert math.isclose(s["delta_ppl"], math.exp(nll.mean()) - math.exp(nllb.mean()), rel_tol=1e-9)
    assert math.isclose(s["mean_kld"], kld.mean(), rel_tol=1e-9)
    assert math.isclose(s["rms_delta_p"], math.sqrt((dp**2).mean()), rel_tol=1e-9)
    assert math.isclose(s["same_top_fraction"], top.mean())
    assert 0 < s["same_top_fraction"] < 1
    assert s["mean_kld"] > 0
    assert math.isclose(s["kld_percentiles"]["max"], kld.max(), rel_tol=1e-9)
    # llama.cpp's uncertainty of the mean: sqrt(var / (N - 1))
    assert math.isclose(s["mean_kld_uncertainty"], math.sqrt(kld.var() / (n - 1)), rel_tol=1e-6)


def test_identical_models_have_zero_divergence():
    rng = np.random.default_rng(4)
    z = rng.standard_normal((40, 30)).astype(np.float32)
    st = TokenStats()
    st.add_chunk(z, rng.integers(0, 30, 40), z)
    s = st.summary()
    assert abs(s["mean_kld"]) < 1e-12
    assert s["same_top_fraction"] == 1.0
    assert s["delta_ppl"] == 0.0
    assert s["rms_delta_p"] == 0.0
