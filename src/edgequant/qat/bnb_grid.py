"""NF4 / FP4 (bitsandbytes 4-bit) QAT: the real codec in the forward pass, export to ``Linear4bit``.

``BnbQuantizer`` (``QuantSpec(method="bnb", format="NF4"|"FP4", group_size=64, double_quant=...)``): the
forward runs ``edgequant.bnb.quantize_4bit`` then ``dequantize_4bit`` on the flattened weight (blocks of
``group_size`` consecutive values, absmax scaling, optional double quantization of the absmax values:
byte-identical to bitsandbytes 0.50.2 by that package's own tests) and passes the gradient straight through.
``edgequant.qat.export.to_linear4bit(model)`` swaps those QAT modules for ``edgequant.nn.Linear4bit``
built from the trained float weights with the same settings; its ``dequantize()`` equals the trained fake
weights bit for bit, because quantization is deterministic and both sides run the same codec on the same
values.
"""

from __future__ import annotations

import torch

from edgequant.qat.quantizers import FakeQuantizer
from edgequant.qat.ste import straight_through


class BnbQuantizer(FakeQuantizer):
    def __init__(self, spec, role, shape, name=""):
        super().__init__(spec, role, shape, name)
        self.quant_type = spec.format.lower()
        self.bits = 4

    def _scale_shape(self, shape):  # no learned scale: the codec computes its absmax values
        return (1, 1, 1)

    def set_bits(self, bits: int) -> None:  # the format fixes the bit width
        pass

    def view(self, x):
        return x

    def codec_args(self) -> dict:
        return {
            "blocksize": self.spec.group_size,
            "compress_statistics": self.spec.double_quant,
            "quant_type": self.quant_type,
        }

    def fake(self, v):
        from edgequant.bnb import dequantize_4bit, quantize_4bit

        w = v.detach().to(torch.float32)
        packed, state = quantize_4bit(w, name=self.name or "weight", **self.codec_args())
        y = dequantize_4bit(packed, state).reshape(v.shape).to(v.device, v.dtype)
        return straight_through(v, y)
