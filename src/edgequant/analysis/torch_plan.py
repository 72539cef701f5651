"""Per-layer precision of a PyTorch model under a memory budget, applied through ``quantize_``.

Candidates (``DEFAULT_CANDIDATES``; any mapping name -> config works, ``None`` meaning "keep"): NF4 and FP4
(``NF4Config()`` / ``FP4Config()``: blocksize 64, double quantization on), LLM.int8 (``Int8Config()``) and
keep (the layer stays an ``nn.Linear`` in its own dtype).

- Cost of a layer under a candidate, ``layer_bytes``: the exact bytes of the state_dict of the module
  ``quantize_`` builds (weights + quantization state + bias), from the layouts of ``nn/``:
  keep ``out*in*itemsize``; LLM.int8 ``out*in`` (int8) + ``4*out`` (SCB) + 1 (weight_format);
  4-bit ``ceil(out*in/2)`` packed + ``64`` (16-entry float32 map) + absmax (``4*nb`` float32, or with double
  quantization ``nb`` uint8 + ``4*ceil(nb/256)`` nested absmax + ``1024`` nested map), ``nb = ceil(out*in /
  blocksize)``, + the bytes of bnb's JSON quant_state blob (whose ``nested_offset`` is the mean absmax, so it
  is computed from the weight); plus the bias in every case.
- Sensitivity of a layer to a candidate, ``layer_sensitivities`` (the ground truth of issue 11's item 4a):
  the measured increase of a loss over calibration batches when that layer alone is quantized (through
  ``quantize_`` with an exact-name selection, then restored). Default loss ``"kl"``: mean over every output
  position of ``KL(softmax(z_ref) || softmax(z))`` (natural log, float64) of the model's logits vs the float
  model's; ``"mse"``: mean squared difference of the outputs (for models that do not output logits); or a
  callable ``loss(output, reference, batch) -> float`` (the increase is measured against
  ``loss(reference, reference, batch)``), averaged over batches. Keep has sensitivity 0.
- ``plan_layers``: minimizes the sum of sensitivities (the additive model of section 8.4.1) subject to the
  planned layers' bytes <= ``budget_bytes`` with ``allocate`` (exact by default), and ``apply_plan`` applies
  it: one ``quantize_`` call per candidate config, selecting exactly the planned names.
- ``threshold_plan``: section 8.1.4's rule, the simple case: ``keep`` (the chapter's FP16: here the layer's
  own dtype) when ``sensitivity > tau``, else ``int8``; the chapter's sensitivity is the relative weight error
  ``||W - Q(W)||_F / ||W||_F`` of int8 (``weight_sensitivities``), any mapping of scores works.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from edgequant.analysis.allocate import Allocation, allocate
from edgequant.bnb.fourbit import NESTED_BLOCKSIZE
from edgequant.bnb.quant_state import dtype_name
from edgequant.errors import ConfigError
from edgequant.nn.configs import FP4Config, Int8Config, Int8DynamicConfig, NF4Config
from edgequant.nn.handlers import handler_for
from edgequant.nn.quantize import LayerQuantizeReport, quantize_, relative_weight_error, set_submodule

DEFAULT_CANDIDATES = {"nf4": NF4Config(), "fp4": FP4Config(), "int8": Int8Config(), "keep": None}
LOSSES = ("kl", "mse")


@dataclass(frozen=True)
class LayerPlan:
    """A per-layer choice: ``choices[layer] = candidate name``; ``candidates[name]`` its config (None: keep).

    ``predicted_loss``: the sum of the chosen sensitivities; ``bytes``: the planned layers' state bytes;
    ``sensitivities`` / ``costs``: ``[layer][candidate]``, what the plan was solved from.
    """

    choices: dict[str, str]
    candidates: dict[str, object]
    predicted_loss: float
    bytes: int
    budget: int
    sensitivities: dict[str, dict[str, float]]
    costs: dict[str, dict[str, int]]
    allocation: Allocation


def linear_layers(model: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` modules ``quantize_`` can replace, minus those whose weight is shared with
    another module (a head tied to the embeddings: quantizing it would untie it)."""
    owners: dict[int, int] = {}
    for _, mod in model.named_modules(remove_duplicate=False):
        for p in mod.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    return [n for n, m in model.named_modules() if type(m) is nn.Linear and owners[id(m.weight)] == 1]


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def state_bytes(module: nn.Module) -> int:
    """Bytes of every tensor of ``module.state_dict()`` (what ``layer_bytes`` predicts)."""
    return sum(_nbytes(t) for t in module.state_dict().values())


def _four_bit_bytes(w: torch.Tensor, config) -> int:
    n, bs = w.numel(), config.blocksize
    nb = -(-n // bs)
    blob = {
        "quant_type": config.quant_type,
        "blocksize": bs,
        "dtype": dtype_name(w.dtype),
        "shape": list(w.shape),
    }
    size = (n + 1) // 2 + 16 * 4
    if config.compress_statistics:
        a = w.detach().to(torch.float32).reshape(-1).abs()
        full = (n // bs) * bs
        am = a[:full].reshape(-1, bs).amax(dim=1)
        if full < n:  # the short tail block stores max(absmax, 1e-38), as the kernel
            am = torch.cat([am, torch.clamp(a[full:].max(), min=1e-38).reshape(1)])
        blob |= {
            "nested_blocksize": NESTED_BLOCKSIZE,
            "nested_dtype": "float32",
            "nested_offset": am.mean().item(),
        }
        size += nb + 4 * -(-nb // NESTED_BLOCKSIZE) + 256 * 4
    else:
        size += 4 * nb
    return size + len(json.dumps(blob).encode("utf-8"))


def layer_bytes(linear: nn.Linear, config) -> int:
    """Exact state_dict bytes of the module ``quantize_`` makes of ``linear`` with ``config`` (None: keep);
    layouts in the module docstring. A config type without a known layout is built and measured."""
    w = linear.weight
    bias = 0 if linear.bias is None else _nbytes(linear.bias)
    n, out = w.numel(), w.shape[0]
    if config is None:
        return _nbytes(w) + bias
    if isinstance(config, NF4Config | FP4Config):
        return _four_bit_bytes(w, config) + bias
    if isinstance(config, Int8Config):
        return n + 4 * out + 1 + bias
    if isinstance(config, Int8DynamicConfig):
        return n + 4 * out + bias
    with torch.no_grad():
        return state_bytes(handler_for(config, "layer_bytes").build(config, linear, "layer"))


def _exact_selection(config, names: Sequence[str]):
    """``config`` selecting exactly ``names`` (fnmatch-escaped), no skips, no float fallback."""
    return dataclasses.replace(
        config,
        include=tuple(glob.escape(n) for n in names),
        exclude=(),
        skip_modules=(),
        keep_high_precision_above=None,
    )


def _forward(model: nn.Module, batch) -> torch.Tensor:
    out = (
        model(**batch)
        if isinstance(batch, Mapping)
        else model(*batch)
        if isinstance(batch, tuple)
        else model(batch)
    )
    if hasattr(out, "logits"):
        out = out.logits
    elif isinstance(out, tuple | list):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"the model returned {type(out).__name__}; it must return a tensor or have .logits")
    return out


def _loss_fn(loss) -> Callable:
    if callable(loss):
        return lambda out, ref, batch: float(loss(out, ref, batch)) - float(loss(ref, ref, batch))
    if loss == "kl":

        def kl(out, ref, batch):
            lp, lq = torch.log_softmax(ref.double(), -1), torch.log_softmax(out.double(), -1)
            return float((lp.exp() * (lp - lq)).sum(-1).mean())

        return kl
    if loss == "mse":
        return lambda out, ref, batch: float(((out.double() - ref.double()) ** 2).mean())
    raise ConfigError(f"loss={loss!r}; use one of {LOSSES} or a callable (output, reference, batch) -> float")


def _check_layers(model: nn.Module, layers: Iterable[str]) -> list[str]:
    names = list(layers)
    mods = dict(model.named_modules())
    for name in names:
        if name not in mods:
            raise ConfigError(
                f"layer {name!r} is not a module of the model; use names from linear_layers(model)"
            )
        if type(mods[name]) is not nn.Linear:
            raise ConfigError(
                f"layer {name!r} is a {type(mods[name]).__name__}, not an nn.Linear (already quantized?)"
            )
    if len(set(names)) != len(names):
        raise ConfigError("layers names a layer twice")
    return names


def layer_sensitivities(
    model: nn.Module,
    batches: Iterable,
    *,
    layers: Sequence[str] | None = None,
    candidates: Mapping[str, object] | None = None,
    loss: str | Callable = "kl",
) -> dict[str, dict[str, float]]:
    """``[layer][candidate]``: the measured loss increase with that layer alone quantized (module docstring).
    The model is left as it was (every layer restored, train/eval mode restored)."""
    candidates = dict(DEFAULT_CANDIDATES if candidates is None else candidates)
    names = _check_layers(model, linear_layers(model) if layers is None else layers)
    batches, fn = list(batches), _loss_fn(loss)
    if not batches:
        raise ConfigError("batches is empty; give at least one calibration batch")
    was_training = model.training
    model.eval()
    out: dict[str, dict[str, float]] = {}
    try:
        with torch.no_grad():
            refs = [_forward(model, b) for b in batches]
            for name in names:
                original = model.get_submodule(name)
                row = {}
                for cand, config in candidates.items():
                    if config is None:
                        row[cand] = 0.0
                        continue
                    quantize_(model, _exact_selection(config, [name]))
                    try:
                        row[cand] = sum(
                            fn(_forward(model, b), r, b) for b, r in zip(batches, refs, strict=True)
                        )
                        row[cand] /= len(batches)
                    finally:
                        set_submodule(model, name, original)
                out[name] = row
    finally:
        model.train(was_training)
    return out


def plan_layers(
    model: nn.Module,
    batches: Iterable | None,
    budget_bytes: int,
    *,
    candidates: Mapping[str, object] | None = None,
    layers: Sequence[str] | None = None,
    loss: str | Callable = "kl",
    method: str = "exact",
    sensitivities: Mapping[str, Mapping[str, float]] | None = None,
) -> LayerPlan:
    """The per-layer choice of least predicted loss whose planned layers take at most ``budget_bytes``.

    ``budget_bytes`` counts the state of the planned layers only (``layers``, default ``linear_layers``);
    the rest of the model (embeddings, norms) is unchanged. ``sensitivities`` (``[layer][candidate]``) skips
    the measurement (``batches`` may then be None). Raises ConfigError naming the feasible byte range.
    """
    candidates = dict(DEFAULT_CANDIDATES if candidates is None else candidates)
    if not candidates:
        raise ConfigError("candidates is empty; give at least one name -> config (None: keep)")
    names = _check_layers(model, linear_layers(model) if layers is None else layers)
    if sensitivities is None:
        if batches is None:
            raise ConfigError("plan_layers needs calibration batches or precomputed sensitivities")
        sensitivities = layer_sensitivities(model, batches, layers=names, candidates=candidates, loss=loss)
    missing = [(n, c) for n in names for c in candidates if c not in sensitivities.get(n, {})]
    if missing:
        raise ConfigError(
            f"sensitivities has no value for layer {missing[0][0]!r}, candidate {missing[0][1]!r}"
        )
    sens = {n: {c: float(sensitivities[n][c]) for c in candidates} for n in names}
    costs = {n: {c: layer_bytes(model.get_submodule(n), cfg) for c, cfg in candidates.items()} for n in names}
    alloc = allocate(
        [{c: (sens[n][c], costs[n][c]) for c in candidates} for n in names], budget_bytes, method=method
    )
    return LayerPlan(
        choices=dict(zip(names, alloc.options, strict=True)),
        candidates=candidates,
        predicted_loss=alloc.loss,
        bytes=int(alloc.cost),
        budget=budget_bytes,
        sensitivities=sens,
        costs=costs,
        allocation=alloc,
    )


def apply_plan(
    model: nn.Module, plan: LayerPlan | Mapping[str, str], candidates: Mapping[str, object] | None = None
) -> dict[str, LayerQuantizeReport]:
    """Quantize every layer of ``plan`` to its candidate, in place: one ``quantize_`` call per candidate
    config, selecting exactly the planned names. ``plan``: a LayerPlan, or ``{layer: candidate name}`` with
    ``candidates`` (default ``DEFAULT_CANDIDATES``). Returns ``quantize_``'s report per candidate.
    Every layer is checked before any is changed; ConfigError names an unknown layer or candidate."""
    if isinstance(plan, LayerPlan):
        choices, candidates = plan.choices, plan.candidates
    else:
        choices, candidates = dict(plan), dict(DEFAULT_CANDIDATES if candidates is None else candidates)
    _check_layers(model, choices)
    unknown = sorted({c for c in choices.values() if c not in candidates})
    if unknown:
        raise ConfigError(f"plan names candidate {unknown[0]!r}, not one of {sorted(candidates)}")
    reports = {}
    for cand, config in candidates.items():
        names = [n for n, c in choices.items() if c == cand]
        if config is None or not names:
            continue
        reports[cand] = quantize_(model, _exact_selection(config, names))
        if sorted(reports[cand].quantized) != sorted(names):  # cannot happen with an exact selection
            raise AssertionError(f"quantize_ did not replace exactly the planned {cand} layers")
    return reports


def weight_sensitivities(
    model: nn.Module, config=None, *, layers: Sequence[str] | None = None
) -> dict[str, float]:
    """Section 8.1.4's sensitivity per layer: ``||W - Q(W)||_F / ||W||_F`` under ``config`` (default int8)."""
    config = Int8Config() if config is None else config
    handler = handler_for(config, "weight_sensitivities")
    out = {}
    with torch.no_grad():
        for name in _check_layers(model, linear_layers(model) if layers is None else layers):
            linear = model.get_submodule(name)
            out[name] = relative_weight_error(linear.weight, handler.build(config, linear, name))
    return out


def threshold_plan(
    sensitivities: Mapping[str, float], tau: float, *, above: str = "keep", below: str = "int8"
) -> dict[str, str]:
    """Section 8.1.4: ``above`` (keep) for a layer with ``sensitivity > tau``, else ``below`` (int8).
    Apply with ``apply_plan(model, plan)``."""
    if isinstance(tau, bool) or not isinstance(tau, int | float) or not math.isfinite(tau):
        raise ConfigError(f"tau must be a finite number, got {tau!r}")
    return {name: above if float(s) > tau else below for name, s in sensitivities.items()}
