"""Quantization-aware range regularizer (spec: R = λ·Σ_i range(w_i)²): keeps weight ranges narrow so a grid of
few levels covers them finely.

``range_regularizer(model, lam)`` sums, over every QAT module's weight, (max − min)² of each slice that
shares one scale (the weight quantizer's view: per tensor, channel or group; ggml formats: blocks of 32),
times λ. Its gradient reaches only each slice's max (+2λ·range) and min (−2λ·range).
"""

from __future__ import annotations

import torch
from torch import nn

from edgequant.qat.prepare import qat_modules


def range_regularizer(model: nn.Module, lam: float) -> torch.Tensor:
    total = None
    for _, mod in qat_modules(model):
        if mod.weight_quantizer is None:
            continue
        v = mod.weight_quantizer.view(mod.weight)
        r = v.amax(dim=-1) - v.amin(dim=-1)
        term = (r * r).sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return lam * total
