"""Adam8bit / AdamW8bit: Adam with blockwise 8-bit states, bit-identical to bitsandbytes 0.50.2 on CPU.

State per parameter (bnb's names): ``step`` (int), ``state1``/``state2`` (uint8, p's shape, blocks of 256),
``qmap1`` (signed dynamic map), ``qmap2`` (unsigned dynamic map), ``absmax1``/``absmax2`` (float32
[ceil(n/256)]). Parameters with fewer than ``min_8bit_size`` (4096) elements keep float32
``state1``/``state2``.

One step, all float32 (t = step, g = grad.float()):

8-bit states:
  1. ``m = code1[state1] * absmax1``, ``v = code2[state2] * absmax2`` (dequantize).
  2. ``m = m * b1 (+) (1 - b1) * g`` (torch mul_, add_ with alpha); ``v = v * b2 (+) (1 - b2) * g * g``
     (mul_, addcmul_).
  3. ``denom = sqrt(v) / sqrt(1 - b2**t) + eps`` (Python-double corrections).
  4. ``p *= 1 - lr * wd`` if wd > 0 (decoupled, for Adam8bit too, as bnb does).
  5. ``p += m / denom * (-lr / (1 - b1**t))`` (addcdiv_).
  6. Requantize m and v blockwise (256) with bnb's native CPU rounding (``bnb_cpu_compatible=True``, the
     default here, so states match bnb byte for byte), or exact nearest-code rounding with False.
32-bit states (small parameters): m, v as in 2; ``p *= 1 - lr*wd``; ``p += (m / (sqrt(v) + eps*sqrt(1-b2**t)))
  * (-lr * sqrt(1-b2**t) / (1-b1**t))`` (add_ with alpha), bnb's 32-bit CPU order.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from edgequant.bnb.blockwise import _quantize_flat
from edgequant.bnb.codes import create_dynamic_map
from edgequant.errors import ConfigError, FormatError
from edgequant.kernels import bnb8

STATE_BLOCKSIZE = 256
_BNB_WRAPPED = "__bnb_optimizer_quant_state__"


def _dequant(q: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    out = np.empty(q.numel(), dtype=np.float32)
    bnb8.dequantize_blockwise(q.reshape(-1).numpy(), absmax.numpy(), code.numpy(), STATE_BLOCKSIZE, out)
    return torch.from_numpy(out).reshape(q.shape)


def _requant(
    x: torch.Tensor, code: torch.Tensor, q: torch.Tensor, absmax: torch.Tensor, bnb_cpu: bool
) -> None:
    qn, am = _quantize_flat(
        x.contiguous().reshape(-1).numpy(), code.numpy(), STATE_BLOCKSIZE, bnb_cpu, threads=1
    )
    q.copy_(torch.from_numpy(qn).reshape(q.shape))
    absmax.copy_(torch.from_numpy(am))


def _moments(
    p: torch.Tensor, m: torch.Tensor, v: torch.Tensor, beta1: float, beta2: float, step: int
) -> tuple[torch.Tensor, float, float]:
    """Step 2 above, in place on float32 ``m`` and ``v``: ``m = m * b1 (+) (1 - b1) * g`` (mul_, add_ with
    alpha), ``v = v * b2 (+) (1 - b2) * g * g`` (mul_, addcmul_), g = grad.float(). Returns p as float32 and
    the Python-double bias corrections ``1 - b1**t`` and ``sqrt(1 - b2**t)``; shared by both state widths."""
    grad = p.grad.contiguous().float() * 1.0
    p32 = p.data.float()
    m.mul_(beta1).add_(grad, alpha=1.0 - beta1)
    v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    return p32, 1.0 - beta1**step, math.sqrt(1.0 - beta2**step)


class Adam8bit(torch.optim.Optimizer):
    """Adam with 8-bit blockwise states (bnb semantics; weight decay is decoupled, default 0)."""

    default_weight_decay = 0.0

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float | None = None,
        amsgrad: bool = False,
        optim_bits: int = 8,
        min_8bit_size: int = 4096,
        *,
        bnb_cpu_compatible: bool = True,
    ):
        if weight_decay is None:
            weight_decay = self.default_weight_decay
        if not lr >= 0.0:
            raise ConfigError(f"{type(self).__name__}: invalid learning rate {lr}")
        if not eps >= 0.0:
            raise ConfigError(f"{type(self).__name__}: invalid eps {eps}")
        for i, b in enumerate(betas):
            if not 0.0 <= b < 1.0:
                raise ConfigError(f"{type(self).__name__}: betas[{i}]={b} must be in [0, 1)")
        if not weight_decay >= 0.0:
            raise ConfigError(f"{type(self).__name__}: invalid weight_decay {weight_decay}")
        if amsgrad:
            raise ConfigError(
                f"{type(self).__name__} does not support amsgrad=True (neither does bitsandbytes)"
            )
        if optim_bits not in (8, 32):
            raise ConfigError(f"{type(self).__name__}: optim_bits must be 8 or 32, got {optim_bits}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.optim_bits = optim_bits
        self.min_8bit_size = min_8bit_size
        self.bnb_cpu_compatible = bnb_cpu_compatible

    def load_state_dict(self, state_dict: dict) -> None:
        """Load our own or bitsandbytes' optimizer state_dict (bnb nests the tensors under
        ``__bnb_optimizer_quant_state__``). torch casts floating state to the parameter's dtype on load, which
        would corrupt the uint8 codes (and, for bf16 parameters, the float32 absmax); the saved tensors are
        restored as they were."""
        saved = {}
        for k, v in state_dict["state"].items():
            st = dict(v)
            st.update(st.pop(_BNB_WRAPPED, {}))  # bitsandbytes nests its tensors under this key
            if "step" not in st or "state1" not in st or "state2" not in st:
                raise FormatError(
                    f"{type(self).__name__}.load_state_dict: state of parameter {k} has keys {sorted(st)}; "
                    f"expected step, state1, state2 (bitsandbytes' Adam layout)"
                )
            saved[k] = st
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        super().load_state_dict({"state": saved, "param_groups": state_dict["param_groups"]})
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(ids, params, strict=True):
            for k, v in saved.get(pid, {}).items():
                if isinstance(v, torch.Tensor):
                    self.state[p][k] = v.detach().clone().to(p.device)

    def _init_state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        state["step"] = 0
        if self.optim_bits == 32 or p.numel() < self.min_8bit_size:
            state["state1"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
            state["state2"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
        else:
            blocks = -(-p.numel() // STATE_BLOCKSIZE)
            state["state1"] = torch.zeros_like(p, dtype=torch.uint8)
            state["qmap1"] = create_dynamic_map(signed=True)
            state["state2"] = torch.zeros_like(p, dtype=torch.uint8)
            state["qmap2"] = create_dynamic_map(signed=False)
            state["absmax1"] = torch.zeros((blocks,), dtype=torch.float32)
            state["absmax2"] = torch.zeros((blocks,), dtype=torch.float32)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ConfigError(f"{type(self).__name__}: sparse gradients are not supported")
                state = self.state[p] if len(self.state[p]) else self._init_state(p)
                p.data = p.data.contiguous()
                state["step"] += 1
                if state["state1"].dtype == torch.uint8:
                    self._update_8bit(p, state, group)
                else:
                    self._update_32bit(p, state, group)
        return loss

    def _update_8bit(self, p: torch.Tensor, state: dict, group: dict) -> None:
        beta1, beta2 = group["betas"][0], group["betas"][1]
        lr, eps, wd, step = group["lr"], group["eps"], group["weight_decay"], state["step"]
        m = _dequant(state["state1"], state["absmax1"], state["qmap1"])
        v = _dequant(state["state2"], state["absmax2"], state["qmap2"])
        p32, correction1, correction2 = _moments(p, m, v, beta1, beta2, step)
        denom = (v.sqrt() / correction2).add_(eps)
        if wd > 0.0:
            p32.mul_(1.0 - lr * wd)
        p32.addcdiv_(m, denom, value=-lr / correction1)
        p.data.copy_(p32)
        _requant(m, state["qmap1"], state["state1"], state["absmax1"], self.bnb_cpu_compatible)
        _requant(v, state["qmap2"], state["state2"], state["absmax2"], self.bnb_cpu_compatible)

    def _update_32bit(self, p: torch.Tensor, state: dict, group: dict) -> None:
        beta1, beta2 = group["betas"][0], group["betas"][1]
        lr, eps, wd, step = group["lr"], group["eps"], group["weight_decay"], state["step"]
        m, v = state["state1"], state["state2"]
        p32, correction1, correction2 = _moments(p, m, v, beta1, beta2, step)
        step_size = -lr * correction2 / correction1
        if wd > 0.0:
            p32.mul_(1.0 - lr * wd)
        update = m / (v.sqrt() + eps * correction2)
        p32.add_(update, alpha=step_size * 1.0)
        p.data.copy_(p32)


class AdamW8bit(Adam8bit):
    """AdamW with 8-bit blockwise states (bnb semantics; default weight_decay 1e-2)."""

    default_weight_decay = 1e-2
