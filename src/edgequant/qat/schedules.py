"""Training schedules for QAT: learning rate, bit width, scope, loss weights, Gumbel temperature.

All are pure functions of the optimizer step ``t`` (0-based), so a resumed run picks up exactly where it
stopped.

* ``cosine_lr_lambda(total, warmup, min_ratio)``: multiplier for ``torch.optim.lr_scheduler.LambdaLR``; linear
  warm-up, then cosine from 1 to ``min_ratio``. ``qat_learning_rate(pretrain_lr, fraction=0.1)``: the spec's
  "lr_qat = lr_pretrain × 0.1" (a fraction of the pre-training rate, cosine rather than step decay).
* ``ProgressiveBits(((0, 8), (s1, 4), (s2, 3)))``: weight bit width by step; changing it re-initializes
  learned steps from the current weights (``FakeQuantizer.set_bits``).
* ``ProgressiveScope(((0, "weights"), (s1, "activations"), (s2, "all")))``.
* ``DecayingWeight(start, end, total, kind)``: e.g. the distillation weight α(t), decaying
  (cosine/linear/exp).
* ``set_gumbel_step(model, t)``: τ(t) = τ₀·exp(−λt) on every Gumbel quantizer.
* ``freeze_modules(model, patterns)``: layer freezing by parameter-name substrings.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from edgequant.errors import ConfigError
from edgequant.qat.prepare import SCOPES, quantizers, set_bits, set_scope
from edgequant.qat.soft import GumbelQuantizer


def qat_learning_rate(pretrain_lr: float, fraction: float = 0.1) -> float:
    if not 0 < fraction <= 1:
        raise ConfigError(f"QAT learning-rate fraction {fraction} must be in (0, 1]")
    return pretrain_lr * fraction


def cosine_lr_lambda(
    total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0
) -> Callable[[int], float]:
    if total_steps < 1 or warmup_steps < 0 or (warmup_steps >= total_steps and total_steps > 1):
        raise ConfigError(
            f"cosine schedule needs total_steps >= 1 > warmup fraction (got {total_steps}, {warmup_steps})"
        )

    def f(t: int) -> float:
        if t < warmup_steps:
            return (t + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        p = min(1.0, (t - warmup_steps) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))

    return f


def _check_stages(stages, kind: str) -> None:
    if not stages or stages[0][0] != 0:
        raise ConfigError(f"{kind} stages must start at step 0, got {stages}")
    steps = [s for s, _ in stages]
    if steps != sorted(set(steps)):
        raise ConfigError(f"{kind} stage steps must be strictly increasing, got {steps}")


def _stage_at(stages, t: int):
    value = stages[0][1]
    for start, v in stages:
        if t >= start:
            value = v
    return value


@dataclass(frozen=True)
class ProgressiveBits:
    stages: tuple[tuple[int, int], ...] = ((0, 8), (100, 4), (200, 3))
    role: str = "weight"

    def __post_init__(self):
        _check_stages(self.stages, "ProgressiveBits")
        if any(not 2 <= b <= 8 for _, b in self.stages):
            raise ConfigError(f"ProgressiveBits bit widths must be 2..8, got {self.stages}")

    def bits_at(self, t: int) -> int:
        return _stage_at(self.stages, t)

    def apply(self, model: nn.Module, t: int) -> int:
        b = self.bits_at(t)
        set_bits(model, b, self.role)
        return b


@dataclass(frozen=True)
class ProgressiveScope:
    stages: tuple[tuple[int, str], ...] = ((0, "weights"), (100, "activations"), (200, "all"))

    def __post_init__(self):
        _check_stages(self.stages, "ProgressiveScope")
        if any(s not in SCOPES for _, s in self.stages):
            raise ConfigError(f"ProgressiveScope scopes must be in {SCOPES}, got {self.stages}")

    def scope_at(self, t: int) -> str:
        return _stage_at(self.stages, t)

    def apply(self, model: nn.Module, t: int) -> str:
        s = self.scope_at(t)
        set_scope(model, s)
        return s


@dataclass(frozen=True)
class DecayingWeight:
    start: float = 1.0
    end: float = 0.0
    total_steps: int = 1000
    kind: str = "cosine"

    def __post_init__(self):
        if self.kind not in ("cosine", "linear", "exp", "constant"):
            raise ConfigError(f"DecayingWeight.kind={self.kind!r}; choose cosine, linear, exp or constant")
        if self.total_steps < 1:
            raise ConfigError("DecayingWeight.total_steps must be >= 1")
        if self.kind == "exp" and (self.start <= 0 or self.end <= 0):
            raise ConfigError("DecayingWeight(kind='exp') needs start > 0 and end > 0")

    def value(self, t: int) -> float:
        p = min(1.0, max(0.0, t / self.total_steps))
        if self.kind == "constant":
            return self.start
        if self.kind == "linear":
            return self.start + (self.end - self.start) * p
        if self.kind == "exp":
            return self.start * (self.end / self.start) ** p
        return self.end + (self.start - self.end) * 0.5 * (1 + math.cos(math.pi * p))


def set_gumbel_step(model: nn.Module, t: int) -> list[float]:
    return [q.set_step(t) for _, q in quantizers(model) if isinstance(q, GumbelQuantizer)]


def freeze_modules(model: nn.Module, patterns: tuple[str, ...], frozen: bool = True) -> list[str]:
    """Layer freezing: stop (or resume) training the parameters whose names contain any of ``patterns``
    (e.g. converged early blocks, the embeddings); returns the affected parameter names."""
    names = []
    for name, p in model.named_parameters():
        if any(s in name for s in patterns):
            p.requires_grad_(not frozen)
            names.append(name)
    if not names:
        raise ConfigError(f"freeze_modules: no parameter name contains any of {patterns}")
    return names
