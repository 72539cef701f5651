"""Batch-norm re-estimation after QAT (the spec: run 10–50 representative batches).

The running statistics a BN layer learned during training were collected while the weights were still
moving; ``reestimate_bn`` resets them and recomputes them with the final (quantized) model as an exact
cumulative average (``momentum=None``) over the given batches, all other layers in eval mode (activation
quantizers frozen).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from edgequant.errors import ConfigError


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches: Iterable, forward: Callable | None = None) -> int:
    """Recompute every BatchNorm's running mean/var over ``batches``; returns the number of batches used."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise ConfigError("reestimate_bn: the model has no BatchNorm layer")
    was_training = model.training
    model.eval()
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = exact mean over the batches
        m.train()
    n = 0
    try:
        for batch in batches:
            (forward or model)(batch)
            n += 1
    finally:
        for m, mom in saved:
            m.momentum = mom
        model.train(was_training)
    if n == 0:
        raise ConfigError("reestimate_bn: no batches given")
    return n
