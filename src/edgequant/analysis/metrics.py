"""Error metrics between a reference (float) tensor or output and its quantized counterpart.

Every function takes numpy arrays, torch tensors (detached, moved to the CPU) or nested lists, computes in
float64 and returns a Python float (or, with ``reduction="none"`` / ``axis``, a float64 array). Arguments
come in the order (reference, quantized): W and W_q, P (float model) and Q (quantized model), float run and
quantized run. Shapes must be equal. Notation: ``E = W - W_q``, ``||.||`` the Frobenius norm over all
elements, ``n`` the element count.

These are one-shot functions over arrays held in memory. Streaming perplexity and KLD over text chunks, as
llama-perplexity computes them, are ``edgequant.eval.metrics`` (a layer above, which this module does not
import); for logits of the same tokens both give the same per-token KLD.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from edgequant.errors import ConfigError, ShapeError

_PROB_TOL = 1e-3  # a probability vector must sum to 1 within this before it is renormalized


def as_float64(x: np.ndarray | torch.Tensor | list | float) -> np.ndarray:
    """A float64 numpy array of ``x`` (torch tensors: detached, on the CPU; exact for every float dtype)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _pair(a, b, what: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = as_float64(a), as_float64(b)
    if x.shape != y.shape:
        raise ShapeError(f"{what}: the two inputs have shapes {x.shape} and {y.shape}; they must be equal")
    if x.size == 0:
        raise ShapeError(f"{what}: the inputs are empty")
    return x, y


def mse(reference, quantized) -> float:
    """Mean squared error ``||W - W_q||^2 / n`` (the book's MSE; exercise 4: W = [[1, 2], [3, 4]],
    W_q = [[1.1, 1.9], [3.2, 3.8]] gives (0.01 + 0.01 + 0.04 + 0.04) / 4 = 0.025)."""
    w, q = _pair(reference, quantized, "mse")
    return float(np.mean((w - q) ** 2))


def relative_error(reference, quantized) -> float:
    """``||W - W_q|| / ||W||`` (Frobenius). 0 when both are zero; +inf when W is zero and W_q is not."""
    w, q = _pair(reference, quantized, "relative_error")
    num, den = float(np.linalg.norm((w - q).ravel())), float(np.linalg.norm(w.ravel()))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def cosine_similarity(reference, quantized, axis: int | None = None) -> float | np.ndarray:
    """``<W, W_q> / (||W|| ||W_q||)`` over all elements (``axis=None``) or along ``axis`` (one value per
    slice, e.g. per token of a hidden state). Where a norm is 0: 1.0 if both slices are zero, else 0.0."""
    w, q = _pair(reference, quantized, "cosine_similarity")
    if axis is None:
        w, q, axis = w.ravel(), q.ravel(), 0
    dot = np.sum(w * q, axis=axis)
    nw, nq = np.sqrt(np.sum(w * w, axis=axis)), np.sqrt(np.sum(q * q, axis=axis))
    den = nw * nq
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(den > 0, dot / np.where(den > 0, den, 1.0), np.where((nw == 0) & (nq == 0), 1.0, 0.0))
    return float(cos) if cos.ndim == 0 else cos


def sqnr_db(reference, quantized) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(||W||^2 / ||W - W_q||^2)`` in dB. +inf when the error
    is 0 (also for W = W_q = 0); -inf when W is 0 and W_q is not. Each bit of a uniform quantizer adds
    about 6.02 dB."""
    w, q = _pair(reference, quantized, "sqnr_db")
    noise, signal = float(np.sum((w - q) ** 2)), float(np.sum(w * w))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _log_dist(x: np.ndarray, logits: bool, axis: int, name: str) -> np.ndarray:
    """Natural-log probabilities along ``axis``: log_softmax of logits (float64), or log of probabilities
    (checked: finite, >= 0, summing to 1 within 1e-3, then divided by their sum; log 0 = -inf)."""
    if logits:
        if np.isnan(x).any() or np.isposinf(x).any():
            raise ConfigError(f"{name}: logits hold NaN or +inf")
        return torch.log_softmax(torch.from_numpy(x), dim=axis).numpy()
    if not np.isfinite(x).all() or (x < 0).any():
        raise ConfigError(
            f"{name}: probabilities must be finite and non-negative; pass logits=True for logits"
        )
    total = np.sum(x, axis=axis, keepdims=True)
    if np.abs(total - 1.0).max() > _PROB_TOL:
        worst = float(total.ravel()[np.argmax(np.abs(total - 1.0).ravel())])
        raise ConfigError(f"{name}: a distribution sums to {worst:.6g}, not 1; pass logits=True for logits")
    with np.errstate(divide="ignore"):
        return np.log(x / total)


def _reduce(v: np.ndarray, reduction: str) -> float | np.ndarray:
    if reduction == "mean":
        return float(np.mean(v))
    if reduction == "sum":
        return float(np.sum(v))
    if reduction == "none":
        return v
    raise ConfigError(f"reduction={reduction!r} is unknown; use 'mean', 'sum' or 'none'")


def _kl_terms(lp: np.ndarray, lq: np.ndarray, axis: int) -> np.ndarray:
    p = np.exp(lp)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * (lp - lq), 0.0)
    return np.sum(terms, axis=axis)


def kl_divergence(
    p, q, *, logits: bool = False, axis: int = -1, reduction: str = "mean"
) -> float | np.ndarray:
    """``KL(P||Q) = sum_i p_i (ln p_i - ln q_i)`` in nats, per distribution along ``axis``, then averaged
    (``reduction="mean"``, e.g. over tokens), summed (``"sum"``) or returned (``"none"``).

    P is the reference (float model), Q the quantized model. ``logits=True``: inputs are logits, turned into
    log-probabilities by a float64 log_softmax (llama-perplexity's KLD per token). Otherwise probabilities:
    finite, non-negative, summing to 1 within 1e-3 (then renormalized). Zeros: a term with ``p_i = 0``
    contributes 0 (the limit of p ln p); ``p_i > 0`` with ``q_i = 0`` makes the KL +inf. No smoothing.
    """
    a, b = _pair(p, q, "kl_divergence")
    lp, lq = _log_dist(a, logits, axis, "kl_divergence P"), _log_dist(b, logits, axis, "kl_divergence Q")
    return _reduce(_kl_terms(lp, lq, axis), reduction)


def js_divergence(
    p, q, *, logits: bool = False, axis: int = -1, reduction: str = "mean"
) -> float | np.ndarray:
    """Jensen-Shannon divergence ``JS = KL(P||M)/2 + KL(Q||M)/2``, ``M = (P + Q)/2``, in nats (bounded by
    ln 2, reached by disjoint supports; symmetric; finite even with zeros, since m_i >= p_i/2). Inputs,
    zeros and ``reduction`` as in ``kl_divergence``; ``ln m`` is computed as ``logaddexp(ln p, ln q) - ln 2``.
    """
    a, b = _pair(p, q, "js_divergence")
    lp, lq = _log_dist(a, logits, axis, "js_divergence P"), _log_dist(b, logits, axis, "js_divergence Q")
    lm = np.logaddexp(lp, lq) - math.log(2.0)
    return _reduce(0.5 * _kl_terms(lp, lm, axis) + 0.5 * _kl_terms(lq, lm, axis), reduction)


def perplexity(nll) -> float:
    """``PPL = exp(mean nll)`` over per-token negative log-likelihoods in nats (``-ln p(target)``)."""
    v = as_float64(nll).ravel()
    if v.size == 0:
        raise ShapeError("perplexity: no tokens")
    return math.exp(float(np.mean(v)))


def delta_ppl(nll_float, nll_quant) -> float:
    """``ΔPPL = PPL_quant - PPL_float`` (the book's sign: positive when quantization hurts), each
    ``exp(mean nll)`` over per-token NLLs in nats of the same tokens (equal shapes, paired). The ratio
    ``PPL_quant / PPL_float`` is ``exp(mean(nll_quant) - mean(nll_float))``."""
    a, b = _pair(nll_float, nll_quant, "delta_ppl")
    return perplexity(b) - perplexity(a)


def accuracy(correct) -> float:
    """Fraction of true flags (booleans or 0/1) over all elements."""
    v = as_float64(correct).ravel()
    if v.size == 0:
        raise ShapeError("accuracy: no examples")
    if not np.isin(v, (0.0, 1.0)).all():
        raise ConfigError("accuracy: correctness flags must be booleans or 0/1")
    return float(np.mean(v))


def delta_accuracy(correct_float, correct_quant) -> float:
    """``ΔAcc = Acc_float - Acc_quant`` (the book's sign: positive when quantization loses accuracy), from
    per-example correctness flags of the same examples (equal shapes)."""
    a, b = _pair(correct_float, correct_quant, "delta_accuracy")
    return accuracy(a) - accuracy(b)


def pearson(x, y) -> float:
    """Pearson's r ``cov(x, y) / (std x std y)`` of two equal-length samples (nan when one is constant)."""
    a, b = _pair(x, y, "pearson")
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    den = math.sqrt(float(np.sum(a * a)) * float(np.sum(b * b)))
    return float(np.sum(a * b)) / den if den > 0 else math.nan


def ranks(x) -> np.ndarray:
    """1-based ranks of a 1-D sample, ties given their average rank (as ``scipy.stats.rankdata``)."""
    v = as_float64(x).ravel()
    order = np.argsort(v, kind="stable")
    sorted_v = v[order]
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    ends = np.r_[starts[1:], v.size]
    avg = (starts + ends + 1) / 2.0  # mean of the 1-based positions starts+1 .. ends
    out = np.empty(v.size)
    out[order] = np.repeat(avg, ends - starts)
    return out


def spearman(x, y) -> float:
    """Spearman's rho: Pearson's r of the average ranks (ties averaged; nan when one sample is constant)."""
    a, b = _pair(x, y, "spearman")
    return pearson(ranks(a), ranks(b))
