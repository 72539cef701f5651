"""A small distillation loop for causal LMs (used by ``edgequant qat`` and the benchmarks); any other loop
works with ``prepare``/``convert`` too.

Each step takes ``batch_size`` random windows of ``seq_len + 1`` tokens from the training token stream and
minimises ``L = w_task·CE(next token) + α(t)·T²·KL(p_teacher ‖ p_student)`` (``distill.kd_kl_loss``), with
α(t) decaying from ``kd_start`` to ``kd_end`` (cosine), Adam(W) at ``lr`` with linear warm-up then cosine
decay (``schedules.cosine_lr_lambda``); quantizer parameters (LSQ steps, ggml block scales) get ``scale_lr``.
Options: frozen modules (``freeze``: name substrings, e.g. the embeddings), gradient checkpointing (HF
``gradient_checkpointing_enable``), progressive bit width (``ProgressiveBits``), gradient clipping.
``evaluate_lm`` gives perplexity and KL(teacher ‖ model) on non-overlapping windows (second half scored, as
llama-perplexity does).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgequant.errors import ConfigError
from edgequant.qat.distill import kd_kl_loss
from edgequant.qat.schedules import DecayingWeight, ProgressiveBits, cosine_lr_lambda, freeze_modules


@dataclass(frozen=True)
class LMTrainConfig:
    steps: int = 100
    seq_len: int = 128
    batch_size: int = 2
    lr: float = 2e-5
    scale_lr: float = 1e-4
    warmup: int = 5
    kd_start: float = 1.0
    kd_end: float = 0.5
    task_weight: float = 0.0
    temperature: float = 1.0
    freeze: tuple[str, ...] = ("embed_tokens",)
    gradient_checkpointing: bool = False
    progressive_bits: ProgressiveBits | None = None
    clip_grad: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.seq_len < 2 or self.batch_size < 1:
            raise ConfigError("LMTrainConfig needs steps >= 1, seq_len >= 2, batch_size >= 1")
        if self.lr <= 0 or self.scale_lr < 0:
            raise ConfigError(f"LMTrainConfig: lr={self.lr} must be > 0 and scale_lr={self.scale_lr} >= 0")
        if self.warmup >= self.steps and self.steps > 1:
            raise ConfigError(f"LMTrainConfig: warmup={self.warmup} must be < steps={self.steps}")


def _param_groups(model: nn.Module, cfg: LMTrainConfig):
    if cfg.freeze and any(any(s in n for s in cfg.freeze) for n, _ in model.named_parameters()):
        freeze_modules(model, cfg.freeze)
    weights, scales = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (scales if "_quantizer." in name else weights).append(p)
    groups = [{"params": weights, "lr": cfg.lr}]
    if scales:
        groups.append({"params": scales, "lr": cfg.scale_lr, "weight_decay": 0.0})
    return groups


def distill_lm(
    student: nn.Module,
    teacher: nn.Module | None,
    tokens: torch.Tensor,
    cfg: LMTrainConfig,
    on_step: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train ``student`` in place; returns one log record per step (also passed to ``on_step``)."""
    tokens = tokens.reshape(-1).long()
    if tokens.numel() < cfg.seq_len + 2:
        raise ConfigError(
            f"the training text has {tokens.numel()} tokens; need more than seq_len={cfg.seq_len}"
        )
    if teacher is None and cfg.task_weight == 0:
        raise ConfigError(
            "no teacher and task_weight=0: nothing to train on (give a teacher or a task weight)"
        )
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(_param_groups(student, cfg), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lr_lambda(cfg.steps, cfg.warmup, 0.1))
    alpha = DecayingWeight(cfg.kd_start, cfg.kd_end, cfg.steps)
    if cfg.gradient_checkpointing and hasattr(student, "gradient_checkpointing_enable"):
        student.gradient_checkpointing_enable()
    student.train()
    if teacher is not None:
        teacher.eval()
    log = []
    for t in range(cfg.steps):
        t0 = time.perf_counter()
        if cfg.progressive_bits is not None:
            cfg.progressive_bits.apply(student, t)
        starts = torch.randint(0, tokens.numel() - cfg.seq_len - 1, (cfg.batch_size,), generator=gen)
        batch = torch.stack([tokens[s : s + cfg.seq_len + 1] for s in starts.tolist()])
        x, y = batch[:, :-1], batch[:, 1:]
        logits = student(x).logits
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
        kd = torch.zeros(())
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(x).logits
            kd = kd_kl_loss(logits, t_logits, cfg.temperature)
        a = alpha.value(t)
        loss = cfg.task_weight * ce + a * kd
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.clip_grad)
        opt.step()
        sched.step()
        rec = {
            "step": t + 1,
            "loss": float(loss.detach()),
            "kd": float(kd.detach()),
            "ce": float(ce.detach()),
            "alpha": a,
            "lr": opt.param_groups[0]["lr"],
            "seconds": time.perf_counter() - t0,
        }
        log.append(rec)
        if on_step is not None:
            on_step(rec)
    if cfg.gradient_checkpointing and hasattr(student, "gradient_checkpointing_disable"):
        student.gradient_checkpointing_disable()
    student.eval()
    return log


@torch.no_grad()
def evaluate_lm(model: nn.Module, tokens: torch.Tensor, seq_len: int = 256, teacher=None, max_windows=None):
    """Perplexity (and mean KL(teacher ‖ model) per token) on non-overlapping windows, second half scored."""
    tokens = tokens.reshape(-1).long()
    n = tokens.numel() // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n < 1:
        raise ConfigError(f"evaluation text has {tokens.numel()} tokens, fewer than seq_len={seq_len}")
    model.eval()
    nll, kl, count = 0.0, 0.0, 0
    half = seq_len // 2
    for i in range(n):
        x = tokens[i * seq_len : (i + 1) * seq_len].unsqueeze(0)
        logits = model(x).logits[0, half - 1 : -1].float()
        target = x[0, half:]
        nll += float(F.cross_entropy(logits, target, reduction="sum"))
        if teacher is not None:
            t_logits = teacher(x).logits[0, half - 1 : -1].float()
            kl += float(kd_kl_loss(logits, t_logits)) * target.numel()
        count += target.numel()
    out = {"ppl": math.exp(nll / count), "tokens_scored": count, "windows": n}
    if teacher is not None:
        out["kl"] = kl / count
    return out
