"""Per-layer NF4/FP4/int8/keep plans under a memory budget on tiny seeded models; section 8.1.4's tau rule."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgequant.analysis.torch_plan import (
    DEFAULT_CANDIDATES,
    LayerPlan,
    apply_plan,
    layer_bytes,
    layer_sensitivities,
    linear_layers,
    plan_layers,
    state_bytes,
    threshold_plan,
    weight_sensitivities,
)
from edgequant.errors import ConfigError
from edgequant.nn import (
    FP4Config,
    Int8Config,
    Int8DynamicConfig,
    Linear4bit,
    Linear8bitLt,
    NF4Config,
    quantize_,
)
from edgequant.nn.handlers import handler_for


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.up, self.down = nn.Linear(d, 3 * d), nn.Linear(3 * d, d, bias=False)

    def forward(self, x):
        h = self.ln1(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        att = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
        mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).triu(1)
        x = x + self.o(att.masked_fill(mask, float("-inf")).softmax(-1) @ v)
        return x + self.down(torch.relu(self.up(self.ln2(x))))


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 50, d: int = 48, n_layers: int = 2, tied: bool = False):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        if tied:
            self.head.weight = self.emb.weight

    def forward(self, ids):
        x = self.emb(ids)
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x))


def _lm(tied: bool = False) -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(tied=tied)


def _batches():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 50, (2, 12), generator=g) for _ in range(2)]


def _kl(model, ref_model, batches) -> float:
    with torch.no_grad():
        total = 0.0
        for b in batches:
            lp = torch.log_softmax(ref_model(b).double(), -1)
            lq = torch.log_softmax(model(b).double(), -1)
            total += float((lp.exp() * (lp - lq)).sum(-1).mean())
    return total / len(batches)


@pytest.fixture(scope="module")
def lm_sens():
    model = _lm()
    return layer_sensitivities(model, _batches())


CONFIGS = [
    NF4Config(),
    FP4Config(),
    NF4Config(compress_statistics=False),
    FP4Config(blocksize=128),
    NF4Config(blocksize=32),
    Int8Config(),
    Int8DynamicConfig(),
]


@pytest.mark.parametrize(
    "config",
    CONFIGS,
    ids=lambda c: f"{type(c).__name__}-{getattr(c, 'blocksize', '')}-{getattr(c, 'compress_statistics', '')}",
)
@pytest.mark.parametrize(
    ("shape", "bias", "dtype"),
    [
        ((48, 48), True, torch.float32),
        ((7, 37), False, torch.float32),
        ((300, 130), True, torch.float32),
        ((64, 96), True, torch.bfloat16),
    ],
)
def test_layer_bytes_equal_the_state_dict_of_the_built_module(config, shape, bias, dtype):
    torch.manual_seed(sum(shape))
    linear = nn.Linear(shape[1], shape[0], bias=bias).to(dtype)
    built = handler_for(config).build(config, linear, "x")
    assert layer_bytes(linear, config) == state_bytes(built)
    assert layer_bytes(linear, None) == state_bytes(linear)


def test_layer_bytes_closed_forms():
    linear = nn.Linear(128, 64)  # 8192 weights, blocks of 64 -> 128 absmax
    int8 = 8192 + 4 * 64 + 1 + 4 * 64
    assert layer_bytes(linear, Int8Config()) == int8
    plain = layer_bytes(linear, NF4Config(compress_statistics=False))
    blob = len(b'{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [64, 128]}')
    assert plain == 4096 + 64 + 4 * 128 + blob + 4 * 64
    assert layer_bytes(linear, None) == 4 * 8192 + 4 * 64


def test_sensitivities_measure_one_layer_at_a_time_and_restore_the_model(lm_sens):
    model, batches = _lm(), _batches()
    before = [model(b) for b in batches]
    sens = layer_sensitivities(
        model, batches, layers=["blocks.0.q", "head"], candidates={"nf4": NF4Config(), "keep": None}
    )
    assert set(sens) == {"blocks.0.q", "head"}
    assert all(sens[n]["keep"] == 0.0 for n in sens)
    assert all(sens[n]["nf4"] > 0 for n in sens)
    assert sens["head"]["nf4"] == pytest.approx(lm_sens["head"]["nf4"], rel=1e-12)
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))
    assert all(torch.equal(a, model(b)) for a, b in zip(before, batches, strict=True))
    # the measured value is the KL of the model with that layer alone quantized (closed form, computed here)
    ref = _lm()
    quantize_(model, NF4Config(include=("head",), skip_modules=()))
    assert sens["head"]["nf4"] == pytest.approx(_kl(model, ref, batches), rel=1e-12)


def test_int8_is_less_sensitive_than_4bit(lm_sens):
    assert len(lm_sens) == 13
    for row in lm_sens.values():
        assert row["int8"] < min(row["nf4"], row["fp4"])


def test_plan_respects_the_budget_and_more_budget_never_predicts_more_loss(lm_sens):
    model = _lm()
    names = linear_layers(model)
    lo = sum(min(layer_bytes(model.get_submodule(n), c) for c in DEFAULT_CANDIDATES.values()) for n in names)
    hi = sum(layer_bytes(model.get_submodule(n), None) for n in names)
    previous = float("inf")
    for k in range(9):
        budget = lo + (hi - lo) * k // 8
        plan = plan_layers(model, None, budget, sensitivities=lm_sens)
        assert plan.bytes <= budget
        assert plan.bytes == sum(plan.costs[n][c] for n, c in plan.choices.items())
        assert plan.predicted_loss == pytest.approx(sum(lm_sens[n][c] for n, c in plan.choices.items()))
        assert plan.predicted_loss <= previous + 1e-15
        previous = plan.predicted_loss
    assert set(plan.choices.values()) == {"keep"}
    assert plan.predicted_loss == 0.0
    with pytest.raises(ConfigError, match=f"feasible budgets are {lo} .. {hi}"):
        plan_layers(model, None, lo - 1, sensitivities=lm_sens)


def test_applied_plan_has_the_chosen_kinds_and_bytes(lm_sens):
    model, ref, batches = _lm(), _lm(), _batches()
    names = linear_layers(model)
    hi = sum(layer_bytes(model.get_submodule(n), None) for n in names)
    plan = plan_layers(model, batches, hi // 3, sensitivities=lm_sens)
    assert len(set(plan.choices.values())) >= 2
    reports = apply_plan(model, plan)
    kinds = {"nf4": (Linear4bit, "nf4"), "fp4": (Linear4bit, "fp4"), "int8": (Linear8bitLt, None)}
    for name, cand in plan.choices.items():
        mod = model.get_submodule(name)
        if cand == "keep":
            assert type(mod) is nn.Linear
        else:
            assert type(mod) is kinds[cand][0]
            assert getattr(mod, "quant_type", None) == kinds[cand][1]
            assert name in reports[cand].quantized
        assert state_bytes(mod) == plan.costs[name][cand]
    assert sum(state_bytes(model.get_submodule(n)) for n in names) == plan.bytes <= hi // 3
    measured = _kl(model, ref, batches)
    assert measured > 0  # the additive prediction is a model of this, not equal to it
    assert plan.predicted_loss > 0


def test_full_budget_plan_is_lossless_and_small_budget_is_not(lm_sens):
    model, ref, batches = _lm(), _lm(), _batches()
    names = linear_layers(model)
    hi = sum(layer_bytes(model.get_submodule(n), None) for n in names)
    apply_plan(model, plan_layers(model, None, hi, sensitivities=lm_sens))
    assert _kl(model, ref, batches) == 0.0
    lo = sum(min(layer_bytes(ref.get_submodule(n), c) for c in DEFAULT_CANDIDATES.values()) for n in names)
    small = plan_layers(ref, None, lo, sensitivities=lm_sens)
    assert set(small.choices.values()) <= {"nf4", "fp4"}
    apply_plan(model := _lm(), small)
    assert _kl(model, _lm(), batches) > 0


def test_tied_head_is_not_planned():
    assert "head" not in linear_layers(_lm(tied=True))
    assert "head" in linear_layers(_lm())


def test_mse_and_callable_loss_on_an_mlp():
    torch.manual_seed(3)
    mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 4))
    xs = [torch.randn(8, 16) for _ in range(3)]
    cands = {"nf4": NF4Config(), "int8": Int8Config(), "keep": None}
    mse = layer_sensitivities(mlp, xs, candidates=cands, loss="mse")

    def user(out, ref, batch):
        return float(((out - ref) ** 2).double().mean()) + 1.0  # the constant cancels in the increase

    custom = layer_sensitivities(mlp, xs, candidates=cands, loss=user)
    for name in mse:
        for c in cands:
            assert custom[name][c] == pytest.approx(mse[name][c], rel=1e-6, abs=1e-12)
    budget = sum(layer_bytes(mlp.get_submodule(n), Int8Config()) for n in mse)
    plan = plan_layers(mlp, xs, budget, candidates=cands, loss="mse")
    assert plan.bytes <= budget
    assert isinstance(plan, LayerPlan)


def test_tau_rule_is_the_simple_case():
    """Section 8.1.4: FP16 (here: keep the layer's dtype) when sensitivity > tau, else INT8."""
    assert threshold_plan({"a": 0.5, "b": 0.1, "c": 0.2}, 0.2) == {"a": "keep", "b": "int8", "c": "int8"}
    model = _lm()
    sens = weight_sensitivities(model)
    # the chapter's sensitivity is quantize_'s relative weight error under int8
    report = quantize_(copy.deepcopy(model), Int8Config(skip_modules=()))
    assert sens == pytest.approx(report.quantized, rel=1e-12)
    tau = sorted(sens.values())[len(sens) // 2]
    plan = threshold_plan(sens, tau)
    apply_plan(model, plan)
    for name, s in sens.items():
        assert type(model.get_submodule(name)) is (nn.Linear if s > tau else Linear8bitLt)
    assert set(threshold_plan(sens, 1e9).values()) == {"int8"}
    assert set(threshold_plan(sens, -1.0).values()) == {"keep"}
    with pytest.raises(ConfigError, match="tau"):
        threshold_plan(sens, float("nan"))


def test_bad_plans_and_options_are_config_errors(lm_sens):
    model = _lm()
    with pytest.raises(ConfigError, match="'nope' is not a module"):
        apply_plan(model, {"nope": "nf4"})
    with pytest.raises(ConfigError, match="candidate 'q2'"):
        apply_plan(model, {"head": "q2"})
    with pytest.raises(ConfigError, match=r"is a LayerNorm, not an nn\.Linear"):
        apply_plan(model, {"norm": "int8"})
    with pytest.raises(ConfigError, match="loss='nll'"):
        layer_sensitivities(model, _batches(), loss="nll")
    with pytest.raises(ConfigError, match="batches is empty"):
        layer_sensitivities(model, [])
    with pytest.raises(ConfigError, match="no value for layer"):
        plan_layers(model, None, 10**9, sensitivities={"head": lm_sens["head"]})
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))
