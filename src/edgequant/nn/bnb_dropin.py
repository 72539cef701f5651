"""edgequant's layer classes under bitsandbytes' contract, and the switch that puts them in bnb's place.

``Linear4bit``, ``LinearFP4``, ``LinearNF4`` and ``Linear8bitLt`` here are ``edgequant.nn``'s layers
with bitsandbytes 0.50.2's constructor signatures and defaults and ``quantize_on_init = False``: the weight is
built as a float ``Params4bit`` / ``Int8Params`` (on ``device``, ``meta`` included) and quantized by
``.to(device)`` or at the first forward, never at construction. The other differences from edgequant's own
classes are defaults: ``Linear8bitLt`` has bnb's ``has_fp16_weights=True`` and ``threshold=0.0``;
edgequant's has ``False`` and ``6.0``. Weights, quantization, state dicts, refusals and forward numerics
are edgequant's (see ``nn.linear4bit`` / ``nn.linear8bit``).

``substitute_modules()`` replaces ``bitsandbytes.nn``'s classes (and ``bitsandbytes.MatmulLtState``) by
these everywhere in the ``bitsandbytes`` package, after ``edgequant.bnb.dropin``'s functional and parameter
substitutions, so code written for bitsandbytes (transformers' ``BitsAndBytesConfig`` loading, the peer
suite's ``modules`` mode) builds edgequant's layers. It cannot be undone; run it in a process of its own.
"""

from __future__ import annotations

import torch

from edgequant.bnb import dropin
from edgequant.bnb.matmul_state import MatmulLtState
from edgequant.nn import linear4bit, linear8bit


class Linear4bit(linear4bit.Linear4bit):
    """``bitsandbytes.nn.Linear4bit``'s signature and contract over edgequant's ``Linear4bit``."""

    quantize_on_init = False

    def __init__(
        self,
        input_features,
        output_features,
        bias=True,
        compute_dtype=None,
        compress_statistics=True,
        quant_type="fp4",
        quant_storage=torch.uint8,
        device=None,
    ):
        super().__init__(
            input_features,
            output_features,
            bias,
            compute_dtype,
            compress_statistics,
            quant_type,
            quant_storage,
            device,
        )


class LinearFP4(Linear4bit):
    """``bitsandbytes.nn.LinearFP4``: ``Linear4bit`` with ``quant_type="fp4"``."""

    def __init__(
        self,
        input_features,
        output_features,
        bias=True,
        compute_dtype=None,
        compress_statistics=True,
        quant_storage=torch.uint8,
        device=None,
    ):
        args = (bias, compute_dtype, compress_statistics, "fp4", quant_storage, device)
        super().__init__(input_features, output_features, *args)


class LinearNF4(Linear4bit):
    """``bitsandbytes.nn.LinearNF4``: ``Linear4bit`` with ``quant_type="nf4"``."""

    def __init__(
        self,
        input_features,
        output_features,
        bias=True,
        compute_dtype=None,
        compress_statistics=True,
        quant_storage=torch.uint8,
        device=None,
    ):
        args = (bias, compute_dtype, compress_statistics, "nf4", quant_storage, device)
        super().__init__(input_features, output_features, *args)


class Linear8bitLt(linear8bit.Linear8bitLt):
    """``bitsandbytes.nn.Linear8bitLt``'s signature, defaults and contract over edgequant's layer."""

    quantize_on_init = False

    def __init__(
        self,
        input_features: int,
        output_features: int,
        bias=True,
        has_fp16_weights=True,
        threshold=0.0,
        index=None,
        device=None,
    ):
        super().__init__(input_features, output_features, bias, has_fp16_weights, threshold, index, device)


MODULES = {
    "Linear4bit": Linear4bit,
    "LinearFP4": LinearFP4,
    "LinearNF4": LinearNF4,
    "Linear8bitLt": Linear8bitLt,
    "MatmulLtState": MatmulLtState,
}


def substitute_modules() -> int:
    """edgequant in bitsandbytes' place: functional API, parameter classes and the module classes above.

    Returns the number of names rebound in the ``bitsandbytes`` package.
    """
    return dropin.substitute_functional() + dropin.substitute_layers() + dropin.substitute_modules(MODULES)
