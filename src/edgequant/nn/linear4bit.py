"""Linear4bit: an nn.Linear whose weight is stored as bitsandbytes NF4/FP4 (packed codes + QuantState).

Weight storage and ``state_dict`` are bnb's ``Linear4bit`` layout (a checkpoint moves both ways):
``weight`` uint8 ``(ceil(out*in/2), 1)``, ``bias``, and under ``weight.``: ``absmax``, ``quant_map``,
[``nested_absmax``, ``nested_quant_map``], ``quant_state.bitsandbytes__nf4|fp4`` (see bnb.quant_state).

Forward, float32 operation order:

- Training, or an input that requires grad (the definition, bit-identical to bnb's non-AVX512-BF16 path):
  ``x_c = x.to(compute_dtype)``; ``W = dequantize_4bit(weight).to(compute_dtype)`` (float32 ``table[code] *
  absmax``, then the cast); ``y = F.linear(x_c, W, bias.to(compute_dtype))``; ``y.to(x.dtype)``.
  Backward recomputes W (nothing but the packed weight is kept) and returns ``grad_x = grad_y @ W``; the
  weight itself is frozen.
- Inference (eval, or no input grad) with float32 compute: the fast kernel of ``bnb.matmul`` (not
  bit-identical to the definition: different summation order), then ``+ bias`` in float32.
- Inference with bfloat16 compute: the definition above.

compute_dtype None: float32 and bfloat16 inputs compute in their own dtype (as bnb); float16 inputs compute in
float32 (bnb would compute in float16) and the output is cast back to float16.
"""

from __future__ import annotations

import torch
from torch import nn

from edgequant.bnb import QuantState, dequantize_4bit, quantize_4bit
from edgequant.bnb.blockwise import recover_absmax
from edgequant.bnb.checks import check_blocksize, check_quant_type
from edgequant.bnb.fourbit import check_state_matches, packed_bytes
from edgequant.bnb.matmul import matmul_4bit
from edgequant.errors import ConfigError, FormatError, ShapeError

_COMPUTE_DTYPES = (None, torch.float32, torch.bfloat16, torch.float16)


class _Dequant4bitLinear(torch.autograd.Function):
    """y = F.linear(x, W, bias) with W dequantized on the fly; backward recomputes W (no fp32 copy kept)."""

    @staticmethod
    def forward(ctx, x, bias, module):
        w = module.dequantize().to(x.dtype)
        ctx.module = module
        ctx.has_bias = bias is not None
        return torch.nn.functional.linear(x, w, bias)

    @staticmethod
    def backward(ctx, grad_out):
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            w = ctx.module.dequantize().to(grad_out.dtype)
            grad_x = grad_out @ w
        if ctx.has_bias and ctx.needs_input_grad[1]:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        return grad_x, grad_bias, None


class Linear4bit(nn.Module):
    """4-bit (NF4/FP4) linear layer, bitsandbytes-compatible. Defaults as bnb: fp4, double quantization on.

    Build from a float layer with ``Linear4bit.from_linear(linear, quant_type="nf4")``, or pass
    ``weight=`` (out, in) to the constructor; without it the weight is nn.Linear's random initialisation.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        compute_dtype: torch.dtype | None = None,
        compress_statistics: bool = True,
        quant_type: str = "fp4",
        quant_storage: torch.dtype = torch.uint8,
        blocksize: int = 64,
        device=None,
        *,
        weight: torch.Tensor | None = None,
        bnb_cpu_compatible: bool = False,
        threads: int | None = None,
        name: str = "",
    ):
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ShapeError(
                f"Linear4bit {name}: in/out features must be positive, got {in_features}x{out_features}"
            )
        check_blocksize(blocksize)
        check_quant_type(quant_type)
        if compute_dtype not in _COMPUTE_DTYPES:
            raise ConfigError(
                f"Linear4bit {name}: compute_dtype {compute_dtype} is not float32/bfloat16/float16"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.compute_dtype = compute_dtype
        self.compress_statistics = compress_statistics
        self.quant_type = quant_type
        self.quant_storage = quant_storage
        self.blocksize = blocksize
        self.bnb_cpu_compatible = bnb_cpu_compatible
        self.threads = threads
        self.layer_name = name
        if weight is None:  # nn.Linear's initialisation, as bitsandbytes' layers
            ref = nn.Linear(in_features, out_features, bias=bias)
            weight, init_bias = ref.weight.detach(), ref.bias
        else:
            init_bias = torch.zeros(out_features)
        self.bias = nn.Parameter(init_bias.detach().clone()) if bias else None
        self.weight: nn.Parameter
        self.quant_state: QuantState
        self.set_weight(weight)
        self._absmax_cache: tuple[int, torch.Tensor] | None = None

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_linear(cls, linear: nn.Linear, name: str = "", **kwargs) -> Linear4bit:
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            name=name,
            weight=linear.weight.detach(),
            **kwargs,
        )
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=linear.bias.requires_grad)
        return layer

    def set_weight(self, weight: torch.Tensor) -> None:
        """Quantize a float weight of shape (out, in) into this layer."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ShapeError(
                f"Linear4bit {self.layer_name}: weight shape {tuple(weight.shape)} does not fit "
                f"({self.out_features}, {self.in_features})"
            )
        packed, state = quantize_4bit(
            weight,
            blocksize=self.blocksize,
            compress_statistics=self.compress_statistics,
            quant_type=self.quant_type,
            quant_storage=self.quant_storage,
            bnb_cpu_compatible=self.bnb_cpu_compatible,
            threads=self.threads,
            name=f"{self.layer_name or 'Linear4bit'}.weight",
        )
        self.weight = nn.Parameter(packed, requires_grad=False)
        self.quant_state = state
        self._absmax_cache = None

    # -- use ----------------------------------------------------------------------------------------
    def dequantize(self) -> torch.Tensor:
        """The float weight (out, in) in the original dtype: ``table[code] * absmax`` (float32), then cast."""
        return dequantize_4bit(
            self.weight.data,
            self.quant_state,
            bnb_cpu_compatible=False,
            threads=self.threads,
            name=f"{self.layer_name or 'Linear4bit'}.weight",
        )

    def _absmax_f32(self) -> torch.Tensor:
        key = id(self.quant_state)
        if self._absmax_cache is None or self._absmax_cache[0] != key:
            self._absmax_cache = (key, recover_absmax(self.quant_state).contiguous())
        return self._absmax_cache[1]

    def _compute_dtype_for(self, x: torch.Tensor) -> torch.dtype:
        if self.compute_dtype is not None:
            return self.compute_dtype
        return x.dtype if x.dtype in (torch.float32, torch.bfloat16) else torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ShapeError(
                f"Linear4bit {self.layer_name}: input last dim {x.shape[-1]} != "
                f"in_features {self.in_features}"
            )
        inp_dtype = x.dtype
        cdt = self._compute_dtype_for(x)
        xc = x.to(cdt)
        bias = None if self.bias is None else self.bias.to(cdt)
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or (self.bias is not None and self.bias.requires_grad)
        )
        if self.training or needs_grad or cdt != torch.float32 or xc.numel() == 0:
            return _Dequant4bitLinear.apply(xc, bias, self).to(inp_dtype)
        x2 = xc.reshape(-1, self.in_features)
        y = matmul_4bit(
            x2,
            packed_bytes(self.weight.data),
            self._absmax_f32().numpy(),
            self.quant_type,
            self.out_features,
            self.blocksize,
            self.threads,
        )
        if bias is not None:
            y += bias
        return y.reshape(*x.shape[:-1], self.out_features).to(inp_dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, "
            f"quant_type={self.quant_type}, blocksize={self.blocksize}, "
            f"compress_statistics={self.compress_statistics}, compute_dtype={self.compute_dtype}"
        )

    # -- bitsandbytes state_dict layout -------------------------------------------------------------
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for k, v in self.quant_state.as_dict(packed=True).items():
            destination[prefix + "weight." + k] = v if keep_vars else v.detach()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        where = prefix.rstrip(".") or "Linear4bit"
        wkey = prefix + "weight"
        qs_keys = [k for k in state_dict if k.startswith(wkey + ".")]
        if wkey in state_dict and not qs_keys:
            w = state_dict[wkey]
            if w.is_floating_point() and tuple(w.shape) == (self.out_features, self.in_features):
                raise FormatError(
                    f"{where}: the state_dict holds a float weight {tuple(w.shape)}, "
                    f"not a bitsandbytes 4-bit "
                    f"one; load it into nn.Linear and use Linear4bit.from_linear / quantize_"
                )
            raise FormatError(
                f"{where}: '{wkey}' has no quant_state entries ('{wkey}.absmax', "
                f"'{wkey}.quant_state.bitsandbytes__nf4|fp4'); this is not bitsandbytes' Linear4bit layout"
            )
        if wkey in state_dict:
            qs = {k[len(wkey) + 1 :]: state_dict[k] for k in qs_keys}
            state = QuantState.from_dict(qs, device="cpu", name=wkey)
            w = state_dict[wkey]
            if state.shape is None or tuple(state.shape) != (self.out_features, self.in_features):
                raise ShapeError(
                    f"{where}: checkpoint weight shape "
                    f"{tuple(state.shape) if state.shape else None} does not fit "
                    f"this layer ({self.out_features}, {self.in_features})"
                )
            check_state_matches(w, state, wkey)
            self.weight = nn.Parameter(w.detach().clone().to("cpu"), requires_grad=False)
            self.quant_state = state
            self.quant_type = state.quant_type
            self.blocksize = state.blocksize
            self.compress_statistics = state.nested
            self._absmax_cache = None
        if self.bias is not None and prefix + "bias" in state_dict:
            b = state_dict[prefix + "bias"]
            if tuple(b.shape) != (self.out_features,):
                raise ShapeError(f"{where}: bias shape {tuple(b.shape)} != ({self.out_features},)")
            with torch.no_grad():
                self.bias.data = b.detach().clone().to(self.bias.dtype)
        elif self.bias is not None and strict:
            missing_keys.append(prefix + "bias")
        if strict and wkey not in state_dict:
            missing_keys.append(wkey)
        for k in state_dict:
            if k.startswith(prefix) and k not in (wkey, prefix + "bias") and not k.startswith(wkey + "."):
                rest = k[len(prefix) :]
                if "." not in rest:
                    unexpected_keys.append(k)

