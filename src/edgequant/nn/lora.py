"""LoRA adapters on frozen Linear layers: ``nn.Linear``, quantized ``Linear4bit`` / ``Linear8bitLt`` (QLoRA).

``LoraLinear`` computes ``y = base(x) + (B @ A @ dropout(x)) * scaling`` with the base frozen and only
``A`` (``lora_A``: r x in) and ``B`` (``lora_B``: out x r) trainable — the module structure and forward of
PEFT's ``peft.tuners.lora.layer.Linear`` (``base_layer``, ``lora_A``, ``lora_B``, ``lora_dropout``), minus
PEFT's per-adapter dictionaries, so a model's LoRA keys read ``<module>.lora_A.weight`` as in PEFT's saved
files.

Quantized bases (any module with ``in_features``, ``out_features`` and a ``dequantize()`` returning the float
weight, out x in) go through ``FrozenQuantizedLinear``: the forward runs the base layer's own kernel under
``no_grad`` and saves nothing; the backward rebuilds the weight with ``dequantize()`` and returns
``grad_x = grad_y @ W_deq`` — the QLoRA recipe: gradients flow through the dequantized weights to the
adapters of earlier layers, and no float copy of a frozen weight outlives its layer's backward.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgequant.errors import ConfigError
from edgequant.nn.lora_config import ALL_LINEAR, LoraConfig


def is_quantized_linear(module: nn.Module) -> bool:
    """A quantized Linear by duck typing: has ``in_features``, ``out_features`` and ``dequantize()``."""
    return (
        not isinstance(module, nn.Linear)
        and hasattr(module, "in_features")
        and hasattr(module, "out_features")
        and callable(getattr(module, "dequantize", None))
    )


def is_linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_quantized_linear(module)


def base_weight(module: nn.Module) -> torch.Tensor:
    """The float weight (out x in) of a plain or quantized Linear, detached."""
    if isinstance(module, nn.Linear):
        return module.weight.detach()
    return module.dequantize().detach()


class FrozenQuantizedLinear(torch.autograd.Function):
    """``y = base(x)``; ``dx = dy @ base.dequantize()``. The (quantized) base gets no gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, base: nn.Module) -> torch.Tensor:  # type: ignore[override]
        ctx.base = base
        ctx.x_dtype = x.dtype
        with torch.no_grad():
            return base(x)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):  # type: ignore[override]
        weight = ctx.base.dequantize().to(grad_y.dtype)
        grad_x = grad_y @ weight
        return grad_x.to(ctx.x_dtype), None


class LoraLinear(nn.Module):
    """A frozen base Linear plus a trainable low-rank update (see the module docstring)."""

    def __init__(
        self,
        base_layer: nn.Module,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        *,
        use_rslora: bool = False,
        init: str = "kaiming",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if not is_linear_like(base_layer):
            raise ConfigError(
                "LoRA needs a Linear base layer (nn.Linear, Linear4bit, Linear8bitLt), "
                f"got {type(base_layer).__name__}"
            )
        self.base_layer = base_layer
        self.in_features = int(base_layer.in_features)
        self.out_features = int(base_layer.out_features)
        self.r = int(r)
        self.alpha = float(alpha)
        self.scaling = self.alpha / math.sqrt(self.r) if use_rslora else self.alpha / self.r
        device = _module_device(base_layer)
        self.lora_A = nn.Linear(self.in_features, self.r, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(self.r, self.out_features, bias=False, device=device, dtype=dtype)
        # PEFT uses Identity for p == 0: no RNG draw, and an exact fp forward.
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_lora_parameters(init)
        for p in self.base_layer.parameters():
            p.requires_grad_(False)

    def reset_lora_parameters(self, init: str = "kaiming") -> None:
        with torch.no_grad():
            if init == "kaiming":
                nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
            elif init == "gaussian":
                nn.init.normal_(self.lora_A.weight, std=1 / self.r)
            elif init == "zeros":
                self.lora_A.weight.zero_()
            else:
                raise ConfigError(f"unknown LoRA init {init!r}; use one of kaiming, gaussian, zeros")
            self.lora_B.weight.zero_()

    def delta_weight(self) -> torch.Tensor:
        """The update ``(B @ A) * scaling`` (out x in), float32."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        if is_quantized_linear(base) and x.requires_grad and torch.is_grad_enabled():
            result = FrozenQuantizedLinear.apply(x, base)
        else:
            result = base(x)
        lora_x = self.lora_dropout(x.to(self.lora_A.weight.dtype))
        update = self.lora_B(self.lora_A(lora_x)) * self.scaling
        return result + update.to(result.dtype)

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}, scaling={self.scaling:g}"


def _module_device(module: nn.Module) -> torch.device:
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")


def _output_layer_names(model: nn.Module) -> set[str]:
    """Names PEFT's ``all-linear`` leaves out: the model's output projection (``get_output_embeddings()`` of a
    transformers model; a module named ``lm_head`` for any other model)."""
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if callable(get_out) else None
    if out is not None:
        return {name for name, module in model.named_modules() if module is out}
    return {name for name, _ in model.named_modules() if name.split(".")[-1] == "lm_head"}


def select_lora_targets(model: nn.Module, config: LoraConfig) -> list[str]:
    """Dotted names of the Linear modules ``config`` selects, in module order (``model`` is not changed).

    Raises ``ConfigError`` if nothing matches, if a matched leaf is not a Linear, or if the model already has
    adapters.
    """
    if lora_modules(model):
        raise ConfigError(
            "the model already has LoRA adapters; merge them (merge_lora) or start from a fresh model"
        )
    skip = _output_layer_names(model) if config.target_modules == ALL_LINEAR else set()
    selected = []
    for name, module in model.named_modules():
        if not name or name in skip or not config.is_target(name):
            continue
        if not is_linear_like(module):
            if config.target_modules == ALL_LINEAR:
                continue
            # PEFT raises too; a silent skip would train less than the user asked for.
            if len(list(module.children())) == 0:
                raise ConfigError(
                    f"LoRA target {name!r} is a {type(module).__name__}, not a Linear layer; "
                    "narrow target_modules or add it to exclude_modules"
                )
            continue
        selected.append(name)
    if not selected:
        raise ConfigError(
            f"no Linear module of {type(model).__name__} matches target_modules={config.target_modules!r}; "
            "give names that end module paths (e.g. 'q_proj'), a full-match regex, or 'all-linear'"
        )
    return selected


def apply_lora(model: nn.Module, config: LoraConfig, *, dtype: torch.dtype = torch.float32) -> list[str]:
    """Wrap every Linear of ``model`` that ``config`` selects in a ``LoraLinear`` (in place); freeze all else.

    Returns the dotted names of the wrapped modules, in module order (see ``select_lora_targets`` for errors).
    """
    selected = select_lora_targets(model, config)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in selected:
        parent, attr = _parent_of(model, name)
        wrapped = LoraLinear(
            getattr(parent, attr),
            config.rank_for(name),
            config.alpha_for(name),
            config.dropout,
            use_rslora=config.use_rslora,
            init=config.init,
            dtype=dtype,
        )
        setattr(parent, attr, wrapped)
    return selected


def _parent_of(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


def lora_modules(model: nn.Module) -> dict[str, LoraLinear]:
    """Dotted name -> ``LoraLinear`` for every adapter in ``model``, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLinear)}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter weights: ``<module>.lora_A.weight`` and ``<module>.lora_B.weight`` (detached)."""
    out = {}
    for name, m in lora_modules(model).items():
        out[f"{name}.lora_A.weight"] = m.lora_A.weight.detach()
        out[f"{name}.lora_B.weight"] = m.lora_B.weight.detach()
    return out


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable adapter parameters (what to hand to the optimizer)."""
    params = []
    for m in lora_modules(model).values():
        params += [m.lora_A.weight, m.lora_B.weight]
    return params
