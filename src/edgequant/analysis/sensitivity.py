"""How much a causal LM's output distribution moves when one weight tensor is quantized: sensitivity proxies.

All proxies predict the same quantity, the **mean per-token KL divergence** ``KL(p_float ‖ p_quant)`` over a
calibration set when *one* tensor ``W`` is replaced by its quantized value ``W + ε`` (every other tensor
float), so they can be compared with each other and with the measured value, and summed across tensors
(the additive model of :mod:`edgequant.analysis.propagation`).

Let ``ℓ_t(θ) = -log p_θ(y_t | x_<t)`` and ``T`` the number of calibration positions.

* **(a) measured** (:func:`measured_kld`): the KL itself, from a forward pass with ``W + ε``. Ground truth;
  one forward pass over the calibration set per (tensor, option).
* **(b) imatrix-weighted MSE** (:func:`imatrix_weighted_error`): ``Σ_ij qw_j ε_ij²`` with ``qw_j`` the mean
  squared activation of input column ``j`` (llama-imatrix's statistic): the energy of the layer's *output*
  error, blind to what follows the layer. Not in KL units; only its ranking is meaningful.
* **(c) first order** : ``‖∇_W L‖₂ · ‖ε‖₂`` with ``L`` the mean NLL of the real next tokens. At a trained
  model the gradient is small and noisy, which makes this the weakest proxy (measured in the benchmark).
* **(d) Hessian trace** (HAWQ-v2): ``½ · Tr(H_W)/n · ‖ε‖²``, ``n`` the element count. At ``θ = θ_float``
  the Hessian of the KL is exactly the Fisher matrix ``F = E_{y~p}[∇ℓ ∇ℓᵀ]``, and Hutchinson's estimator
  ``E_v[vᵀ F v]`` over Rademacher ``v`` has the expectation ``E_y ‖∇ℓ‖²``, which is what is computed (the
  probe integrated out exactly, the label sampled).
* **(e) second-order Taylor term**: ``½ εᵀ F ε`` for the whole block of ``W`` (no diagonal approximation).
  Since ``εᵀ F ε = E_y[(∇_W ℓ · ε)²]``, each backward pass with labels *sampled from the float model* gives
  one unbiased sample ``(g·ε)²`` for every candidate ``ε`` of every tensor at the cost of a dot product.
  With ``L_s = Σ_t ℓ_t`` over one sequence the cross-position terms vanish in expectation (each ``∇ℓ_t`` has
  zero mean given the input), so ``mean_KL ≈ ½ · Σ_sequences E_draws[(∇L_s·ε)²] / T``. This is the default:
  it is in KL units (calibration factor ≈ 1, measured in ``benchmarks/results/allocation_*``), costs a few
  backward passes in all, and its error is Monte-Carlo noise, not bias.
* **(f) dynamic sensitivity**: the spread of (e) across calibration sequences (coefficient of variation of
  the per-sequence estimates): how much a tensor's importance depends on the text.

The book chapter (8.4.4) ranks layers by a Hessian-trace or gradient heuristic; HAWQ uses (d); GPTQ/OBQ use
the layer-local ``εᵀ H_layer ε`` with ``H = X Xᵀ`` (whose diagonal is (b)). (e) is the block-exact version of
the quantity those approximate for the *model output*.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from edgequant.errors import ConfigError, ShapeError


@dataclass
class SensitivityEstimates:
    """Per (tensor, option) predictions, filled by :func:`fisher_sensitivity`.

    ``taylor[name][option]``: (e), mean KL units. ``trace[name][option]``: (d). ``first_order``: (c).
    ``spread[name][option]``: (f), std/mean of the per-sequence (e) values (0 with one sequence).
    ``fisher_trace[name]``: the estimated ``Tr(F_W)/T`` (per token). ``n_tokens``, ``n_samples``: T and the
    number of backward passes with sampled labels.
    """

    taylor: dict[str, dict[str, float]] = field(default_factory=dict)
    trace: dict[str, dict[str, float]] = field(default_factory=dict)
    first_order: dict[str, dict[str, float]] = field(default_factory=dict)
    spread: dict[str, dict[str, float]] = field(default_factory=dict)
    fisher_trace: dict[str, float] = field(default_factory=dict)
    n_tokens: int = 0
    n_samples: int = 0


class _Accumulator:
    """Sums over one parameter's samples, kept per calibration sequence (so that ranks can be merged
    exactly): ``per_seq[i]`` = mean over draws of ``(g·ε)²`` per option, ``grad_sq[i]`` = Σ_draws ``‖g‖²``."""

    def __init__(self, errors: Mapping[str, torch.Tensor], n_seq: int) -> None:
        self.options = list(errors)
        self.eps = torch.stack([errors[o].reshape(-1).float() for o in self.options])  # (n_opt, n)
        self.eps_sq = (self.eps.double() ** 2).sum(1)  # ‖ε‖² per option
        self.per_seq = torch.zeros(n_seq, len(self.options), dtype=torch.float64)
        self.grad_sq = torch.zeros(n_seq, dtype=torch.float64)
        self.real_grad: torch.Tensor | None = None  # Σ over sequences of ∇(Σ_t ℓ_t) with real labels

    def add_sample(self, i: int, g: torch.Tensor, draws: int) -> None:
        gf = g.reshape(-1).float()
        self.per_seq[i] += (self.eps @ gf).double() ** 2 / draws
        self.grad_sq[i] += float(gf.double().pow(2).sum())

    def add_real(self, g: torch.Tensor) -> None:
        g = g.detach().reshape(-1).double()
        self.real_grad = g if self.real_grad is None else self.real_grad + g

    def merge_ranks(self) -> None:
        """Sum over ranks: every sequence's row was filled by exactly one rank (the others hold zeros), so
        the merged rows equal a single process's bit for bit."""
        import torch.distributed as dist

        dist.all_reduce(self.per_seq)
        dist.all_reduce(self.grad_sq)
        if self.real_grad is not None:
            dist.all_reduce(self.real_grad)


def _rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialized default process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sampled_nll(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Σ_t -log p(y_t) with y_t drawn from the model's own (detached) distribution at every position."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    flat = logp.reshape(-1, logp.shape[-1])
    y = torch.multinomial(flat.detach().exp(), 1, generator=generator)
    return -flat.gather(1, y).sum()


def _real_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Σ_t -log p(x_{t+1}) of the text itself (the training loss, summed)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return -logp.gather(2, ids[:, 1:].unsqueeze(-1)).sum()


def fisher_sensitivity(
    model: torch.nn.Module,
    batches: Sequence[torch.Tensor],
    errors: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    draws: int = 4,
    seed: int = 0,
    on_sequence: Callable[[int, int], None] | None = None,
) -> SensitivityEstimates:
    """Proxies (c), (d), (e), (f) for every parameter named in ``errors`` and each of its candidate errors.

    ``model``: a causal LM whose forward takes ``input_ids`` and returns ``.logits`` (a transformers model).
    ``batches``: int64 token tensors of shape (1, T_s), one sequence each. ``errors``: parameter name (as in
    ``model.named_parameters()``) -> {option: ε with the parameter's shape}. ``draws``: backward passes with
    freshly sampled labels per sequence (the Monte-Carlo sample count is ``draws × len(batches)``); the
    labels of sequence ``i`` come from a generator seeded with ``(seed, i)``.

    Under ``torch.distributed`` (an initialized default group; every rank holds the same model, batches and
    errors) rank ``r`` processes sequences ``r, r + world, ...`` and the per-sequence sums are all-reduced:
    every rank returns the estimates one process would, bit for bit for (d), (e), (f).
    """
    if draws < 1:
        raise ConfigError(f"draws must be >= 1, got {draws}", option="draws")
    if not batches:
        raise ConfigError("no calibration sequences: give at least one", option="batches")
    params = dict(model.named_parameters())
    missing = [n for n in errors if n not in params]
    if missing:
        raise ConfigError(f"errors name parameters the model does not have: {', '.join(missing[:5])}")
    names = list(errors)
    acc = {}
    for n in names:
        for o, e in errors[n].items():
            if tuple(e.shape) != tuple(params[n].shape):
                raise ShapeError(
                    f"error for {n} option {o} has shape {tuple(e.shape)}, the parameter "
                    f"{tuple(params[n].shape)}"
                )
        acc[n] = _Accumulator(errors[n], len(batches))
    tracked = [params[n] for n in names]
    rank, world = _rank_world()
    n_tokens = sum(int(torch.as_tensor(b).numel()) for b in batches)
    was_training = model.training
    model.eval()
    try:
        for i in range(rank, len(batches), world):
            ids = torch.as_tensor(batches[i], dtype=torch.int64).reshape(1, -1)
            gen = torch.Generator().manual_seed(
                seed * 1_000_003 + i
            )  # per sequence: any rank split, same draws
            with torch.enable_grad():
                logits = model(input_ids=ids, use_cache=False).logits
                grads = torch.autograd.grad(_real_nll(logits, ids), tracked, retain_graph=True)
                for n, g in zip(names, grads, strict=True):
                    acc[n].add_real(g)
                for d in range(draws):
                    grads = torch.autograd.grad(
                        _sampled_nll(logits, gen), tracked, retain_graph=d < draws - 1
                    )
                    for n, g in zip(names, grads, strict=True):
                        acc[n].add_sample(i, g, draws)
            if on_sequence is not None:
                on_sequence(i + 1, len(batches))
    finally:
        model.train(was_training)
    if world > 1:
        for n in names:
            acc[n].merge_ranks()
    return _estimates(acc, n_tokens, draws * len(batches))


def _estimates(acc: dict[str, _Accumulator], n_tokens: int, n_samples: int) -> SensitivityEstimates:
    out = SensitivityEstimates(n_tokens=n_tokens, n_samples=n_samples)
    for n, a in acc.items():
        per_seq = a.per_seq  # (n_seq, n_opt): Σ_draws(g·ε)²/draws per sequence
        taylor = 0.5 * per_seq.sum(0) / n_tokens
        mean = per_seq.mean(0)
        spread = per_seq.std(0, unbiased=False) / mean.clamp_min(1e-300) if per_seq.shape[0] > 1 else mean * 0
        n_el = a.eps.shape[1]
        ftrace = float(a.grad_sq.sum()) / n_samples * per_seq.shape[0] / n_tokens  # Σ_seq E‖g_seq‖² / T
        gnorm = float(a.real_grad.norm()) / n_tokens if a.real_grad is not None else 0.0
        out.fisher_trace[n] = ftrace
        out.taylor[n], out.trace[n], out.first_order[n], out.spread[n] = {}, {}, {}, {}
        for j, o in enumerate(a.options):
            eps_sq = float(a.eps_sq[j])
            out.taylor[n][o] = float(taylor[j])
            out.trace[n][o] = 0.5 * ftrace / n_el * eps_sq
            out.first_order[n][o] = gnorm * eps_sq**0.5
            out.spread[n][o] = float(spread[j])
    return out


def imatrix_weighted_error(eps_rows: np.ndarray, qw: np.ndarray | None) -> float:
    """(b): ``Σ_ij qw_j ε_ij²`` for ε in ggml row layout (rows, ne0); plain ``Σ ε²`` when ``qw`` is None."""
    e2 = np.asarray(eps_rows, dtype=np.float64) ** 2
    if qw is None:
        return float(e2.sum())
    qw = np.asarray(qw, dtype=np.float64).reshape(-1)
    if qw.size != e2.shape[-1]:
        raise ShapeError(f"imatrix has {qw.size} columns, the error rows {e2.shape[-1]}")
    return float(e2.sum(0) @ qw)


@torch.inference_mode()
def base_log_probs(model: torch.nn.Module, batches: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """float64 log-softmax of the model's logits for every calibration sequence (the KL reference)."""
    return [
        torch.log_softmax(
            model(input_ids=torch.as_tensor(b).reshape(1, -1), use_cache=False).logits[0].double(), -1
        )
        for b in batches
    ]


@torch.inference_mode()
def measured_kld(
    model: torch.nn.Module,
    batches: Sequence[torch.Tensor],
    base: Sequence[torch.Tensor],
    param_name: str,
    replacement: torch.Tensor,
) -> float:
    """(a): mean per-token ``KL(p_base ‖ p_model)`` with parameter ``param_name`` replaced, then restored.

    ``KL_t = Σ_v exp(lb_v) (lb_v - lq_v)`` in float64 (``base`` from :func:`base_log_probs`).
    """
    p = dict(model.named_parameters())[param_name]
    saved = p.detach().clone()
    total, count = 0.0, 0
    try:
        p.copy_(replacement.reshape(p.shape))
        for b, lb in zip(batches, base, strict=True):
            lq = torch.log_softmax(
                model(input_ids=torch.as_tensor(b).reshape(1, -1), use_cache=False).logits[0].double(), -1
            )
            total += float((lb.exp() * (lb - lq)).sum())
            count += lb.shape[0]
    finally:
        p.copy_(saved)
    return total / count
