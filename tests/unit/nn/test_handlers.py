"""nn.handlers: one handler per config type serves quantize_, checkpoint loading and transformers' config."""

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from edgequant.errors import ConfigError, FormatError
from edgequant.nn import (
    FP4Config,
    Int8Config,
    Int8DynamicConfig,
    Int8DynamicLinear,
    Linear4bit,
    Linear8bitLt,
    NF4Config,
    quantize_,
    transformers_quantization_config,
)
from edgequant.nn.handlers import handler_for, handler_for_checkpoint


@pytest.mark.parametrize(
    ("config", "layer"),
    [
        (NF4Config(), Linear4bit),
        (FP4Config(), Linear4bit),
        (Int8Config(), Linear8bitLt),
        (Int8DynamicConfig(), Int8DynamicLinear),
    ],
)
def test_each_config_builds_its_layer_and_the_layer_is_found_in_its_state_dict(config, layer):
    handler = handler_for(config)
    built = handler.build(config, nn.Linear(64, 16), "blk.0")
    assert type(built) is layer
    assert built.layer_name == "blk.0"
    tensors = {"blk.0." + k: v for k, v in built.state_dict().items()}
    assert handler_for_checkpoint(tensors, "blk.0.") is handler
    assert handler_for_checkpoint({"blk.0.weight": torch.zeros(16, 64)}, "blk.0.") is None


def test_unknown_config_names_the_known_ones():
    with pytest.raises(
        ConfigError, match=r"quantize_: config must be one of NF4Config, FP4Config, .*got dict"
    ):
        quantize_(nn.Sequential(nn.Linear(8, 8)), {"bits": 4})


def test_a_subclass_of_a_config_uses_its_base_handler():
    @dataclass(frozen=True)
    class MyNF4(NF4Config):
        pass

    assert handler_for(MyNF4()) is handler_for(NF4Config())


def test_transformers_entries():
    assert transformers_quantization_config(NF4Config(skip_modules=()))["llm_int8_skip_modules"] is None
    entry = transformers_quantization_config(FP4Config(compress_statistics=False))
    assert (entry["bnb_4bit_quant_type"], entry["bnb_4bit_use_double_quant"]) == ("fp4", False)
    assert transformers_quantization_config(Int8Config(threshold=3.0))["llm_int8_threshold"] == 3.0
    for config in (Int8DynamicConfig(), object()):
        with pytest.raises(FormatError, match="has no bitsandbytes/transformers equivalent"):
            transformers_quantization_config(config)
