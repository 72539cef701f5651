"""How one layer's quantization error reaches the output, and how the layers' errors add up (book 8.4.1).

Works on any torch module: ``model``, an ordered mapping ``{qualified module name: quantizer}`` (a quantizer
is a function ``weight -> quantized weight``, e.g. ``functools.partial(codec_grids.reconstruct,
codec="Q4_K")``, or the replacement weight itself), and ``batches``, a sequence of inputs (each a tensor or
a tuple of positional arguments). The model runs in inference (``torch.no_grad``, its train/eval mode
untouched); weights are swapped in place and always restored. Outputs: a tensor, a tuple (its first item) or
an object with ``.logits``. Nothing is read or written to files.

Definitions, with ``y`` the float output and ``y_S`` the output with the layers of set S quantized (sums over
every element of every batch):

* output error ``err(S) = sum ||y_S - y||^2 / sum ||y||^2`` (relative squared error);
* layer l's injected error ``dh_l = f_l(x_l; W_l^q) - f_l(x_l; W_l)``: its own output's change on its float
  input (the earlier layers are float); **measured amplification** ``A_l = sqrt(sum ||y_{l} - y||^2 /
  sum ||dh_l||^2)``, the output error per unit of injected error;
* the book's bound ``kappa_l = ||W_L ... W_{l+1}||_2`` (the spectral norm of the product of the later
  layers' weights, over ``chain`` (default: the quantizers' names) in forward order; 1 for the last layer;
  nan when the weights do not multiply as a chain, e.g. convolutions) and the looser
  ``prod_{i>l} ||W_i||_2``. For a chain of Linear layers with no nonlinearity kappa_l is the largest
  possible amplification (A_l <= kappa_l, reached along the top singular vector); with 1-Lipschitz
  activations (ReLU) only the product of norms is a bound, since ``||W D W'||_2`` with D a 0/1 diagonal can
  exceed ``||W W'||_2``; in a residual network ``x + f(x)`` both ignore the identity path, so neither is a
  bound in general (``tests/unit/analysis/test_propagation.py`` builds all three);
* the **additive model**: ``predicted(S) = sum_{l in S} err({l})`` beside ``measured(S) = err(S)``. It is
  exact when the layers' output errors are orthogonal (independent, zero-mean, linear propagation), as the
  book's ``Var[e_total] = sum_l Var[e_l] kappa_l^2`` assumes; ``additive_model`` gives both over several
  configurations with their Pearson and Spearman correlations. ``PropagationReport.book_total`` is the
  book's formula itself, ``sum_l ||dh_l||^2 kappa_l^2 / sum ||y||^2``: measured amplification replaced by
  kappa.

Measured (``test_propagation.py``'s seeded width-16 models, every Linear at ``Uniform(4)``: 4-bit symmetric
per channel, 2 batches of 32 inputs): in a chain of 4 Linear layers the first has A = 0.20 against
kappa = 0.57 (product of norms 1.13); in a 3-block residual net (hidden 32) the second Linear of the first
block has A = 1.06 against kappa = 0.30 (product of norms 1.24, the residual Lipschitz bound 4.47): the
skip connections carry its error past the weights kappa multiplies.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from edgequant.analysis.metrics import pearson, spearman
from edgequant.errors import ConfigError, ShapeError

LayerQuant = Callable[[torch.Tensor], torch.Tensor] | torch.Tensor
Quantizers = Mapping[str, LayerQuant]


@dataclass(frozen=True)
class LayerPropagation:
    """One layer quantized alone (module docstring for the definitions)."""

    name: str
    weight_rel_error: float  # ||W^q - W|| / ||W||
    injected: float  # sum ||dh_l||^2
    output_error: float  # err({l}), relative squared output error
    amplification: float  # A_l
    kappa: float  # ||W_L ... W_{l+1}||_2 (the book's bound)
    kappa_norms: float  # prod_{i>l} ||W_i||_2


@dataclass(frozen=True)
class PropagationReport:
    layers: tuple[LayerPropagation, ...]
    measured_total: float  # err(all layers quantized)
    predicted_total: float  # additive model: sum of the layers' err({l})
    book_total: float  # the book's model: sum_l ||dh_l||^2 kappa_l^2 / sum ||y||^2


@dataclass(frozen=True)
class AdditiveReport:
    predicted: np.ndarray  # one per configuration
    measured: np.ndarray
    pearson: float
    spearman: float


@dataclass(frozen=True)
class AccumulatedError:
    """The book's accumulation for independent per-layer errors (``accumulated_error``)."""

    kappas: tuple[float, ...]
    variances: tuple[float, ...]
    total_variance: float
    total_std: float


def accumulated_error(norms: Sequence[float], stds: Sequence[float]) -> AccumulatedError:
    """``kappa_l = prod_{i>l} ||W_i||``, ``Var_l = std_l^2 kappa_l^2``, ``Var_total = sum_l Var_l``.

    The book's exercise 8: norms [2.0, 1.5, 1.2], stds [0.01, 0.02, 0.015] give kappa = (1.8, 1.2, 1.0),
    Var = (0.000324, 0.000576, 0.000225), Var_total = 0.001125, std = sqrt(0.001125) = 0.03354. The book
    writes kappa_1 = ||W_2|| ||W_3|| = 1.8 as if it were ``||W_3 W_2||_2``; it is only its upper bound
    (submultiplicativity), so these variances are upper bounds for linear layers whose error directions are
    the worst case, not predictions (``spectral_bounds`` gives the product's own norm).
    """
    if len(norms) != len(stds) or not norms:
        raise ConfigError(f"norms and stds need one value per layer; got {len(norms)} and {len(stds)}")
    kappas = [math.prod(float(v) for v in norms[i + 1 :]) for i in range(len(norms))]
    variances = [float(s) ** 2 * k**2 for s, k in zip(stds, kappas, strict=True)]
    total = math.fsum(variances)
    return AccumulatedError(tuple(kappas), tuple(variances), total, math.sqrt(total))


def spectral_bounds(weights: Sequence[torch.Tensor]) -> tuple[list[float], list[float]]:
    """(``||W_L ... W_{l+1}||_2``, ``prod_{i>l} ||W_i||_2``) for each l of a chain of 2-D weights [out, in] in
    forward order (float64; nan where a product's shapes do not chain)."""
    mats = [w.detach().to("cpu", torch.float64) for w in weights]
    kappa, norms = [1.0] * len(mats), [1.0] * len(mats)
    nan = torch.full((1, 1), math.nan, dtype=torch.float64)
    prod: torch.Tensor | None = None  # W_L ... W_{l+1}
    for l in range(len(mats) - 2, -1, -1):
        nxt = mats[l + 1]
        norms[l] = norms[l + 1] * (_spectral(nxt) if nxt.ndim == 2 else math.nan)
        chains = nxt.ndim == 2 and (prod is None or prod.shape[1] == nxt.shape[0])
        prod = (nxt if prod is None else prod @ nxt) if chains else nan
        kappa[l] = _spectral(prod)
    return kappa, norms


def _spectral(m: torch.Tensor) -> float:
    if torch.isnan(m).any():
        return math.nan
    return float(torch.linalg.matrix_norm(m, ord=2))


def _module_weight(model: torch.nn.Module, name: str) -> torch.nn.Parameter:
    try:
        module = model.get_submodule(name)
    except AttributeError as exc:
        raise ConfigError(f"the model has no module {name!r}; use a name from model.named_modules()") from exc
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor):
        raise ConfigError(f"module {name!r} has no weight tensor to quantize")
    return w


def quantized_weight(w: torch.Tensor, quantizer: LayerQuant, name: str) -> torch.Tensor:
    """The replacement for weight ``w``: ``quantizer(w)`` or the given tensor, checked for shape."""
    src = w.detach().clone()
    q = quantizer(src) if callable(quantizer) else quantizer
    if not isinstance(q, torch.Tensor):
        q = torch.as_tensor(np.asarray(q))
    if tuple(q.shape) != tuple(w.shape):
        raise ShapeError(
            f"{name}: the quantized weight has shape {tuple(q.shape)}, the weight has {tuple(w.shape)}"
        )
    return q.detach().to(device=w.device, dtype=w.dtype)


@contextlib.contextmanager
def swapped_weights(model: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Replace each named module's weight values in place for the duration; the originals are restored."""
    saved = []
    try:
        with torch.no_grad():
            for name, q in weights.items():
                w = _module_weight(model, name)
                saved.append((w, w.detach().clone()))
                w.copy_(q)
        yield
    finally:
        with torch.no_grad():
            for w, orig in reversed(saved):
                w.copy_(orig)


def _output_tensor(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ConfigError(f"cannot find the output tensor in a {type(out).__name__}; return a tensor or .logits")


def run_outputs(model: torch.nn.Module, batches: Sequence) -> list[torch.Tensor]:
    """The model's outputs on every batch, float64 on the CPU."""
    if not batches:
        raise ConfigError("batches is empty; pass at least one input batch")
    outs = []
    with torch.no_grad():
        for b in batches:
            args = b if isinstance(b, tuple) else (b,)
            outs.append(_output_tensor(model(*args)).detach().to("cpu", torch.float64))
    return outs


def output_error(reference: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor]) -> float:
    """``sum ||y_q - y||^2 / sum ||y||^2`` over paired output batches (0 when both are zero)."""
    num = _sq_diff(outputs, reference)
    den = math.fsum(float((r**2).sum()) for r in reference)
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def _captured_run(model, names: Sequence[str], batches) -> tuple[list[torch.Tensor], dict[str, list]]:
    """(the model's outputs, each named module's outputs per batch), float64 on the CPU."""
    captured: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def hook(name):
        return lambda _m, _i, o: captured[name].append(_output_tensor(o).detach().to("cpu", torch.float64))

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        outs = run_outputs(model, batches)
    finally:
        for h in handles:
            h.remove()
    return outs, captured


def _sq_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return math.fsum(float(((x - y) ** 2).sum()) for x, y in zip(a, b, strict=True))


def layer_amplification(
    model: torch.nn.Module, quantizers: Quantizers, batches: Sequence, *, chain: Sequence[str] | None = None
) -> PropagationReport:
    """Each layer's error injected alone, its measured amplification beside the book's kappa bounds, and the
    additive prediction beside the error with every layer quantized (module docstring). ``chain``: the
    modules whose weights the kappa products run over, in forward order (default: the quantizers' names);
    a quantized layer not in it gets kappa = nan."""
    if not quantizers:
        raise ConfigError("quantizers is empty; map at least one module name to a quantizer")
    names = list(quantizers)
    chain = list(chain) if chain is not None else names
    weights = {n: _module_weight(model, n) for n in dict.fromkeys([*names, *chain])}
    qw = {n: quantized_weight(weights[n], q, n) for n, q in quantizers.items()}
    kappa, kappa_norms = spectral_bounds([weights[n] for n in chain])
    at = {n: i for i, n in enumerate(chain)}
    ref, float_h = _captured_run(model, names, batches)
    rows = []
    for name in names:
        with swapped_weights(model, {name: qw[name]}):
            outs, h = _captured_run(model, [name], batches)
        injected, out_sq = _sq_diff(h[name], float_h[name]), _sq_diff(outs, ref)
        w = weights[name].detach().to(torch.float64)
        w_err = float(torch.linalg.vector_norm(qw[name].to(torch.float64) - w))
        w_norm = float(torch.linalg.vector_norm(w))
        rows.append(
            LayerPropagation(
                name=name,
                weight_rel_error=w_err / w_norm if w_norm > 0 else (math.inf if w_err > 0 else 0.0),
                injected=injected,
                output_error=output_error(ref, outs),
                amplification=math.sqrt(out_sq / injected) if injected > 0 else math.nan,
                kappa=kappa[at[name]] if name in at else math.nan,
                kappa_norms=kappa_norms[at[name]] if name in at else math.nan,
            )
        )
    with swapped_weights(model, qw):
        measured = output_error(ref, run_outputs(model, batches))
    energy = math.fsum(float((r**2).sum()) for r in ref)
    book = math.fsum(r.injected * r.kappa**2 for r in rows) / energy if energy > 0 else math.nan
    return PropagationReport(tuple(rows), measured, math.fsum(r.output_error for r in rows), book)


def additive_model(
    model: torch.nn.Module, configs: Sequence[Quantizers], batches: Sequence
) -> AdditiveReport:
    """For each configuration (a ``quantizers`` mapping), ``predicted = sum_l err({l})`` and ``measured =
    err(all its layers)``, and their Pearson and Spearman correlations across configurations. A layer's
    err({l}) is computed once per (name, quantizer object): quantizers must be deterministic."""
    if len(configs) < 2:
        raise ConfigError(f"additive_model needs at least 2 configurations to correlate, got {len(configs)}")
    ref = run_outputs(model, batches)
    cache: dict[tuple[str, int], float] = {}
    predicted, measured = [], []
    for cfg in configs:
        qw = {n: quantized_weight(_module_weight(model, n), q, n) for n, q in cfg.items()}
        parts = []
        for name, q in cfg.items():
            key = (name, id(q))
            if key not in cache:
                with swapped_weights(model, {name: qw[name]}):
                    cache[key] = output_error(ref, run_outputs(model, batches))
            parts.append(cache[key])
        predicted.append(math.fsum(parts))
        with swapped_weights(model, qw):
            measured.append(output_error(ref, run_outputs(model, batches)))
    p, m = np.asarray(predicted), np.asarray(measured)
    return AdditiveReport(p, m, pearson(p, m), spearman(p, m))
