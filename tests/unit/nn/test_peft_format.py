"""PEFT adapter files written and read by edgequant alone (the peer check with peft is tests/reference)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from edgequant.errors import ConfigError, FormatError, ShapeError
from edgequant.nn.lora import apply_lora, lora_modules
from edgequant.nn.lora_config import LoraConfig
from edgequant.nn.peft_format import load_peft_adapter, read_peft_config, save_peft_adapter


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread (OpenMP hand-offs cost more than these matmuls on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Attn(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width // 2, bias=False)
        self.v_proj = nn.Linear(width, width // 2, bias=False)

    def forward(self, x):
        return self.q_proj(x) + torch.cat([self.k_proj(x), self.v_proj(x)], -1)


class Net(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.layers = nn.ModuleList(Attn(width) for _ in range(2))
        self.lm_head = nn.Linear(width, 5, bias=False)

    def forward(self, x):
        for layer in self.layers:
            x = x + layer(x)
        return self.lm_head(x)


def _base(seed=0):
    torch.manual_seed(seed)
    return Net()


CFG = LoraConfig(
    r=2, alpha=6, target_modules=["q_proj", "v_proj"], rank_pattern={"v_proj": 3}, use_rslora=True
)


def _saved(tmp_path, cfg=CFG):
    model = _base()
    apply_lora(model, cfg)
    with torch.no_grad():
        for m in lora_modules(model).values():
            nn.init.normal_(m.lora_B.weight)
    directory = os.path.join(tmp_path, "adapter")
    save_peft_adapter(model, directory, cfg, base_model_name_or_path="tiny-net")
    return model, directory


def test_round_trip(tmp_path):
    model, directory = _saved(tmp_path)
    assert sorted(os.listdir(directory)) == ["adapter_config.json", "adapter_model.safetensors"]
    tensors = load_file(os.path.join(directory, "adapter_model.safetensors"))
    assert tensors["base_model.model.layers.1.v_proj.lora_A.weight"].shape == (3, 8)
    assert tensors["base_model.model.layers.0.q_proj.lora_B.weight"].shape == (8, 2)
    assert len(tensors) == 8
    cfg = json.load(open(os.path.join(directory, "adapter_config.json")))
    assert cfg["peft_type"] == "LORA"
    assert cfg["r"] == 2
    assert cfg["lora_alpha"] == 6
    assert cfg["use_rslora"] is True
    assert cfg["target_modules"] == ["q_proj", "v_proj"]
    assert cfg["rank_pattern"] == {"v_proj": 3}
    assert read_peft_config(directory) == CFG
    fresh = _base()
    assert load_peft_adapter(fresh, directory) == CFG
    x = torch.randn(3, 8)
    assert torch.equal(fresh(x), model(x))


def test_all_linear_is_written_as_the_wrapped_names(tmp_path):
    _, directory = _saved(tmp_path, LoraConfig(r=2, target_modules="all-linear"))
    cfg = json.load(open(os.path.join(directory, "adapter_config.json")))
    assert len(cfg["target_modules"]) == 6
    assert "lm_head" not in cfg["target_modules"]
    fresh = _base()
    load_peft_adapter(fresh, directory)
    assert len(lora_modules(fresh)) == 6


def _edit_config(directory, **changes):
    path = os.path.join(directory, "adapter_config.json")
    cfg = json.load(open(path))
    cfg.update(changes)
    json.dump(cfg, open(path, "w"))


@pytest.mark.parametrize(
    ("changes", "error", "fragment"),
    [
        ({"use_dora": True}, ConfigError, "use_dora=True is not supported"),
        ({"fan_in_fan_out": True}, ConfigError, "fan_in_fan_out"),
        ({"modules_to_save": ["lm_head"]}, ConfigError, "modules_to_save"),
        ({"bias": "all"}, ConfigError, "bias='all'"),
        ({"peft_type": "IA3"}, ConfigError, "only LORA"),
        ({"r": 0}, ConfigError, "adapter_config.json: LoraConfig.r"),
        ({"target_modules": ["k_proj", "v_proj"]}, FormatError, "missing"),
        ({"rank_pattern": {}}, ShapeError, "layers.0.v_proj.lora_A.weight"),
    ],
)
def test_bad_config_is_refused_and_the_model_is_untouched(tmp_path, changes, error, fragment):
    _, directory = _saved(tmp_path)
    _edit_config(directory, **changes)
    fresh = _base()
    with pytest.raises(error, match=fragment.replace("[", r"\[").replace("(", r"\(")):
        load_peft_adapter(fresh, directory)
    assert not lora_modules(fresh)


def test_bad_weight_files(tmp_path):
    _, directory = _saved(tmp_path)
    weights = os.path.join(directory, "adapter_model.safetensors")
    tensors = load_file(weights)
    tensors["base_model.model.layers.0.k_proj.lora_A.weight"] = torch.zeros(2, 8)
    save_file(tensors, weights)
    with pytest.raises(FormatError, match=r"1 unexpected \(first 'base_model.model.layers.0.k_proj"):
        load_peft_adapter(_base(), directory)
    tensors.pop("base_model.model.layers.0.k_proj.lora_A.weight")
    tensors["base_model.model.layers.0.q_proj.lora_A.weight"][0, 0] = float("inf")
    save_file(tensors, weights)
    with pytest.raises(FormatError, match=r"q_proj\.lora_A\.weight' is not finite"):
        load_peft_adapter(_base(), directory)
    with open(weights, "wb") as f:
        f.write(b"garbage")
    with pytest.raises(FormatError, match="not a readable safetensors"):
        load_peft_adapter(_base(), directory)
    os.remove(weights)
    with open(os.path.join(directory, "adapter_model.bin"), "wb") as f:
        f.write(b"\x80\x04pickle")
    with pytest.raises(ConfigError, match="does not unpickle"):
        load_peft_adapter(_base(), directory)
    with pytest.raises(ConfigError, match="not a PEFT adapter directory"):
        load_peft_adapter(_base(), tmp_path)


def test_save_without_adapters_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no LoRA adapters"):
        save_peft_adapter(_base(), tmp_path, CFG)


def test_adapter_of_the_float_model_loads_onto_its_4bit_base(tmp_path):
    """QLoRA inference: an adapter saved for the float model applies unchanged to the NF4-quantized model."""
    from edgequant.nn import NF4Config, quantize_

    model, directory = _saved(tmp_path)
    quantized = _base()
    quantize_(quantized, NF4Config(blocksize=32))
    load_peft_adapter(quantized, directory)
    mods = lora_modules(quantized)
    assert len(mods) == 4
    assert all(type(m.base_layer).__name__ == "Linear4bit" for m in mods.values())
    x = torch.randn(3, 8)
    with torch.no_grad():
        for name, m in mods.items():
            ref = m.base_layer(x) + x @ lora_modules(model)[name].delta_weight().T
            torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-6)
