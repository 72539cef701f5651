"""``Params4bit`` and ``Int8Params``: bitsandbytes-compatible parameters that quantize on ``.to(device)``.

Same constructor arguments, attributes and behaviour as ``bitsandbytes.nn.Params4bit`` / ``Int8Params``
(0.50.2), so the flow transformers and accelerate use works: build the layer (possibly on the ``meta``
device), load or assign the float weight, then ``.to("cpu")`` quantizes once (``bnb_quantized`` / the
int8 dtype record it); moving an already-quantized parameter only moves its tensors and state.

- ``Params4bit``: ``.to(non-meta device)`` of an unquantized parameter runs ``edgequant.bnb.quantize_4bit``
  with the parameter's ``blocksize`` (None = 64), ``compress_statistics`` (default True), ``quant_type``
  (default "fp4", bnb's) and ``quant_storage``: the data becomes the packed codes ``(ceil(n/2), 1)`` and
  ``quant_state`` (also set on ``module``) the QuantState. ``from_prequantized(data, quantized_stats)``
  rebuilds it from bnb's state_dict entries. ``absmax``, ``code``, ``quant_map``, ``offset``, ``state2``
  and the ``nested_*`` properties proxy the state (FSDP's state_dict walk). ``torch.chunk``/``torch.split``
  keep the class. Pickle, ``copy`` and ``deepcopy`` keep the attributes (deepcopy copies the state too).
- ``Int8Params``: ``.to(non-meta device)`` of a float CPU parameter without ``has_fp16_weights`` quantizes
  row-wise with ``int8_vectorwise_quant(W.half())`` (``SCB[o] = max |W16[o, :]|``, ``CB = round(W16 * 127 /
  SCB[o])``, bnb's LLM.int8 weight); ``CB`` is the int8 data, ``SCB`` float32.

Numerics are edgequant's (``edgequant.bnb``): the 4-bit codes are bnb's bytes; the double-quantized absmax
uses the nearest-code rule (bnb's CPU kernel snaps to a 65536-step grid first; see ``bnb.blockwise``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from edgequant.bnb.fourbit import quantize_4bit
from edgequant.bnb.int8 import int8_vectorwise_quant
from edgequant.bnb.quant_state import QuantState
from edgequant.errors import FormatError


class NotQuantizedError(FormatError, RuntimeError):
    """A quantized checkpoint loaded into a layer whose weight is not quantized yet (bnb: RuntimeError)."""


_ATTRS = (
    "blocksize",
    "compress_statistics",
    "quant_type",
    "quant_state",
    "quant_storage",
    "bnb_quantized",
    "module",
)


def _nested(attr):
    def get(self):
        qs = self.quant_state
        if qs is None or not qs.nested:
            raise AttributeError(f"Params4bit has no {attr!r}: its quant_state is not nested")
        return attr_value(qs, attr)

    return property(get)


def attr_value(qs: QuantState, attr: str):
    return {
        "nested_absmax": lambda: qs.state2.absmax,
        "nested_blocksize": lambda: qs.state2.blocksize,
        "nested_quant_map": lambda: qs.state2.code,
        "nested_dtype": lambda: qs.state2.dtype,
        "nested_offset": lambda: qs.offset,
        "offset": lambda: qs.offset,
        "state2": lambda: qs.state2,
    }[attr]()


def _state_attr(attr):
    def get(self):
        if self.quant_state is None:
            raise AttributeError(f"Params4bit has no {attr!r} before quantization (call .to(device))")
        return getattr(self.quant_state, attr)

    return property(get)


class Params4bit(torch.nn.Parameter):
    """A 4-bit weight that quantizes on its first ``.to(device)`` (see the module docstring)."""

    def __new__(
        cls,
        data: torch.Tensor | None = None,
        requires_grad: bool = False,
        quant_state: QuantState | None = None,
        blocksize: int | None = None,
        compress_statistics: bool = True,
        quant_type: str = "fp4",
        quant_storage: torch.dtype = torch.uint8,
        module: Any = None,
        bnb_quantized: bool = False,
        **kwargs,
    ) -> Params4bit:
        data = torch.empty(0) if data is None else data
        self = torch.Tensor._make_subclass(cls, data, requires_grad)
        blocksize = 64 if blocksize is None else blocksize
        values = (
            blocksize,
            compress_statistics,
            quant_type,
            quant_state,
            quant_storage,
            bnb_quantized,
            module,
        )
        self.__dict__.update(zip(_ATTRS, values, strict=True))
        self.data = data
        return self

    absmax = _state_attr("absmax")
    code = _state_attr("code")
    quant_map = _state_attr("code")
    offset = _nested("offset")
    state2 = _nested("state2")
    nested_absmax = _nested("nested_absmax")
    nested_blocksize = _nested("nested_blocksize")
    nested_quant_map = _nested("nested_quant_map")
    nested_dtype = _nested("nested_dtype")
    nested_offset = _nested("nested_offset")

    def __getstate__(self):
        state = self.__dict__.copy()
        state["data"], state["requires_grad"] = self.data, self.requires_grad
        return state

    def __setstate__(self, state):
        self.requires_grad = state["requires_grad"]
        for k in _ATTRS:
            setattr(self, k, state[k])
        self.data = state["data"]

    def __deepcopy__(self, memo):
        new = type(self).__new__(type(self))
        new.__setstate__(self.__getstate__())
        new.quant_state = copy.deepcopy(self.quant_state)
        new.data = copy.deepcopy(self.data)
        return new

    def __copy__(self):
        new = type(self).__new__(type(self))
        new.__setstate__(self.__getstate__())
        return new

    @classmethod
    def from_prequantized(
        cls, data, quantized_stats, requires_grad=False, device="cuda", module=None, **kwargs
    ) -> Params4bit:
        """Rebuild from bnb's state_dict (``absmax``, ``quant_map``, ``quant_state.bitsandbytes__*``)."""
        self = torch.Tensor._make_subclass(cls, data.to(device))
        self.requires_grad = requires_grad
        self.quant_state = QuantState.from_dict(quantized_stats, device=device)
        self.blocksize = self.quant_state.blocksize
        self.compress_statistics = self.quant_state.nested
        self.quant_type = self.quant_state.quant_type
        self.bnb_quantized = True
        self.quant_storage = data.dtype
        self.module = module
        if module is not None:
            module.quant_state = self.quant_state
        return self

    def _quantize(self, device):
        w = self.data.contiguous().to(device)
        packed, state = quantize_4bit(
            w,
            blocksize=self.blocksize,
            compress_statistics=self.compress_statistics,
            quant_type=self.quant_type,
            quant_storage=self.quant_storage,
        )
        self.data, self.quant_state, self.bnb_quantized = packed, state, True
        if self.module is not None:
            self.module.quant_state = state
        return self

    def cpu(self):
        return self.to(device="cpu")

    def to(self, *args, **kwargs):
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        if device is not None and device.type != "meta" and not self.bnb_quantized:
            return self._quantize(device)
        if self.quant_state is not None and device is not None:
            self.quant_state.to(device)
        return Params4bit(
            super().to(device=device, dtype=dtype, non_blocking=non_blocking),
            requires_grad=self.requires_grad,
            **{k: getattr(self, k) for k in _ATTRS if k != "module"},
        )

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        result = super().__torch_function__(func, types, args, kwargs or {})
        if func not in (torch.chunk, torch.split):
            return result
        src = args[0]
        attrs = {k: getattr(src, k) for k in _ATTRS}

        def wrap(t):
            return cls(data=t, requires_grad=src.requires_grad, **attrs)

        return tuple(wrap(t) for t in result) if isinstance(result, tuple) else wrap(result)


class Int8Params(torch.nn.Parameter):
    """An LLM.int8 weight that quantizes row-wise on ``.to(device)`` (see the module docstring)."""

    def __new__(cls, data=None, requires_grad=True, has_fp16_weights=False, CB=None, SCB=None, **kwargs):
        data = torch.empty(0) if data is None else data
        obj = torch.Tensor._make_subclass(cls, data, requires_grad)
        obj.CB, obj.SCB, obj.has_fp16_weights = CB, SCB, has_fp16_weights
        return obj

    def _quantize(self, device):
        if self.has_fp16_weights:
            return super().to(device)
        cb, scb, _ = int8_vectorwise_quant(self.data.contiguous().to(device=device, dtype=torch.float16))
        self.data, self.CB, self.SCB = cb, cb, scb
        return self

    def cpu(self):
        return self.to(device="cpu")

    def __deepcopy__(self, memo):
        return type(self).__new__(
            type(self),
            data=copy.deepcopy(self.data, memo),
            requires_grad=self.requires_grad,
            has_fp16_weights=self.has_fp16_weights,
            CB=copy.deepcopy(self.CB, memo),
            SCB=copy.deepcopy(self.SCB, memo),
        )

    def to(self, *args, **kwargs):
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        quantized = self.data.dtype == torch.int8
        if not quantized and device is not None and device.type != "meta" and self.data.device.type == "cpu":
            return self._quantize(device)
        new = Int8Params(
            super().to(device=device, dtype=dtype, non_blocking=non_blocking),
            requires_grad=self.requires_grad,
            has_fp16_weights=self.has_fp16_weights,
        )
        if quantized:
            new.CB = new.data
            if device is not None and self.SCB is not None and self.SCB.device.type != "meta":
                new.SCB = self.SCB.to(device)
        return new
