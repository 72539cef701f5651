"""Noise-injection training (the book's §8.4.3 误差注入训练, method ``"noise"``): ``W_train = W + η·ε``.

In training (module in train mode and autograd on) the weight passes as ``v + η·σ·ε`` with ``ε ~ N(0, 1)``
drawn anew at every forward, so the noise is ``N(0, η²σ²)``. ``σ²`` is the measured quantization error of
the current weight under this quantizer's own min-max grid (the ``"ste"`` weight grid of ``spec.bits``, one
scale per ``granularity`` slice): ``σ² = mean((Q(v) − v)²)`` over the elements sharing a scale, recomputed
each step and detached (the error is zero-mean up to rounding, so this is its variance; for a uniform
rounding error it is about step²/12). The gradient is the identity (∂/∂v = 1), as in float training: with
``η = 0`` training is exactly plain float training. In eval mode (and under ``torch.no_grad``, e.g.
``qat.convert``) the weight is hard min-max quantized, so the trained model is evaluated and exported as the
quantized one. ``η`` is ``QuantSpec.noise_eta``. Weights only.
"""

from __future__ import annotations

import torch

from edgequant.qat.quantizers import MinMaxQuantizer


class NoiseQuantizer(MinMaxQuantizer):
    def noise_variance(self, v: torch.Tensor) -> torch.Tensor:
        """σ² per scale (broadcast shape of ``v``'s view): mean squared min-max quantization error."""
        with torch.no_grad():
            err = super().fake(v.detach()) - v.detach()
            return self.reduce(err.pow(2), torch.mean)

    def fake(self, v: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return super().fake(v)
        sigma = self.noise_variance(v).sqrt()
        return v + self.spec.noise_eta * sigma * torch.randn_like(v)
