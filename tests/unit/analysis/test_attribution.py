"""edgequant.analysis.attribution on a tiny llama built here: the increments telescope to the full model's KLD
(computed independently by the model's own forward), quantizing nothing gives 0, an exact layer adds 0, the
isolated and per-kind values equal single-configuration forwards, the critical path's closed form."""

from __future__ import annotations

import pytest
import torch

from edgequant.analysis.attribution import (
    EMBD,
    OUTPUT,
    QuantizedTensor,
    attribute_layers,
    critical_path,
    kind_of,
)
from edgequant.analysis.propagation import swapped_weights
from edgequant.errors import ConfigError

POS = slice(12, 23)  # llama-perplexity's scored rows of a 24-token window


def _model(tied: bool = False, n_layer: int = 3):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=n_layer,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(cfg).float().eval()


def _round(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x * 16) / 16


def _quantized(model, scale: float = 0.03, seed: int = 1, exact: tuple[str, ...] = ()) -> dict:
    """Every matrix perturbed by seeded noise (relative ``scale``) with rounded inputs; ``exact``: prefixes of
    module names left at their float value with no rounding."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, (torch.nn.Linear, torch.nn.Embedding)):
            continue
        w = mod.weight.detach().clone()
        if any(name.startswith(p) for p in exact):
            out[name] = QuantizedTensor(w)
            continue
        noise = torch.randn(w.shape, generator=g) * scale * float(w.std())
        out[name] = QuantizedTensor(w + noise, None if isinstance(mod, torch.nn.Embedding) else _round)
    return out


def _batches(n: int = 2, t: int = 24) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return [torch.randint(0, 96, (t,), generator=g) for _ in range(n)]


@torch.inference_mode()
def _reference_kld(model, batches, quantized: dict, keys) -> float:
    """Mean KL(float || model with ``keys`` quantized) by the model's own forward: weights swapped in place,
    inputs rounded by pre-hooks, KL_t = sum p (log p - log q) in float64."""
    base = [torch.log_softmax(model(input_ids=b.reshape(1, -1)).logits[0, POS].double(), -1) for b in batches]
    hooks = []
    for k in keys:
        f = quantized[k].input_rounding
        if f is not None:
            hooks.append(model.get_submodule(k).register_forward_pre_hook(lambda _m, a, f=f: (f(a[0]),)))
    try:
        with swapped_weights(model, {k: quantized[k].weight for k in keys}):
            total = n = 0
            for b, lb in zip(batches, base, strict=True):
                lq = torch.log_softmax(model(input_ids=b.reshape(1, -1)).logits[0, POS].double(), -1)
                total += float((lb.exp() * (lb - lq)).sum())
                n += lb.shape[0]
    finally:
        for h in hooks:
            h.remove()
    return total / n


def _layer_keys(q: dict, i: int) -> list[str]:
    return [k for k in q if k.startswith(f"model.layers.{i}.")]


def test_increments_telescope_to_the_full_kld():
    model, batches = _model(), _batches()
    q = _quantized(model)
    a = attribute_layers(model, batches, q, positions=POS, kind_layers=1)
    assert [u.name for u in a.units] == [EMBD, "blk.0", "blk.1", "blk.2", OUTPUT]
    full = _reference_kld(model, batches, q, list(q))
    assert full > 1e-4
    assert a.total == pytest.approx(full, rel=1e-6)
    assert sum(u.increment for u in a.units) == pytest.approx(a.total, rel=1e-12, abs=1e-15)
    assert a.units[-1].cumulative == a.total
    assert a.interaction == pytest.approx(a.total - sum(u.isolated for u in a.units), rel=1e-12)
    assert a.n_tokens == 2 * 11
    # C_i equals the model's forward with units 0..i quantized
    c1 = _reference_kld(model, batches, q, ["model.embed_tokens", *_layer_keys(q, 0), *_layer_keys(q, 1)])
    assert a.units[2].cumulative == pytest.approx(c1, rel=1e-6)


def test_isolated_and_kinds_equal_single_forwards():
    model, batches = _model(), _batches()
    q = _quantized(model, exact=("model.layers.0.", "model.layers.2."))
    # only layer 1's ffn_down is far off: it is the top layer and its top kind
    w = q["model.layers.1.mlp.down_proj"].weight
    q["model.layers.1.mlp.down_proj"] = QuantizedTensor(w * 1.5, _round)
    a = attribute_layers(model, batches, q, positions=POS, kind_layers=1)
    by = {u.name: u for u in a.units}
    for i in range(3):
        ref = _reference_kld(model, batches, q, _layer_keys(q, i))
        assert by[f"blk.{i}"].isolated == pytest.approx(ref, rel=1e-6, abs=1e-15)
    assert by[EMBD].isolated == pytest.approx(
        _reference_kld(model, batches, q, ["model.embed_tokens"]), rel=1e-6
    )
    assert by[OUTPUT].isolated == pytest.approx(_reference_kld(model, batches, q, ["lm_head"]), rel=1e-6)
    assert "blk.1" in a.critical_path
    assert by["blk.1"].top_kind == "ffn_down"
    assert set(by["blk.1"].kinds) == {
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    }
    down = _reference_kld(model, batches, q, ["model.layers.1.mlp.down_proj"])
    assert by["blk.1"].kinds["ffn_down"] == pytest.approx(down, rel=1e-6)
    assert all(not by[u].kinds for u in (EMBD, "blk.0", "blk.2", OUTPUT))


def test_quantizing_nothing_gives_zero():
    model, batches = _model(), _batches()
    q = _quantized(model, exact=("",))  # every tensor at its float value, no rounding
    a = attribute_layers(model, batches, q, positions=POS)
    for u in a.units:
        assert (u.isolated, u.cumulative, u.increment) == (0.0, 0.0, 0.0), u.name
    assert a.total == 0.0
    assert a.critical_path == ()
    with pytest.raises(ConfigError, match="nothing is quantized"):
        attribute_layers(model, batches, {})


def test_an_exact_layer_contributes_zero():
    model, batches = _model(), _batches()
    q = _quantized(model, exact=("model.layers.1.",))
    a = attribute_layers(model, batches, q, positions=POS)
    by = {u.name: u for u in a.units}
    assert by["blk.1"].isolated == 0.0
    assert by["blk.1"].increment == 0.0  # C_1 == C_0: the same computation
    assert by["blk.0"].increment > 0
    assert "blk.1" not in a.critical_path


def test_tied_embeddings_total_matches_the_model():
    model, batches = _model(tied=True), _batches()
    q = _quantized(model)
    q["lm_head"] = QuantizedTensor(q["model.embed_tokens"].weight, _round)  # one tensor, as llama.cpp's
    a = attribute_layers(model, batches, q, positions=POS, kind_layers=0)
    assert a.total == pytest.approx(_reference_kld(model, batches, q, list(q)), rel=1e-6)
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)  # restored, still tied


def test_critical_path_closed_form():
    names = ["a", "b", "c", "d"]
    inc = [0.125, 0.5, 0.25, 0.125]
    assert critical_path(names, inc, 0.75) == (["b", "c"], 0.75)
    assert critical_path(names, inc, 0.8) == (["a", "b", "c"], 0.875)  # ties: the earlier unit first
    assert critical_path(names, inc, 1.0) == (names, 1.0)
    assert critical_path(names, [0.0] * 4, 0.8) == ([], 0.0)
    with pytest.raises(ConfigError, match="share"):
        critical_path(names, inc, 0.0)


def test_unknown_module_and_kinds():
    model, batches = _model(), _batches()
    w = model.model.norm.weight.detach()
    with pytest.raises(ConfigError, match=r"model\.norm"):
        attribute_layers(model, batches, {"model.norm": QuantizedTensor(w)})
    assert kind_of("model.layers.3.self_attn.o_proj") == "attn_output"
    assert kind_of("model.layers.3.mlp.gate_proj") == "ffn_gate"
