"""Streaming perplexity and base-vs-model statistics, chunk by chunk (no logits file).

Definitions follow llama-perplexity (``tools/perplexity/perplexity.cpp``), per scored token t with target
``y`` (the next token), model log-probabilities ``lq = log_softmax(logits_q)`` and base ``lb``:

* ``nll_t = -lq[y]``; ``PPL = exp(mean nll)``; its uncertainty ``PPL * sqrt((E[nll^2] - E[nll]^2)/(N-1))``.
* ``KLD_t = sum_v exp(lb[v]) * (lb[v] - lq[v])`` (base as the reference distribution).
  llama.cpp stores base log-probs as uint16 (scale/min per row) and drops ``lb < -16`` terms; edgequant
  keeps the base logits in float32 for the chunk being scored and sums every term in float64, so its KLD
  is the exact value of which llama.cpp's is an approximation.
* ``Δp_t = exp(lq[y]) - exp(lb[y])``; ``RMS Δp = sqrt(mean Δp^2)``.
* same top token: ``argmax lq == argmax lb`` (first index wins ties, as llama.cpp's strict ``>`` scan).
* ``Δppl = PPL(Q) - PPL(base)`` and ``ln(PPL(Q)/PPL(base))`` with llama.cpp's covariance-aware uncertainty.

Log-softmax is computed in float64 from the float32 logits (llama.cpp: float max/exp, double sum).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

_ROWS = 64  # rows per float64 block: bounds the memory of the log-softmax temporaries


def _log_softmax64(logits: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(logits).to(torch.float64)
    return torch.log_softmax(x, dim=-1)


@dataclass
class TokenStats:
    """Per-token nll (and, with a base, KLD, Δp, same-top flags), appended chunk by chunk."""

    nll: list[np.ndarray] = field(default_factory=list)
    nll_base: list[np.ndarray] = field(default_factory=list)
    kld: list[np.ndarray] = field(default_factory=list)
    p_diff: list[np.ndarray] = field(default_factory=list)
    same_top: list[np.ndarray] = field(default_factory=list)

    def add_chunk(
        self, logits: np.ndarray, targets: np.ndarray, base_logits: np.ndarray | None = None
    ) -> None:
        """Score one chunk: ``logits[i]`` predicts ``targets[i]`` (rows = scored positions)."""
        targets = np.asarray(targets, dtype=np.int64)
        if logits.shape[0] != targets.shape[0]:
            raise ValueError(f"{logits.shape[0]} logit rows for {targets.shape[0]} targets")
        for a in range(0, targets.shape[0], _ROWS):
            b = min(a + _ROWS, targets.shape[0])
            y = torch.as_tensor(targets[a:b]).unsqueeze(1)
            lq = _log_softmax64(logits[a:b])
            lq_y = lq.gather(1, y).squeeze(1)
            self.nll.append((-lq_y).numpy())
            if base_logits is None:
                continue
            lb = _log_softmax64(base_logits[a:b])
            lb_y = lb.gather(1, y).squeeze(1)
            self.nll_base.append((-lb_y).numpy())
            self.kld.append((lb.exp() * (lb - lq)).sum(1).numpy())
            self.p_diff.append((lq_y.exp() - lb_y.exp()).numpy())
            self.same_top.append((lq.argmax(1) == lb.argmax(1)).numpy())

    @property
    def count(self) -> int:
        return int(sum(a.size for a in self.nll))

    def summary(self) -> dict:
        """PPL (and with a base the KL statistics) in llama.cpp's definitions; plain floats for JSON."""
        nll = np.concatenate(self.nll) if self.nll else np.zeros(0)
        n = nll.size
        out: dict = {"n_scored_tokens": int(n)}
        mean, unc = _mean_unc(nll)
        out["ppl"] = math.exp(mean)
        out["ppl_uncertainty"] = math.exp(mean) * unc
        out["mean_nll"] = mean
        if not self.kld:
            return out
        nll_b = np.concatenate(self.nll_base)
        mean_b, unc_b = _mean_unc(nll_b)
        cov = float(np.mean(nll * nll_b) - mean * mean_b) / (n - 1) if n >= 10 else 0.0
        ppl, ppl_b = math.exp(mean), math.exp(mean_b)
        kld = np.concatenate(self.kld)
        dp = np.concatenate(self.p_diff)
        top = np.concatenate(self.same_top)
        kmean, kunc = _mean_unc(kld)
        msq, msq_unc = _mean_unc(dp * dp)
        rms = math.sqrt(msq)
        p_top = float(top.mean())
        out.update(
            {
                "ppl_base": ppl_b,
                "ppl_base_uncertainty": ppl_b * unc_b,
                "delta_ppl": ppl - ppl_b,
                "delta_ppl_uncertainty": math.sqrt(
                    max((ppl * unc) ** 2 + (ppl_b * unc_b) ** 2 - 2.0 * ppl * ppl_b * cov, 0.0)
                ),
                "ln_ppl_ratio": mean - mean_b,
                "ln_ppl_ratio_uncertainty": math.sqrt(max(unc * unc + unc_b * unc_b - 2.0 * cov, 0.0)),
                "mean_kld": kmean,
                "mean_kld_uncertainty": kunc,
                "kld_percentiles": {
                    "max": float(kld.max()),
                    "99.9": _percentile(kld, 0.999),
                    "99": _percentile(kld, 0.99),
                    "95": _percentile(kld, 0.95),
                    "90": _percentile(kld, 0.90),
                    "median": float(np.median(kld)),
                    "min": float(kld.min()),
                },
                "mean_delta_p": float(dp.mean()),
                "rms_delta_p": rms,
                "rms_delta_p_uncertainty": 0.5 / rms * msq_unc if rms > 0 else 0.0,
                "max_abs_delta_p": float(np.abs(dp).max()),
                "same_top_fraction": p_top,
                "same_top_uncertainty": math.sqrt(p_top * (1 - p_top) / (n - 1)) if n > 1 else 0.0,
            }
        )
        return out


def _mean_unc(v: np.ndarray) -> tuple[float, float]:
    """llama.cpp's ``mean_and_uncertainty``: mean and sqrt(var/(N-1)) (0 when N <= 10)."""
    n = v.size
    if n < 1:
        return 0.0, 0.0
    f = float(v.sum(dtype=np.float64)) / n
    df = float((v.astype(np.float64) ** 2).sum()) / n - f * f
    return f, (math.sqrt(df / (n - 1)) if df > 0 and n > 10 else 0.0)


def _percentile(sorted_or_not: np.ndarray, fraction: float) -> float:
    """llama.cpp's percentile: linear interpolation at ``fraction * (N - 1)`` of the sorted values."""
    v = np.sort(sorted_or_not)
    p = fraction * (v.size - 1)
    i = int(p)
    p -= i
    return float((1 - p) * v[i] + p * v[min(i + 1, v.size - 1)])
