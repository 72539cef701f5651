"""Views that give every scale its own slice of a tensor.

Weights are viewed as 3-D ``[a, b, c]`` with one scale per ``[a, b]`` entry (scale shape ``[a, b, 1]``):

* tensor:  ``[1, 1, numel]``
* channel: ``[out, 1, numel/out]``                     (dim 0 is the output channel)
* group:   ``[out, in/g, g]`` over the flattened ``[out, in]`` matrix (rows split in runs of g along the
  last dim)

Activations: tensor → scale of shape ``[]``; channel → one scale per last-dim feature (shape ``[C]``); no
groups.
"""

from __future__ import annotations

import torch

from edgequant.errors import ConfigError, ShapeError


def weight_view(w: torch.Tensor, granularity: str, group_size: int, name: str = "weight") -> torch.Tensor:
    if granularity == "tensor":
        return w.reshape(1, 1, -1)
    rows = w.reshape(w.shape[0], -1)
    if granularity == "channel":
        return rows.unsqueeze(1)
    n = rows.shape[1]
    if n % group_size:
        raise ShapeError(
            f"{name}: row length {n} is not a multiple of group_size {group_size}; "
            "choose a group size that divides it or skip this module"
        )
    return rows.reshape(rows.shape[0], n // group_size, group_size)


def activation_scale_shape(x: torch.Tensor, granularity: str) -> tuple[int, ...]:
    if granularity == "tensor":
        return ()
    if granularity == "channel":
        return (x.shape[-1],)
    raise ConfigError("activation quantizers support granularity 'tensor' or 'channel', not 'group'")


def activation_reduce_dims(x: torch.Tensor, granularity: str) -> tuple[int, ...]:
    """Dims to reduce over when computing per-scale statistics of an activation."""
    return tuple(range(x.dim())) if granularity == "tensor" else tuple(range(x.dim() - 1))
