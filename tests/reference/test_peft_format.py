"""edgequant's LoRA vs peft 0.21.2 on a tiny Llama built in code: adapter files both ways, forward, merge."""

from __future__ import annotations

import os

import pytest
import torch

from edgequant.nn.lora import apply_lora, lora_modules
from edgequant.nn.lora_config import LoraConfig
from edgequant.nn.lora_merge import merge_lora
from edgequant.nn.peft_format import load_peft_adapter, save_peft_adapter


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread (OpenMP hand-offs cost more than these matmuls on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.reference


def _llama(seed=0, hidden=32, intermediate=48):
    cfg = transformers.LlamaConfig(
        vocab_size=96,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


IDS = torch.tensor([[1, 5, 9, 33, 2, 70, 11, 4], [3, 3, 8, 90, 41, 0, 6, 12]])


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_peft_loads_what_edgequant_saves(tmp_path):
    model = _llama()
    cfg = LoraConfig(
        r=4,
        alpha=8,
        dropout=0.1,
        target_modules=["q_proj", "v_proj", "down_proj"],
        rank_pattern={"down_proj": 2},
        alpha_pattern={r"layers\.1\.self_attn\.q_proj": 3},
    )
    apply_lora(model, cfg)
    with torch.no_grad():
        for m in lora_modules(model).values():
            torch.nn.init.normal_(m.lora_B.weight, std=0.1)
    ours = _logits(model.eval())
    save_peft_adapter(model, tmp_path, cfg)
    theirs = peft.PeftModel.from_pretrained(_llama(), str(tmp_path)).eval()
    assert theirs.peft_config["default"].r == 4
    assert theirs.base_model.model.model.layers[1].mlp.down_proj.r["default"] == 2
    assert theirs.base_model.model.model.layers[1].self_attn.q_proj.scaling["default"] == 0.75
    torch.testing.assert_close(_logits(theirs), ours, rtol=0, atol=0)


@pytest.mark.parametrize(
    "options",
    [
        {"target_modules": ["q_proj", "k_proj", "o_proj"]},
        {"target_modules": r".*\.mlp\.(up|gate)_proj", "use_rslora": True},
        {"target_modules": "all-linear", "rank_pattern": {"o_proj": 2}, "alpha_pattern": {"v_proj": 16}},
    ],
)
def test_edgequant_loads_what_peft_saves(tmp_path, options):
    peft_cfg = peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, task_type="CAUSAL_LM", **options)
    torch.manual_seed(7)
    peft_model = peft.get_peft_model(_llama(), peft_cfg).eval()
    theirs = _logits(peft_model)
    peft_model.save_pretrained(str(tmp_path))
    model = _llama()
    load_peft_adapter(model, tmp_path)
    names = {
        n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if hasattr(m, "lora_A")
    }
    assert set(lora_modules(model)) == names
    torch.testing.assert_close(_logits(model), theirs, rtol=0, atol=0)
    # and the same file is written back: peft reads our copy to the same logits
    out = os.path.join(tmp_path, "again")
    save_peft_adapter(model, out, _config_of(tmp_path))
    torch.testing.assert_close(
        _logits(peft.PeftModel.from_pretrained(_llama(), out).eval()), theirs, rtol=0, atol=0
    )


def _config_of(directory):
    from edgequant.nn.peft_format import read_peft_config

    return read_peft_config(directory)


def test_merge_matches_peft_merge_and_unload():
    torch.manual_seed(3)
    peft_model = peft.get_peft_model(
        _llama(),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"], init_lora_weights=False),
    )
    state = {
        k.removeprefix("base_model.model."): v.clone()
        for k, v in peft_model.state_dict().items()
        if "lora_" in k
    }
    merged_theirs = peft_model.merge_and_unload().state_dict()
    model = _llama()
    apply_lora(model, LoraConfig(r=4, alpha=8, target_modules=["q_proj", "up_proj"]))
    with torch.no_grad():
        for name, m in lora_modules(model).items():
            m.lora_A.weight.copy_(state[f"{name}.lora_A.default.weight"])
            m.lora_B.weight.copy_(state[f"{name}.lora_B.default.weight"])
    merge_lora(model)
    merged_ours = model.state_dict()
    assert merged_ours.keys() == merged_theirs.keys()
    for key in merged_ours:
        # PEFT adds the delta to the weight in place; we compute W + delta once: identical in float32
        torch.testing.assert_close(merged_ours[key], merged_theirs[key], rtol=0, atol=0, msg=key)


def _swap_linears(model, make):
    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, make(module))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_qlora_matches_peft_on_bitsandbytes_linear4bit(quant_type):
    """Same tiny Llama, 4-bit base by bnb (PEFT's LoRA on top) and by edgequant (our LoRA): the train-mode
    loss is bit-identical (bnb's CPU train path is dequantize + F.linear, which is edgequant's definition,
    and the packed bytes are equal), every adapter gradient equal to float32 rounding."""
    bnb = pytest.importorskip("bitsandbytes")
    from edgequant.nn import Linear4bit

    def bnb_layer(lin):
        q = bnb.nn.Linear4bit(
            lin.in_features,
            lin.out_features,
            lin.bias is not None,
            compute_dtype=torch.float32,
            compress_statistics=True,
            quant_type=quant_type,
        )
        q.weight = bnb.nn.Params4bit(
            lin.weight.data.clone(), requires_grad=False, quant_type=quant_type, compress_statistics=True
        )
        return q.to("cpu")

    def our_layer(lin):
        # bnb_cpu_compatible: quantize the absmax as bnb's CPU kernel does (65536-step snapping); by default
        # edgequant rounds to the nearest code, which changes a few absmax codes (here in one FP4 layer)
        return Linear4bit.from_linear(
            lin,
            quant_type=quant_type,
            compress_statistics=True,
            compute_dtype=torch.float32,
            bnb_cpu_compatible=True,
        )

    # widths that are multiples of bnb's blocksize 64: on AVX-512 CPUs bnb's native dequantization misindexes
    # rows of 32 or 48 (tests/reference/conftest.py), which would make its loss differ from its own definition
    theirs, ours = _llama(seed=4, hidden=64, intermediate=128), _llama(seed=4, hidden=64, intermediate=128)
    _swap_linears(theirs, bnb_layer)
    _swap_linears(ours, our_layer)
    targets = ["q_proj", "v_proj", "down_proj"]
    torch.manual_seed(5)
    theirs = peft.get_peft_model(
        theirs, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    )
    apply_lora(ours, LoraConfig(r=4, alpha=8, target_modules=targets))
    state = theirs.state_dict()
    with torch.no_grad():
        for name, m in lora_modules(ours).items():
            m.lora_A.weight.copy_(state[f"base_model.model.{name}.lora_A.default.weight"])
            m.lora_B.weight.copy_(state[f"base_model.model.{name}.lora_B.default.weight"])
    theirs.train()
    ours.train()
    loss_theirs = theirs(input_ids=IDS, labels=IDS).loss
    loss_theirs.backward()
    loss_ours = ours(input_ids=IDS, labels=IDS).loss
    loss_ours.backward()
    assert loss_ours.item() == loss_theirs.item()
    grads_theirs = {
        n.removeprefix("base_model.model.").replace(".default", ""): p.grad
        for n, p in theirs.named_parameters()
        if p.requires_grad
    }
    grads_ours = {n: p.grad for n, p in ours.named_parameters() if p.requires_grad}
    assert grads_ours.keys() == grads_theirs.keys()
    assert len(grads_ours) == 12
    for key, g in grads_ours.items():
        # backward matmuls may sum in another order (kernel choice by shape): float32 rounding, accumulated
        ref = grads_theirs[key]
        torch.testing.assert_close(g, ref, rtol=1e-3, atol=1e-3 * ref.abs().max().item(), msg=key)
