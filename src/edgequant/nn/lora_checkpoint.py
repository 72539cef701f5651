"""Gradient (activation) checkpointing for LoRA/QLoRA training: keep each block's input, recompute its inside.

``enable_gradient_checkpointing(model)`` uses the model's own switch when it is a transformers model
(``activation_checkpointing_enable``, formerly ``gradient_checkpointing_enable``, use_reentrant=False);
for any other model it wraps every module found in an ``nn.ModuleList`` (the usual stack of transformer
blocks) so that its forward runs under
``torch.utils.checkpoint.checkpoint(use_reentrant=False)``. The non-reentrant variant needs no input that
requires grad, which matters for LoRA: the embeddings are frozen, so the first block's input does not
require grad.

Numerics: recomputation runs the same ops on the same inputs, so losses and gradients equal those without
checkpointing (dropout included: the checkpoint replays the RNG state).
"""

from __future__ import annotations

import functools

from torch import nn
from torch.utils.checkpoint import checkpoint

from edgequant.errors import ConfigError


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Turn checkpointing on; returns how many blocks are checkpointed (-1 when transformers handles it)."""
    if getattr(model, "supports_gradient_checkpointing", False):
        # transformers >= 5.x names it activation_checkpointing_enable (the old name warns until v6)
        enable = getattr(model, "activation_checkpointing_enable", None)
        if callable(enable):
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
            return -1
        enable = getattr(model, "gradient_checkpointing_enable", None)
        if callable(enable):
            enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            return -1
    count = 0
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            for block in module:
                if not getattr(block, "_edgequant_checkpointed", False):
                    _wrap(block)
                    count += 1
    if count == 0:
        raise ConfigError(
            f"{type(model).__name__} has no nn.ModuleList of blocks to checkpoint and no "
            "gradient_checkpointing_enable(); checkpoint its blocks with torch.utils.checkpoint yourself"
        )
    return count


def _wrap(block: nn.Module) -> None:
    inner = block.forward

    @functools.wraps(inner)
    def forward(*args, **kwargs):
        if not block.training:
            return inner(*args, **kwargs)
        return checkpoint(inner, *args, use_reentrant=False, **kwargs)

    block.forward = forward
    block._edgequant_checkpointed = True
