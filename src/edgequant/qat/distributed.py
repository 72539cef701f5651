"""Data-parallel QAT on ``torch.distributed`` (gloo on CPU, NCCL on GPUs).

Every rank holds the whole model and trains on its shard of each global batch; gradients are averaged
(``torch.nn.parallel.DistributedDataParallel`` or ``average_gradients``), so weights *and* quantizer
parameters (LSQ steps, ggml block scales) receive identical updates and stay identical across ranks. What
DDP does not cover is the quantizers' data-dependent state, set before training:

* ``with synchronized_init(): prepare(model, cfg, example_inputs=my_shard)``: each quantizer's
  data-dependent init is averaged over the ranks the moment it is computed (the spec's "AllReduce(scales,
  min, max)"), before the next layer's input depends on it. For LSQ's init (2·mean|x|/√Q_P, linear in the
  mean) with equal shards this is the init on the global batch (up to rounding); for min-max statistics it is
  the mean of the per-rank values.
* ``sync_quantizer_state(model)``: average every quantizer parameter and buffer over the ranks at any time.
* ``broadcast_parameters(model, src)``: start every rank from rank ``src``'s weights.
* ``max_divergence(model)``: the largest |difference| of any parameter or quantizer buffer between this
  rank and rank 0 (0.0 when in sync); a cheap check to run after training.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn

from edgequant.errors import ConfigError
from edgequant.qat.quantizers import INIT_HOOKS, FakeQuantizer


def _require_initialized() -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError("torch.distributed is not initialized: call dist.init_process_group first")


def _quantizer_tensors(model: nn.Module):
    for _, mod in model.named_modules():
        if isinstance(mod, FakeQuantizer):
            for _, t in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
                yield mod, t


@contextlib.contextmanager
def synchronized_init():
    """Within the block, every quantizer initialized from data averages its state over the ranks at once."""
    _require_initialized()
    INIT_HOOKS.append(sync_quantizer_state)
    try:
        yield
    finally:
        INIT_HOOKS.remove(sync_quantizer_state)


@torch.no_grad()
def sync_quantizer_state(model: nn.Module) -> int:
    """Average quantizer parameters/buffers over all ranks; returns the number of tensors synced."""
    _require_initialized()
    world = dist.get_world_size()
    n = 0
    for _mod, t in _quantizer_tensors(model):
        if t.dtype == torch.uint8:  # the 'initialized' flags: every rank has initialized by now
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            continue
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(world)
        n += 1
    return n


@torch.no_grad()
def broadcast_parameters(model: nn.Module, src: int = 0) -> None:
    _require_initialized()
    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, src)


def average_gradients(model: nn.Module) -> None:
    """All-reduce and average ``.grad`` of every parameter (for loops that do not use DDP)."""
    _require_initialized()
    world = dist.get_world_size()
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world)


@torch.no_grad()
def max_divergence(model: nn.Module) -> float:
    """max |x_rank − x_rank0| over all parameters and floating buffers (identical on every rank)."""
    _require_initialized()
    worst = torch.zeros((), dtype=torch.float64)
    for t in list(model.parameters()) + list(model.buffers()):
        if not t.is_floating_point():
            continue
        ref = t.detach().clone()
        dist.broadcast(ref, 0)
        worst = torch.maximum(worst, (t.detach() - ref).abs().max().to(torch.float64))
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)
