"""``QuantizedLinear``: what Linear4bit, Linear8bitLt and Int8DynamicLinear share.

- Construction: positive ``in_features`` / ``out_features``, nn.Linear's initialisation when no ``weight=``
  is given (as bitsandbytes' layers; on ``device``, ``meta`` included), ``bias``, ``layer_name``;
  ``from_linear`` builds from a float layer. ``quantize_on_init`` (a class attribute): True for edgequant's
  layers (a layer built off the ``meta`` device holds a quantized weight at once), False for the
  bitsandbytes-contract classes of ``edgequant.nn.bnb_dropin`` (the float weight waits in its ``Params4bit`` /
  ``Int8Params`` for ``.to(device)`` or the first use, as bitsandbytes' layers).
- Checks that name the layer: the weight's shape, the input's last dimension, finite weights.
- ``state_dict`` loading: a subclass validates and adopts its own weight layout in ``_load_weight`` (returning
  the keys it took); the bias (shape checked), buffers and the missing / unexpected key bookkeeping are
  ``nn.Module``'s.
"""

from __future__ import annotations

import torch
from torch import nn

from edgequant.errors import FormatError, NonFiniteError, ShapeError


def check_finite(w: torch.Tensor, name: str, why: str) -> None:
    """NonFiniteError naming ``name`` and the index of the first NaN/Inf of ``w``."""
    if not bool(torch.isfinite(w).all()):
        bad = torch.nonzero(~torch.isfinite(w))[0].tolist()
        raise NonFiniteError(f"{name}: element {tuple(bad)} is not finite; {why}")


class QuantizedLinear(nn.Module):
    """Base of the quantized linear layers; subclasses call ``_init_linear`` first in ``__init__``."""

    bias_keeps_requires_grad = False  # from_linear: copy the float bias' requires_grad (Linear4bit) or not
    quantize_on_init = True  # see the module docstring

    def _init_linear(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        weight: torch.Tensor | None,
        name: str,
        device=None,
    ) -> torch.Tensor:
        """Set the features, name and bias; return the float weight to quantize (nn.Linear's if None, built
        on ``device``: on ``meta`` it has a shape and no values)."""
        kind = type(self).__name__
        if in_features <= 0 or out_features <= 0:
            raise ShapeError(
                f"{kind} {name}: in/out features must be positive, got {in_features}x{out_features}"
            )
        self.in_features, self.out_features = in_features, out_features
        self.layer_name = name
        if weight is None:  # nn.Linear's initialisation, as bitsandbytes' layers
            ref = nn.Linear(in_features, out_features, bias=bias, device=device)
            weight, init_bias = ref.weight.detach(), ref.bias
        else:
            init_bias = torch.zeros(out_features)
        self.bias = nn.Parameter(init_bias.detach().clone()) if bias else None
        return weight

    @classmethod
    def from_linear(cls, linear: nn.Linear, name: str = "", **kwargs):
        """The quantized twin of a float ``nn.Linear`` (its weight quantized, its bias copied)."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            name=name,
            weight=linear.weight.detach(),
            **kwargs,
        )
        if linear.bias is not None:
            grad = linear.bias.requires_grad if cls.bias_keeps_requires_grad else True
            layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=grad)
        return layer

    @property
    def weight_name(self) -> str:
        return f"{self.layer_name or type(self).__name__}.weight"

    def _check_weight_shape(self, weight: torch.Tensor) -> None:
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ShapeError(
                f"{type(self).__name__} {self.layer_name}: weight shape {tuple(weight.shape)} does not fit "
                f"({self.out_features}, {self.in_features})"
            )

    def _check_input(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.in_features:
            raise ShapeError(
                f"{type(self).__name__} {self.layer_name}: input last dim {x.shape[-1]} != "
                f"in_features {self.in_features}"
            )

    # -- state_dict loading -------------------------------------------------------------------------
    def _check_int8_rows(self, state_dict, wkey: str, skey: str, where: str, layout: str) -> None:
        """``wkey``: int8 codes (out, in); ``skey``: one float scale a row (out,). Else FormatError (a foreign
        layout, e.g. a float checkpoint) or ShapeError (another layer's shape), naming the layer."""
        w = state_dict[wkey]
        scale = skey.rsplit(".", 1)[-1]
        if w.dtype != torch.int8 or skey not in state_dict:
            raise FormatError(
                f"{where}: expected {layout} layout ('{wkey}' int8 + '{skey}'), got "
                f"'{wkey}' {w.dtype}{'' if skey in state_dict else f' and no {scale}'}; "
                f"load float checkpoints into nn.Linear and use quantize_ / {type(self).__name__}.from_linear"
            )
        s_shape = tuple(state_dict[skey].shape)
        if tuple(w.shape) != (self.out_features, self.in_features) or s_shape != (self.out_features,):
            raise ShapeError(
                f"{where}: checkpoint weight {tuple(w.shape)} / {scale} {s_shape} do not fit "
                f"({self.out_features}, {self.in_features})"
            )

    def _load_weight(self, state_dict, prefix: str, where: str) -> set[str] | None:
        """Validate and adopt this layer's quantized weight from ``state_dict``; return the keys taken, or
        None to leave the weight to ``nn.Module`` (called only when ``prefix + "weight"`` is present)."""
        return None

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        where = prefix.rstrip(".") or type(self).__name__
        taken = self._load_weight(state_dict, prefix, where) if prefix + "weight" in state_dict else None
        bkey = prefix + "bias"
        if self.bias is not None and bkey in state_dict:
            b = state_dict[bkey]
            if tuple(b.shape) != (self.out_features,):
                raise ShapeError(f"{where}: bias shape {tuple(b.shape)} != ({self.out_features},)")
        if taken:
            state_dict = {k: v for k, v in state_dict.items() if k not in taken}
        n_missing = len(missing_keys)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if taken:  # nn.Module did not see what was loaded above: not missing
            missing_keys[n_missing:] = [k for k in missing_keys[n_missing:] if k not in taken]
