"""Mixed-precision master weights and gradient checkpointing for QAT of models that do not fit otherwise.

``MasterWeights(model, dtype=torch.bfloat16)``: the model's floating parameters are stored and computed in
``dtype`` (half the memory of float32 for weights, activations and gradients); a float32 copy of each ("master
weights") is what the optimizer updates, so updates smaller than the half-precision spacing still accumulate
(the spec's "master weights FP16, gradient accumulation FP32"; bf16 by default, because fp16 would need loss
scaling). Use ``opt = Adam(mw.parameters())``, then after ``loss.backward()`` call ``mw.step(opt)``: gradients
are copied to the masters in float32, the optimizer steps, the masters are rounded back into the model.
Note: fake quantization then runs in ``dtype`` too; for exact ggml/GGUF export keep float32 (the export casts
the fake weights to float32, which is exact for bf16 values but their grid is the bf16-rounded one).

``checkpoint_modules(model, types)``: wrap the forward of every module of the given types (e.g. transformer
blocks) in ``torch.utils.checkpoint``: their activations are recomputed in the backward pass instead of stored
(memory O(√n)-style for n blocks at about one extra forward). For Hugging Face models
``model.gradient_checkpointing_enable()`` does the same (``LMTrainConfig.gradient_checkpointing``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from edgequant.errors import ConfigError


class MasterWeights:
    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        if dtype not in (torch.bfloat16, torch.float16):
            raise ConfigError(f"MasterWeights dtype must be bfloat16 or float16, got {dtype}")
        self.model, self.dtype = model, dtype
        self.pairs: list[tuple[nn.Parameter, nn.Parameter]] = []
        for p in model.parameters():
            if p.requires_grad and p.is_floating_point():
                master = nn.Parameter(p.detach().to(torch.float32).clone())
                p.data = p.data.to(dtype)
                self.pairs.append((p, master))

    def parameters(self) -> list[nn.Parameter]:
        return [m for _, m in self.pairs]

    @torch.no_grad()
    def step(self, optimizer: torch.optim.Optimizer) -> None:
        for p, m in self.pairs:
            m.grad = None if p.grad is None else p.grad.to(torch.float32)
            p.grad = None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for p, m in self.pairs:
            p.data.copy_(m.data.to(self.dtype))


def checkpoint_modules(model: nn.Module, types: tuple[type, ...]) -> int:
    """Recompute the listed module types' activations in the backward pass; returns how many were wrapped."""
    n = 0
    for mod in model.modules():
        if isinstance(mod, types) and not getattr(mod, "_edgequant_checkpointed", False):
            forward = mod.forward

            def wrapped(*args, _forward=forward, **kwargs):
                if torch.is_grad_enabled():
                    return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
                return _forward(*args, **kwargs)

            mod.forward = wrapped
            mod._edgequant_checkpointed = True
            n += 1
    return n
