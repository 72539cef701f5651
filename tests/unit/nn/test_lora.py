"""LoRA on plain and quantized Linear layers: selection, forward, gradients, checkpointing (tiny models)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from edgequant.errors import ConfigError
from edgequant.nn.lora import (
    FrozenQuantizedLinear,
    LoraLinear,
    apply_lora,
    lora_modules,
    lora_parameters,
    lora_state_dict,
    select_lora_targets,
)
from edgequant.nn.lora_checkpoint import enable_gradient_checkpointing
from edgequant.nn.lora_config import LoraConfig


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread (OpenMP hand-offs cost more than these matmuls on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Int8RowLinear(nn.Module):
    """Test double of a quantized Linear: int8 rows, a float scale; ``dequantize()`` gives the weight."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach()
        scale = w.abs().amax(dim=1, keepdim=True) / 127
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("q", torch.round(w / scale).to(torch.int8))
        self.register_buffer("scale", scale)
        self.bias = nn.Parameter(linear.bias.detach().clone())
        self.forward_calls = 0

    def dequantize(self) -> torch.Tensor:
        return self.q.float() * self.scale

    def forward(self, x):
        self.forward_calls += 1
        return nn.functional.linear(x, self.dequantize(), self.bias)


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.q_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x):
        h = self.norm(x)
        h = x + self.q_proj(h) * torch.sigmoid(self.v_proj(h))
        return h + self.down(torch.relu(self.up(h)))


class TinyNet(nn.Module):
    def __init__(self, width: int = 16, depth: int = 2):
        super().__init__()
        self.embed = nn.Embedding(32, width)
        self.layers = nn.ModuleList(Block(width) for _ in range(depth))
        self.lm_head = nn.Linear(width, 32, bias=False)

    def forward(self, ids):
        h = self.embed(ids)
        for layer in self.layers:
            h = layer(h)
        return self.lm_head(h)


def _net(seed=0, **kw):
    torch.manual_seed(seed)
    return TinyNet(**kw)


def _randomize_b(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.1)


# -- config ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"r": 0}, "LoraConfig.r"),
        ({"r": True}, "LoraConfig.r"),
        ({"alpha": float("nan")}, "alpha"),
        ({"dropout": 1.0}, "dropout"),
        ({"target_modules": ()}, "target_modules"),
        ({"target_modules": "q_proj("}, "regular expression"),
        ({"init": "pissa"}, "init"),
        ({"rank_pattern": {"q_proj": 0}}, "rank_pattern['q_proj']"),
    ],
)
def test_config_rejects_bad_values(kwargs, fragment):
    with pytest.raises(ConfigError, match=re_escape(fragment)):
        LoraConfig(**kwargs)


def re_escape(s):
    import re

    return re.escape(s)


def test_config_is_frozen_and_lists_become_sorted_tuples():
    cfg = LoraConfig(target_modules=["v_proj", "q_proj"])
    assert cfg.target_modules == ("q_proj", "v_proj")
    with pytest.raises(AttributeError):
        cfg.r = 4


def test_selection_follows_peft_rules():
    model = _net()
    names = select_lora_targets(model, LoraConfig(target_modules=["q_proj", "up"]))
    assert names == ["layers.0.q_proj", "layers.0.up", "layers.1.q_proj", "layers.1.up"]
    # a string is a full-match regex, not a suffix
    assert select_lora_targets(model, LoraConfig(target_modules=r"layers\.1\..*_proj")) == [
        "layers.1.q_proj",
        "layers.1.v_proj",
    ]
    with pytest.raises(ConfigError, match="matches target_modules"):
        select_lora_targets(model, LoraConfig(target_modules="q_proj"))
    # all-linear skips the output layer; exclude wins
    names = select_lora_targets(model, LoraConfig(target_modules="all-linear", exclude_modules=["down"]))
    assert "lm_head" not in names
    assert not any(n.endswith("down") for n in names)
    assert len(names) == 6


def test_selection_refuses_non_linear_leaf():
    with pytest.raises(ConfigError, match=r"'layers.0.norm' is a LayerNorm"):
        select_lora_targets(_net(), LoraConfig(target_modules=["norm"]))


def test_rank_and_alpha_patterns_and_rslora():
    model = _net()
    cfg = LoraConfig(
        r=4,
        alpha=8,
        target_modules=["q_proj", "v_proj"],
        rank_pattern={"v_proj": 2},
        alpha_pattern={r"layers\.1\.q_proj": 3},
    )
    apply_lora(model, cfg)
    mods = lora_modules(model)
    assert mods["layers.0.v_proj"].r == 2
    assert mods["layers.0.v_proj"].scaling == 4.0
    assert mods["layers.0.q_proj"].r == 4
    assert mods["layers.0.q_proj"].scaling == 2.0
    assert mods["layers.1.q_proj"].scaling == 0.75
    model = _net()
    apply_lora(model, LoraConfig(r=4, alpha=8, target_modules=["q_proj"], use_rslora=True))
    assert lora_modules(model)["layers.0.q_proj"].scaling == 8 / math.sqrt(4)


# -- forward / training ----------------------------------------------------------------------------------


def test_fresh_adapter_leaves_the_model_unchanged_and_only_lora_trains():
    model = _net()
    ids = torch.randint(0, 32, (2, 5))
    ref = model(ids)
    names = apply_lora(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert len(names) == 4
    assert torch.equal(model(ids), ref)  # B = 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{ab}.weight" for n in names for ab in "AB"}
    assert set(lora_state_dict(model)) == trainable
    with pytest.raises(ConfigError, match="already has LoRA"):
        apply_lora(model, LoraConfig(target_modules=["q_proj"]))


def test_forward_is_base_plus_scaled_low_rank_update():
    torch.manual_seed(0)
    base = nn.Linear(12, 7)
    layer = LoraLinear(base, r=3, alpha=6)
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(4, 12)
    expected = base(x) + (x @ layer.lora_A.weight.T @ layer.lora_B.weight.T) * 2.0
    torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        layer.delta_weight(), layer.lora_B.weight @ layer.lora_A.weight * 2.0, rtol=0, atol=0
    )


def test_dropout_only_on_the_adapter_path():
    torch.manual_seed(0)
    layer = LoraLinear(nn.Linear(8, 8), r=2, alpha=2, dropout=0.5, init="zeros")
    x = torch.randn(3, 8)
    layer.train()
    torch.testing.assert_close(layer(x), layer.base_layer(x))  # zero adapter: dropout cannot show
    nn.init.normal_(layer.lora_A.weight)
    nn.init.normal_(layer.lora_B.weight)
    assert not torch.equal(layer(x), layer(x))  # two dropout masks
    layer.eval()
    assert torch.equal(layer(x), layer(x))


def test_training_lowers_the_loss():
    model = _net(width=16)
    apply_lora(model, LoraConfig(r=4, alpha=8, target_modules="all-linear"))
    opt = torch.optim.AdamW(lora_parameters(model), lr=1e-2)
    ids = torch.randint(0, 32, (4, 9), generator=torch.Generator().manual_seed(3))
    losses = []
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    for _ in range(20):
        logits = model(ids[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, 32), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


# -- quantized base --------------------------------------------------------------------------------------


def _quantize_linears(model, skip=("lm_head",)):
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and name.split(".")[-1] not in skip:
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2], Int8RowLinear(module))


def test_gradients_flow_through_dequantized_weights():
    """QLoRA: the same adapter gradients as the float model whose weights are the dequantized ones."""
    quant = _net(seed=5)
    _quantize_linears(quant)
    floatm = _net(seed=5)
    for name, module in quant.named_modules():
        if isinstance(module, Int8RowLinear):
            with torch.no_grad():
                floatm.get_submodule(name).weight.copy_(module.dequantize())
    cfg = LoraConfig(r=4, alpha=8, target_modules=["q_proj", "down"])
    for m in (quant, floatm):
        torch.manual_seed(11)
        apply_lora(m, cfg)
        _randomize_b(m)
    ids = torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(4))
    grads = []
    for m in (quant, floatm):
        loss = m(ids).square().mean()
        loss.backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    assert len(grads[0]) == 8
    for n in grads[0]:
        # same math, different op order (dequantized matmul in backward vs autograd's): float32 rounding only
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6, msg=n)
    assert all(p.grad is None for n, p in quant.named_parameters() if not p.requires_grad)


def test_frozen_quantized_linear_saves_no_weight_and_matches_autograd():
    torch.manual_seed(0)
    q = Int8RowLinear(nn.Linear(10, 6))
    x = torch.randn(3, 10, requires_grad=True)
    y = FrozenQuantizedLinear.apply(x, q)
    assert y.grad_fn.saved_tensors == ()  # no float weight (nor x) kept for backward
    gy = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, gy)
    x2 = x.detach().requires_grad_(True)
    (gx2,) = torch.autograd.grad(nn.functional.linear(x2, q.dequantize(), q.bias), x2, gy)
    torch.testing.assert_close(gx, gx2, rtol=1e-6, atol=1e-6)


# -- gradient checkpointing ------------------------------------------------------------------------------


def test_checkpointing_gives_the_same_gradients_and_reruns_blocks():
    grads = []
    calls = []
    for use_ckpt in (False, True):
        model = _net(seed=2)
        _quantize_linears(model)
        torch.manual_seed(1)
        apply_lora(model, LoraConfig(r=2, alpha=4, target_modules=["q_proj", "v_proj"]))
        _randomize_b(model)
        if use_ckpt:
            assert enable_gradient_checkpointing(model) == 2
        ids = torch.arange(12).reshape(2, 6)
        model(ids).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        calls.append(model.layers[0].up.forward_calls)
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=0, atol=0, msg=n)
    assert calls == [1, 2]  # the checkpointed block ran its forward again in backward


def test_checkpointing_needs_blocks():
    with pytest.raises(ConfigError, match=r"no nn\.ModuleList"):
        enable_gradient_checkpointing(nn.Sequential(nn.Linear(2, 2)))


# -- edgequant's own quantized layers -----------------------------------------------------------------------


def _edgequant_quantized(kind: str, seed: int = 5):
    from edgequant.nn import FP4Config, Int8Config, NF4Config, quantize_

    config = {"nf4": NF4Config(), "fp4": FP4Config(), "int8": Int8Config()}[kind]
    model = _net(seed=seed, width=64)
    report = quantize_(model, config)
    assert len(report.quantized) == 8
    return model


@pytest.mark.parametrize("kind", ["nf4", "fp4"])
def test_qlora_on_linear4bit_has_the_gradients_of_the_dequantized_float_model(kind):
    quant = _edgequant_quantized(kind)
    floatm = _net(seed=5, width=64)
    with torch.no_grad():
        for name, module in quant.named_modules():
            if hasattr(module, "dequantize") and not isinstance(module, nn.Linear):
                floatm.get_submodule(name).weight.copy_(module.dequantize())
    for m in (quant, floatm):
        torch.manual_seed(11)
        apply_lora(m, LoraConfig(r=4, alpha=8, target_modules=["q_proj", "down"]))
        _randomize_b(m)
        m.train()
    ids = torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(4))
    grads = []
    for m in (quant, floatm):
        m(ids).square().mean().backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_lora_trains_on_a_frozen_quantized_base(kind):
    model = _edgequant_quantized(kind)
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, LoraConfig(r=4, alpha=8, target_modules="all-linear"))
    model.train()
    opt = torch.optim.AdamW(lora_parameters(model), lr=1e-2)
    ids = torch.randint(0, 32, (4, 9), generator=torch.Generator().manual_seed(3))
    losses = []
    for _ in range(15):
        loss = nn.functional.cross_entropy(model(ids[:, :-1]).reshape(-1, 32), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    after = model.state_dict()
    for key, value in frozen.items():  # the quantized base (packed weights, states, biases) did not move
        new_key = next(k for k in after if k.replace(".base_layer", "") == key)
        assert torch.equal(after[new_key], value), key


def test_checkpointing_a_transformers_model():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        use_cache=False,
    )
    ids = torch.arange(20).reshape(2, 10)
    grads = []
    for use_ckpt in (False, True):
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(cfg)
        apply_lora(model, LoraConfig(r=2, alpha=4, target_modules=["q_proj", "up_proj"]))
        _randomize_b(model)
        if use_ckpt:
            assert enable_gradient_checkpointing(model) == -1
            assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert len(grads[1]) == 8
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=0, atol=0, msg=n)
