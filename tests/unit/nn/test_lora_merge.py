"""Merging LoRA into the base (plain and quantized) and the float safetensors export."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from edgequant.errors import ConfigError, NonFiniteError
from edgequant.nn.lora import apply_lora, lora_modules
from edgequant.nn.lora_config import LoraConfig
from edgequant.nn.lora_merge import merge_lora, merged_state_dict, save_merged_safetensors


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread (OpenMP hand-offs cost more than these matmuls on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Int8RowLinear(nn.Module):
    """Test double of a quantized Linear (int8 rows + scale) exposing ``dequantize()``."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach()
        scale = w.abs().amax(dim=1, keepdim=True) / 127
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("q", torch.round(w / scale).to(torch.int8))
        self.register_buffer("scale", scale)
        self.bias = nn.Parameter(linear.bias.detach().clone()) if linear.bias is not None else None

    def dequantize(self) -> torch.Tensor:
        return self.q.float() * self.scale

    def forward(self, x):
        return nn.functional.linear(x, self.dequantize(), self.bias)


class TiedNet(nn.Module):
    """Embedding tied to the output layer, two linears, a persistent and a non-persistent buffer."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.body = nn.ModuleDict({"q_proj": nn.Linear(8, 8), "o_proj": nn.Linear(8, 8, bias=False)})
        self.lm_head = nn.Linear(8, 20, bias=False)
        self.lm_head.weight = self.embed.weight
        self.register_buffer("gain", torch.full((8,), 1.5))
        self.register_buffer("cache", torch.zeros(3), persistent=False)

    def forward(self, ids):
        h = self.embed(ids) * self.gain
        h = self.body["o_proj"](torch.tanh(self.body["q_proj"](h)))
        return self.lm_head(h)


def _adapted(quantized: bool, seed: int = 0) -> TiedNet:
    torch.manual_seed(seed)
    model = TiedNet()
    if quantized:
        for name in ("q_proj", "o_proj"):
            model.body[name] = Int8RowLinear(model.body[name])
    apply_lora(model, LoraConfig(r=2, alpha=4, target_modules=["q_proj", "o_proj"]))
    with torch.no_grad():
        for m in lora_modules(model).values():
            nn.init.normal_(m.lora_B.weight, std=0.2)
    return model


@pytest.mark.parametrize("quantized", [False, True])
def test_merge_keeps_the_output(quantized):
    model = _adapted(quantized)
    ids = torch.arange(10).reshape(2, 5)
    before = model(ids)
    assert merge_lora(model) == ["body.q_proj", "body.o_proj"]
    assert not lora_modules(model)
    assert all(type(model.body[n]) is nn.Linear for n in ("q_proj", "o_proj"))
    torch.testing.assert_close(model(ids), before, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="no LoRA adapters"):
        merge_lora(model)


@pytest.mark.parametrize("quantized", [False, True])
def test_merged_state_dict_has_the_plain_model_keys_and_loads(quantized, tmp_path):
    model = _adapted(quantized)
    ids = torch.arange(10).reshape(2, 5)
    expected = model(ids)
    sd = merged_state_dict(model)
    plain = TiedNet()
    # tied lm_head.weight is kept once (as embed.weight); the non-persistent buffer is not saved
    assert set(sd) == set(plain.state_dict()) - {"lm_head.weight"}
    path = os.path.join(tmp_path, "merged.safetensors")
    names = save_merged_safetensors(model, path)
    assert sorted(names) == sorted(sd)
    loaded = load_file(path)
    missing, unexpected = plain.load_state_dict(loaded, strict=False)
    assert missing == ["lm_head.weight"]
    assert unexpected == []
    torch.testing.assert_close(plain(ids), expected, rtol=1e-5, atol=1e-5)
    assert os.listdir(tmp_path) == ["merged.safetensors"]  # no temp file left
    half = merged_state_dict(model, dtype=torch.bfloat16)
    assert half["body.q_proj.weight"].dtype == torch.bfloat16
    assert half["embed.weight"].dtype == torch.bfloat16


def test_non_finite_merge_is_refused_and_names_the_layer():
    model = _adapted(False)
    with torch.no_grad():
        lora_modules(model)["body.o_proj"].lora_B.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"body\.o_proj"):
        merge_lora(model)
    assert len(lora_modules(model)) == 2  # nothing replaced
    with pytest.raises(NonFiniteError, match=r"body\.o_proj"):
        merged_state_dict(model)
