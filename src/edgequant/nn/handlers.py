"""One handler per config type: the single place that knows which layer a config makes (torchao's pattern).

A handler answers the three questions asked about a layer kind:

- ``build(config, linear, name)``: the quantized layer ``quantize_`` puts in place of ``linear``;
- ``in_checkpoint(tensors, prefix)`` / ``build_for_checkpoint(linear, name, tensors, prefix)``: whether a
  checkpoint's keys under ``prefix`` are this layer's layout, and the layer to load them into when the file
  carries no edgequant config (bitsandbytes / transformers checkpoints);
- ``transformers_entry(config)``: the ``quantization_config`` of a transformers ``config.json``.

Register a handler with ``@register_handler(ConfigType, ...)``; look one up with ``handler_for(config)`` or
``handler_for_checkpoint(tensors, prefix)``. Nothing else in ``nn/`` branches on config or layer kinds.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from edgequant.errors import ConfigError, FormatError
from edgequant.nn.configs import FP4Config, Int8Config, Int8DynamicConfig, NF4Config
from edgequant.nn.int8_dynamic import Int8DynamicLinear
from edgequant.nn.linear4bit import Linear4bit
from edgequant.nn.linear8bit import Linear8bitLt

_HANDLERS: dict[type, LayerHandler] = {}


class LayerHandler:
    """Base of the handlers; a subclass sets ``layer`` and overrides what its layer kind supports."""

    layer: type[nn.Module]

    def build(self, config, linear: nn.Linear, name: str) -> nn.Module:
        raise NotImplementedError

    def in_checkpoint(self, tensors: Mapping[str, torch.Tensor], prefix: str) -> bool:
        raise NotImplementedError

    def build_for_checkpoint(
        self, linear: nn.Linear, name: str, tensors: Mapping[str, torch.Tensor], prefix: str
    ) -> nn.Module:
        return self.layer.from_linear(linear, name=name)

    def transformers_entry(self, config) -> dict:
        raise FormatError(f"{type(config).__name__} has no bitsandbytes/transformers equivalent")


def register_handler(*config_types: type):
    """Class decorator: one instance of the handler serves every config type given."""

    def register(cls: type[LayerHandler]) -> type[LayerHandler]:
        handler = cls()
        for t in config_types:
            if t in _HANDLERS:
                raise RuntimeError(f"a handler for {t.__name__} is registered twice")
            _HANDLERS[t] = handler
        return cls

    return register


def config_names() -> str:
    return ", ".join(t.__name__ for t in _HANDLERS)


def handler_for(config, who: str = "quantize_") -> LayerHandler:
    """The handler of ``type(config)``; ConfigError naming the known config types otherwise."""
    handler = registered_handler(config)
    if handler is None:
        raise ConfigError(f"{who}: config must be one of {config_names()}, got {type(config).__name__}")
    return handler


def registered_handler(config) -> LayerHandler | None:
    """The handler of ``type(config)`` or of its nearest registered base class; None if there is none."""
    return next((_HANDLERS[t] for t in type(config).__mro__ if t in _HANDLERS), None)


def handler_for_checkpoint(tensors: Mapping[str, torch.Tensor], prefix: str) -> LayerHandler | None:
    """The handler whose layout the keys under ``prefix`` (``"<layer name>."``) follow; None for float."""
    for handler in dict.fromkeys(_HANDLERS.values()):  # one visit per handler, in registration order
        if handler.in_checkpoint(tensors, prefix):
            return handler
    return None


def _bitsandbytes_entry(config, load_in_4bit: bool = False, load_in_8bit: bool = False, **fields) -> dict:
    """The fields of transformers' ``BitsAndBytesConfig`` that a bitsandbytes checkpoint needs."""
    return {
        "quant_method": "bitsandbytes",
        "load_in_4bit": load_in_4bit,
        "load_in_8bit": load_in_8bit,
        **fields,
        "llm_int8_skip_modules": list(config.skip_modules) or None,
    }


@register_handler(NF4Config, FP4Config)
class FourBitHandler(LayerHandler):
    layer = Linear4bit

    def build(self, config, linear, name):
        return Linear4bit.from_linear(
            linear,
            name=name,
            quant_type=config.quant_type,
            blocksize=config.blocksize,
            compress_statistics=config.compress_statistics,
            compute_dtype=getattr(torch, config.compute_dtype),
            bnb_cpu_compatible=config.bnb_cpu_compatible,
        )

    def in_checkpoint(self, tensors, prefix):
        return any(k.startswith(prefix + "weight.quant_state.bitsandbytes__") for k in tensors)

    def build_for_checkpoint(self, linear, name, tensors, prefix):
        qt = next(k for k in tensors if k.startswith(prefix + "weight.quant_state.")).rsplit("__", 1)[-1]
        # blocksize and double quantization come from the checkpoint's quant_state when it is loaded
        return Linear4bit.from_linear(
            linear, name=name, quant_type=qt, compress_statistics=False, blocksize=64
        )

    def transformers_entry(self, config):
        return _bitsandbytes_entry(
            config,
            load_in_4bit=True,
            bnb_4bit_quant_type=config.quant_type,
            bnb_4bit_use_double_quant=config.compress_statistics,
            bnb_4bit_compute_dtype=config.compute_dtype,
            bnb_4bit_quant_storage="uint8",
        )


@register_handler(Int8Config)
class Int8Handler(LayerHandler):
    layer = Linear8bitLt

    def build(self, config, linear, name):
        return Linear8bitLt.from_linear(linear, name=name, threshold=config.threshold)

    def in_checkpoint(self, tensors, prefix):
        return prefix + "SCB" in tensors

    def transformers_entry(self, config):
        return _bitsandbytes_entry(
            config, load_in_8bit=True, llm_int8_threshold=config.threshold, llm_int8_has_fp16_weight=False
        )


@register_handler(Int8DynamicConfig)
class Int8DynamicHandler(LayerHandler):
    layer = Int8DynamicLinear

    def build(self, config, linear, name):
        return Int8DynamicLinear.from_linear(
            linear, name=name, granularity=config.granularity, percentile=config.percentile
        )

    def in_checkpoint(self, tensors, prefix):
        return prefix + "weight_scale" in tensors
