"""Which transformer layers a quantized model's output error comes from: per-layer KLD attribution and the
critical path (book 8.4.5, "error attribution and the critical path").

Inputs: a float causal LM (``model``, a transformers model whose logits are ``lm_head(norm(layers(embed)))``,
checked on the first window), token windows ``batches``, and ``quantized``: ``{module name: QuantizedTensor}``
for every tensor the candidate changes (its dequantized weight in the module's layout, plus the rounding
llama.cpp applies to that matmul's input, :mod:`edgequant.eval.ggml_activations`). The tensors are grouped
into **units** in forward order: ``token_embd`` (the input embedding), ``blk.0`` .. ``blk.{L-1}`` (each
decoder layer, all its matrices together), ``output`` (the output head; with tied embeddings it is the same
quantized tensor as ``token_embd`` seen from the other end, so it is its own unit).

Let ``KLD(S)`` be the mean over the scored positions of all windows of ``KL(p_float || p_S)``, where
``p_S`` is the model with the tensors of the units in ``S`` quantized (weights and input rounding) and all
others float; ``KL_t = sum_v exp(lb_v) (lb_v - lq_v)`` in float64 (llama-perplexity's KLD, as
:mod:`edgequant.eval.metrics`). With units ``u_0 .. u_{n-1}`` in forward order:

* **isolated** ``I_i = KLD({u_i})``: unit i alone quantized;
* **cumulative** ``C_i = KLD({u_0, .., u_i})`` (``C_{-1} = KLD({}) = 0``) and the **increment**
  ``D_i = C_i - C_{i-1}``. The increments telescope: ``sum_i D_i = C_{n-1} = KLD(all)``, the full
  candidate's KLD, exactly (up to float64 summation). The split is order-dependent: ``D_i`` is unit i's
  effect given that every earlier unit is already quantized (a Shapley value would average over orders, at
  exponential cost). Forward order is the natural one: ``D_i`` is what layer i adds to the error that
  reaches it;
* **interaction** ``KLD(all) - sum_i I_i``: how far the additive model
  (:mod:`edgequant.analysis.propagation`) is from the truth; errors that compound make it positive;
* **critical path** at ``share`` s: the fewest units whose increments add up to at least ``s * KLD(all)``
  (largest increments first), listed in forward order, and ``path_share``, the fraction they make up;
* **kinds**: for the ``kind_layers`` decoder layers of the path with the largest increments, the isolated
  ``KLD`` of each tensor kind (``attn_q``, ``attn_k``, ``attn_v``, ``attn_output``, ``ffn_gate``, ``ffn_up``,
  ``ffn_down``: one tensor of that layer alone quantized).

Cost: the float pass captures every layer's input once per window (two forwards: the model's own, to check
the manual path, and the manual one). A configuration with unit i quantized reruns only layers i..L-1 from a
cached hidden state (the float one for ``I_i``, the cumulative one for ``C_i``, which is carried forward):
``L(L+1)/2`` layer passes each for I and C, ``kind_layers * 7`` partial passes for the kinds, and one head
per configuration on the scored rows only. About ``L + 2 + 7*kind_layers/2`` full-forward equivalents per
window (``Attribution.forwards`` counts them).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch

from edgequant.analysis.propagation import swapped_weights
from edgequant.errors import ConfigError

KINDS = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "qkv_proj": "attn_qkv",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "gate_up_proj": "ffn_up",
    "down_proj": "ffn_down",
}
EMBD, OUTPUT = "token_embd", "output"
_LAYER = re.compile(r"^blk\.(\d+)$")


class _Stop(Exception):
    """Ends a capture run at layer 0's input."""


@dataclass(frozen=True)
class QuantizedTensor:
    """The candidate's value of one module's weight, and the rounding of that module's input (None: none)."""

    weight: torch.Tensor
    input_rounding: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass(frozen=True)
class UnitAttribution:
    """One unit (module docstring): ``isolated`` I_i, ``cumulative`` C_i, ``increment`` D_i (mean KLD)."""

    name: str
    tensors: tuple[str, ...]
    isolated: float
    cumulative: float
    increment: float
    kinds: dict[str, float] = field(default_factory=dict)

    @property
    def top_kind(self) -> str | None:
        return max(self.kinds, key=self.kinds.get) if self.kinds else None


@dataclass(frozen=True)
class Attribution:
    units: tuple[UnitAttribution, ...]
    total: float  # KLD(all units quantized) = C_{n-1}
    isolated_sum: float
    interaction: float  # total - isolated_sum
    share: float
    critical_path: tuple[str, ...]  # forward order
    path_share: float  # sum of the path's increments / total
    n_tokens: int  # scored positions over all windows
    forwards: float  # cost in full-forward equivalents (layer passes / L), all windows
    seconds: float

    def to_json(self) -> dict:
        d = asdict(self)
        for u, unit in zip(d["units"], self.units, strict=True):
            u["tensors"] = list(u["tensors"])
            u["top_kind"] = unit.top_kind
        d["critical_path"] = list(self.critical_path)
        return d


def critical_path(names: Sequence[str], increments: Sequence[float], share: float) -> tuple[list[str], float]:
    """(the fewest units whose increments reach ``share`` of their sum, in the given order; that share)."""
    total = math.fsum(increments)
    if not 0 < share <= 1:
        raise ConfigError(f"share must be in (0, 1], got {share}", option="share")
    if not total > 0:
        return [], 0.0
    order = sorted(range(len(names)), key=lambda i: -increments[i])
    chosen, acc = [], 0.0
    for i in order:
        if acc >= share * total:
            break
        chosen.append(i)
        acc += increments[i]
    return [names[i] for i in sorted(chosen)], acc / total


def _units(model, quantized: Mapping[str, QuantizedTensor]) -> dict[str, list[str]]:
    """{unit: module names} in forward order; ConfigError for a module outside embed / layers / head."""
    names = {id(m): n for n, m in model.named_modules()}
    embed, head = names.get(id(model.get_input_embeddings())), names.get(id(model.get_output_embeddings()))
    prefixes = [names[id(layer)] + "." for layer in _decoder(model).layers]
    units: dict[str, list[str]] = {}
    for key in quantized:
        if key == embed:
            unit = EMBD
        elif key == head:
            unit = OUTPUT
        else:
            i = next((i for i, p in enumerate(prefixes) if key.startswith(p)), None)
            if i is None:
                raise ConfigError(
                    f"module {key!r} is in no decoder layer, nor the embedding or the output head"
                )
            unit = f"blk.{i}"
        units.setdefault(unit, []).append(key)
    order = [EMBD] + [f"blk.{i}" for i in range(len(prefixes))] + [OUTPUT]
    return {u: units[u] for u in order if u in units}


def _decoder(model):
    dec = model.get_decoder() if hasattr(model, "get_decoder") else None
    if dec is None or not hasattr(dec, "layers") or not hasattr(dec, "norm"):
        raise ConfigError(f"{type(model).__name__}: attribution needs a decoder with .layers and .norm")
    return dec


def kind_of(module_name: str) -> str:
    leaf = module_name.rsplit(".", 1)[-1]
    return KINDS.get(leaf, leaf)


class _Runner:
    """The model run piece by piece: captured float layer inputs, quantized layers swapped in on demand."""

    def __init__(self, model, quantized: Mapping[str, QuantizedTensor], positions: slice) -> None:
        self.model, self.q, self.positions = model, quantized, positions
        self.dec = _decoder(model)
        self.layers = list(self.dec.layers)
        self.head = model.get_output_embeddings()
        names = {id(m): n for n, m in model.named_modules()}
        self.head_name = names.get(id(self.head))
        self.embed_name = names.get(id(model.get_input_embeddings()))
        self.active: set[str] = set()
        self.layer_passes = 0
        self.handles = []
        for key, qt in quantized.items():
            if qt.input_rounding is None or key in (self.head_name, self.embed_name):
                continue
            self.handles.append(model.get_submodule(key).register_forward_pre_hook(self._hook(key, qt)))

    def _hook(self, key: str, qt: QuantizedTensor):
        def pre(_m, inp):
            return (qt.input_rounding(inp[0]), *inp[1:]) if key in self.active else None

        return pre

    def close(self) -> None:
        for h in self.handles:
            h.remove()

    def capture(self, ids: torch.Tensor, embed_quantized: bool = False):
        """(each layer's (extra args, kwargs), the layer-0 input, the model's own scored logits); with
        ``embed_quantized`` the run stops at layer 0 (logits None)."""
        calls: list = [None] * len(self.layers)
        first: list[torch.Tensor] = []

        def grab(i):
            def pre(_m, args, kwargs):
                if i == 0:
                    first.append(args[0] if args else kwargs["hidden_states"])
                    if embed_quantized:
                        raise _Stop
                calls[i] = (args[1:], dict(kwargs))

            return pre

        hs = [
            layer.register_forward_pre_hook(grab(i), with_kwargs=True) for i, layer in enumerate(self.layers)
        ]
        logits = None
        try:
            swap = {self.embed_name: self.q[self.embed_name].weight} if embed_quantized else {}
            with swapped_weights(self.model, swap):
                logits = self.model(input_ids=ids, use_cache=False).logits[0, self.positions]
        except _Stop:
            pass
        finally:
            for h in hs:
                h.remove()
        return calls, first[0], logits

    def layer(self, i: int, h: torch.Tensor, calls, quantized: Sequence[str] = ()) -> torch.Tensor:
        args, kwargs = calls[i]
        pos = () if "hidden_states" in kwargs else (h,)
        kwargs = {**kwargs, "hidden_states": h} if not pos else kwargs
        self.active = set(quantized)
        try:
            with swapped_weights(self.model, {k: self.q[k].weight for k in quantized}):
                out = self.layers[i](*pos, *args, **kwargs)
        finally:
            self.active = set()
        self.layer_passes += 1
        return out[0] if isinstance(out, (tuple, list)) else out

    def logits(self, h: torch.Tensor, quantized_head: bool = False) -> torch.Tensor:
        x = self.dec.norm(h)[0, self.positions]
        w = self.head.weight
        if quantized_head:
            qt = self.q[self.head_name]
            w = qt.weight
            x = qt.input_rounding(x) if qt.input_rounding is not None else x
        return torch.nn.functional.linear(x, w, self.head.bias)

    def tail(self, start: int, h: torch.Tensor, calls, quantized_head: bool) -> torch.Tensor:
        for j in range(start, len(self.layers)):
            h = self.layer(j, h, calls)
        return self.logits(h, quantized_head)


def _counter(fn: Callable[[int], None]) -> Callable[[], None]:
    n = [0]

    def step() -> None:
        fn(n[0])
        n[0] += 1

    return step


def _kl_sum(lb: torch.Tensor, logits: torch.Tensor) -> float:
    """``sum_t KL_t`` over the rows (float64 log-probs ``lb`` of the float model)."""
    lq = torch.log_softmax(logits.double(), -1)
    return float((lb.exp() * (lb - lq)).sum())


@dataclass
class _Window:
    calls: list
    hidden: list[torch.Tensor]  # float input of layer i, hidden[L] = the last layer's output
    base_logits: torch.Tensor  # float32, scored rows

    def log_probs(self) -> torch.Tensor:
        return torch.log_softmax(self.base_logits.double(), -1)


def _float_window(run: _Runner, ids: torch.Tensor, check: bool) -> _Window:
    calls, h, model_logits = run.capture(ids)
    hidden = [h]
    for i in range(len(run.layers)):
        hidden.append(run.layer(i, hidden[-1], calls))
    logits = run.logits(hidden[-1])
    if check:
        scale = float(model_logits.abs().max()) or 1.0
        if not torch.allclose(logits, model_logits, rtol=1e-4, atol=1e-4 * scale):
            raise ConfigError(
                f"{type(run.model).__name__}: its logits are not lm_head(norm(layers(embedding))) "
                "(a softcap or a logit scale?); per-layer attribution does not support this architecture"
            )
    return _Window(calls, hidden, logits.float())


def _unit_sums(run: _Runner, ids, w: _Window, units: dict[str, list[str]], step) -> dict:
    """{unit: (sum KL isolated, sum KL cumulative)} of one window (module docstring); ``step()`` per unit."""
    lb, n_layer = w.log_probs(), len(run.layers)
    out: dict[str, tuple[float, float]] = {}
    hc, at = None, 0  # the cumulative hidden state: the input of layer ``at``
    for unit in units:
        step()
        if unit == EMBD:
            _, h0q, _ = run.capture(ids, embed_quantized=True)
            iso = _kl_sum(lb, run.tail(0, h0q, w.calls, False))
            out[unit], hc, at = (iso, iso), h0q, 0
            continue
        if unit == OUTPUT:
            iso = _kl_sum(lb, run.logits(w.hidden[n_layer], True))
            if hc is None:
                out[unit] = (iso, iso)
                continue
            for j in range(at, n_layer):
                hc = run.layer(j, hc, w.calls)
            out[unit] = (iso, _kl_sum(lb, run.logits(hc, True)))
            continue
        i = int(_LAYER.match(unit).group(1))
        hq = run.layer(i, w.hidden[i], w.calls, units[unit])
        iso = _kl_sum(lb, run.tail(i + 1, hq, w.calls, False))
        if hc is None:
            out[unit], hc, at = (iso, iso), hq, i + 1
            continue
        for j in range(at, i):
            hc = run.layer(j, hc, w.calls)
        hc, at = run.layer(i, hc, w.calls, units[unit]), i + 1
        out[unit] = (iso, _kl_sum(lb, run.tail(i + 1, hc, w.calls, False)))
    return out


def _kind_sums(run: _Runner, w: _Window, units: dict[str, list[str]], layers: list[str]) -> dict:
    """{unit: {kind: sum KL with that one tensor of the unit quantized}} of one window."""
    lb = w.log_probs()
    out: dict[str, dict[str, float]] = {}
    for unit in layers:
        i = int(_LAYER.match(unit).group(1))
        for key in units[unit]:
            hq = run.layer(i, w.hidden[i], w.calls, [key])
            out.setdefault(unit, {})[kind_of(key)] = _kl_sum(lb, run.tail(i + 1, hq, w.calls, False))
    return out


@torch.inference_mode()
def attribute_layers(
    model: torch.nn.Module,
    batches: Sequence,
    quantized: Mapping[str, QuantizedTensor],
    *,
    positions: slice | None = None,
    share: float = 0.8,
    kind_layers: int = 3,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> Attribution:
    """Per-unit isolated and cumulative mean KLD, the interaction term, the critical path and the tensor kinds
    of its top layers (module docstring). ``batches``: token windows (1-D or (1, T) int tensors or arrays);
    ``positions``: the rows scored in each window (default all); ``on_progress(stage, i, n)``."""
    if not quantized:
        raise ConfigError("nothing is quantized: give at least one module's quantized weight")
    if not batches:
        raise ConfigError("no token windows: give at least one", option="batches")
    critical_path(["x"], [1.0], share)  # checks share
    t0 = time.perf_counter()
    progress = on_progress or (lambda *a: None)
    positions = positions if positions is not None else slice(None)
    model.eval()
    units = _units(model, quantized)
    run = _Runner(model, quantized, positions)
    sums: dict[str, list[float]] = {u: [0.0, 0.0] for u in units}
    n_steps = len(batches) * len(units)
    windows, n_tokens = [], 0
    try:
        for b, ids in enumerate(batches):
            ids = torch.as_tensor(ids, dtype=torch.int64).reshape(1, -1)
            w = _float_window(run, ids, check=b == 0)
            n_tokens += int(w.base_logits.shape[0])
            stage, done = f"layers, window {b + 1}/{len(batches)}", b * len(units)
            step = _counter(lambda i, s=stage, d=done: progress(s, d + i, n_steps))
            for u, (iso, cum) in _unit_sums(run, ids, w, units, step).items():
                sums[u][0] += iso
                sums[u][1] += cum
            windows.append(w)
        names = list(units)
        cum = [sums[u][1] / n_tokens for u in names]
        inc = [c - p for c, p in zip(cum, [0.0, *cum[:-1]], strict=True)]
        path, path_share = critical_path(names, inc, share)
        top = sorted((u for u in path if _LAYER.match(u)), key=lambda u: -inc[names.index(u)])[:kind_layers]
        kinds: dict[str, dict[str, float]] = {}
        for b, w in enumerate(windows):
            for u, ks in _kind_sums(run, w, units, top).items():
                for k, v in ks.items():
                    kinds.setdefault(u, {})[k] = kinds.get(u, {}).get(k, 0.0) + v / n_tokens
            progress("tensor kinds", b + 1, len(windows))
    finally:
        run.close()
    rows = tuple(
        UnitAttribution(u, tuple(units[u]), sums[u][0] / n_tokens, cum[i], inc[i], kinds.get(u, {}))
        for i, u in enumerate(names)
    )
    total = cum[-1]
    iso_sum = math.fsum(r.isolated for r in rows)
    n_layer = len(run.layers)
    return Attribution(
        units=rows,
        total=total,
        isolated_sum=iso_sum,
        interaction=total - iso_sum,
        share=share,
        critical_path=tuple(path),
        path_share=path_share,
        n_tokens=n_tokens,
        forwards=run.layer_passes / n_layer + len(windows),
        seconds=time.perf_counter() - t0,
    )
