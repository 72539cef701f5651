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

from edgequant.bnb import QuantState, dequantize_4bit, ops, quantize_4bit
from edgequant.bnb.blockwise import recover_absmax
from edgequant.bnb.checks import check_blocksize, check_quant_type
from edgequant.bnb.codes import code_table_np
from edgequant.bnb.fourbit import check_state_matches, packed_bytes
from edgequant.bnb.matmul import matmul_4bit
from edgequant.bnb.params import Params4bit
from edgequant.errors import ConfigError, FormatError, ShapeError
from edgequant.kernels import bnb4_native
from edgequant.nn.quantized_linear import QuantizedLinear

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


def _spec_property(attr: str, doc: str):
    """A layer attribute read from (and written to) its ``Params4bit`` weight, as bnb keeps it there."""

    def get(self):
        return getattr(self.weight, attr, self._spec[attr])

    def put(self, value):
        self._spec[attr] = value
        if isinstance(self.weight, Params4bit):
            setattr(self.weight, attr, value)

    return property(get, put, doc=doc)


class Linear4bit(QuantizedLinear):
    """4-bit (NF4/FP4) linear layer, bitsandbytes-compatible. Defaults as bnb: fp4, double quantization on.

    Build from a float layer with ``Linear4bit.from_linear(linear, quant_type="nf4")``, or pass
    ``weight=`` (out, in) to the constructor; without it the weight is nn.Linear's random initialisation.

    bitsandbytes' module contract: ``weight`` is always an ``edgequant.bnb.Params4bit``; the layer can be
    built on ``device="meta"`` (nothing quantized, nothing allocated), its weight assigned or loaded as floats
    (``layer.weight = Params4bit(w)``, ``load_state_dict`` of a float checkpoint), and ``.to(device)`` or the
    first use (forward, ``dequantize``) quantizes it once. ``quant_state`` is the weight's ``quant_state``
    (None before quantization); ``quant_type`` / ``blocksize`` / ``compress_statistics`` / ``quant_storage``
    are the weight's. Off the ``meta`` device edgequant's class quantizes at construction
    (``quantize_on_init``); ``edgequant.nn.bnb_dropin``'s classes, bnb's contract, wait.
    """

    bias_keeps_requires_grad = True

    quant_type = _spec_property("quant_type", "'nf4' or 'fp4' (the weight's)")
    blocksize = _spec_property("blocksize", "weights per absmax block (the weight's)")
    compress_statistics = _spec_property("compress_statistics", "double quantization of absmax")
    quant_storage = _spec_property("quant_storage", "dtype the packed bytes are stored as")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        compute_dtype: torch.dtype | None = None,
        compress_statistics: bool = True,
        quant_type: str = "fp4",
        quant_storage: torch.dtype = torch.uint8,
        device=None,
        blocksize: int = 64,
        *,
        weight: torch.Tensor | None = None,
        bnb_cpu_compatible: bool = False,
        threads: int | None = None,
        name: str = "",
    ):
        super().__init__()
        given = weight is not None
        weight = self._init_linear(in_features, out_features, bias, weight, name, device)
        check_blocksize(blocksize)
        check_quant_type(quant_type)
        if compute_dtype not in _COMPUTE_DTYPES:
            raise ConfigError(
                f"Linear4bit {name}: compute_dtype {compute_dtype} is not float32/bfloat16/float16"
            )
        self.compute_dtype = compute_dtype
        self.compute_type_is_set = compute_dtype is not None  # bnb's attribute; edgequant never changes it
        self.bnb_cpu_compatible = bnb_cpu_compatible
        self.threads = threads
        self._absmax_cache: tuple[int, torch.Tensor] | None = None
        self._plan_cache: tuple[tuple, bnb4_native.Gemv4Plan] | None = None
        self._module_quant_state: QuantState | None = None
        self._spec = {
            "blocksize": blocksize,
            "compress_statistics": compress_statistics,
            "quant_type": quant_type,
            "quant_storage": quant_storage,
        }
        self.weight: nn.Parameter = Params4bit(weight.detach(), False, module=self, **self._spec)
        if given or (self.quantize_on_init and weight.device.type != "meta"):
            self.set_weight(weight)

    @property
    def quant_state(self) -> QuantState | None:
        """The weight's QuantState; None before quantization (bnb's ``Linear4bit.quant_state``)."""
        if not self.is_quantized:
            return None
        qs = getattr(self.weight, "quant_state", None)
        return qs if qs is not None else self._module_quant_state

    @quant_state.setter
    def quant_state(self, value: QuantState | None) -> None:
        # Params4bit._quantize reports here (module=self); kept to rebuild a weight that lost its state
        self._module_quant_state = value

    @property
    def is_quantized(self) -> bool:
        """Whether ``weight`` holds packed codes (else the float weight waiting for ``.to(device)``)."""
        w = self.weight
        if isinstance(w, Params4bit):
            return bool(w.bnb_quantized)
        return tuple(w.shape) != (self.out_features, self.in_features)

    def set_weight(self, weight: torch.Tensor) -> None:
        """Quantize a float weight of shape (out, in) into this layer."""
        self._check_weight_shape(weight)
        packed, state = quantize_4bit(
            weight,
            blocksize=self.blocksize,
            compress_statistics=self.compress_statistics,
            quant_type=self.quant_type,
            quant_storage=self.quant_storage,
            bnb_cpu_compatible=self.bnb_cpu_compatible,
            threads=self.threads,
            name=self.weight_name,
        )
        self._adopt(packed, state)

    def _adopt(self, packed: torch.Tensor, state: QuantState) -> None:
        self.weight = Params4bit(
            packed,
            requires_grad=False,
            quant_state=state,
            blocksize=state.blocksize,
            compress_statistics=state.nested,
            quant_type=state.quant_type,
            quant_storage=packed.dtype,
            module=self,
            bnb_quantized=True,
        )
        self._module_quant_state = state
        self._absmax_cache = None

    def quantize_weight(self) -> None:
        """Quantize a float weight now (what ``.to(device)`` does); nothing if it is quantized.

        A packed weight that lost its QuantState (a plain Parameter, e.g. after FSDP) gets the layer's back,
        as bnb's ``fix_4bit_weight_quant_state_from_module``.
        """
        w = self.weight
        if self.is_quantized:
            if not isinstance(w, Params4bit) or w.quant_state is None:
                qs = self.quant_state  # a pickled Params4bit comes back as a Parameter with the attributes
                if qs is None:
                    raise FormatError(f"{self.weight_name}: packed 4-bit weight without a quant_state")
                self._adopt(w.data, qs)
            return
        if w.device.type == "meta":
            raise ConfigError(
                f"{self.weight_name}: the weight is on the meta device; assign or load it, then .to(device)"
            )
        if isinstance(w, Params4bit):
            w._quantize(w.device)
            self._absmax_cache = None
        else:
            self.set_weight(w.data)

    # -- use ----------------------------------------------------------------------------------------
    def dequantize(self) -> torch.Tensor:
        """The float weight (out, in) in the original dtype: ``table[code] * absmax`` (float32), then cast."""
        self.quantize_weight()
        if torch.compiler.is_compiling():  # the same values through the traceable custom op
            return ops.dequantize(self.weight.data, self.quant_state)
        return dequantize_4bit(
            self.weight.data,
            self.quant_state,
            bnb_cpu_compatible=False,
            threads=self.threads,
            name=self.weight_name,
        )

    def _gemv_plan(self) -> bnb4_native.Gemv4Plan:
        """The batch-1..8 kernel's pointers for the current weight and absmax (made again when either is
        replaced; in-place writes to them are read by the next call)."""
        w, absmax = self.weight.data, self._absmax_f32()
        # absmax is remade with every new quant_state; the plan keeps both arrays alive, so neither id nor
        # address can be reused while it is cached
        key = (id(absmax), w.data_ptr(), w.numel())
        if self._plan_cache is None or self._plan_cache[0] != key:
            plan = bnb4_native.Gemv4Plan(packed_bytes(w), absmax.numpy(),
                                         code_table_np(self.quant_type), self.out_features, self.in_features,
                                         self.blocksize)  # fmt: skip
            self._plan_cache = (key, plan)
        return self._plan_cache[1]

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
        self._check_input(x)
        self.quantize_weight()
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
        if torch.compiler.is_compiling():  # the same kernel through the traceable custom op
            y = ops.matmul(x2, self.weight.data, self.quant_state)
        else:
            y = self._matmul(x2)
        if bias is not None:
            y += bias
        return y.reshape(*x.shape[:-1], self.out_features).to(inp_dtype)

    def _matmul(self, x2: torch.Tensor) -> torch.Tensor:
        y = self._gemv_plan()(x2, self.threads)  # None where the kernel does not cover the batch or CPU
        if y is not None:
            return y
        return matmul_4bit(
            x2,
            packed_bytes(self.weight.data),
            self._absmax_f32().numpy(),
            self.quant_type,
            self.out_features,
            self.blocksize,
            self.threads,
        )

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
        if self.quant_state is None:  # not quantized yet: the float weight alone, as bnb
            return
        for k, v in self.quant_state.as_dict(packed=True).items():
            destination[prefix + "weight." + k] = v if keep_vars else v.detach()

    def _load_weight(self, state_dict, prefix, where):
        wkey = prefix + "weight"
        qs_keys = [k for k in state_dict if k.startswith(wkey + ".")]
        if not qs_keys:
            w = state_dict[wkey]
            if not self.is_quantized:  # bnb's flow: load the float weight, then .to(device) quantizes it
                return None
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
        state = QuantState.from_dict({k: state_dict[k] for k in qs_keys}, device="cpu", name=wkey)
        w = state_dict[wkey]
        if state.shape is None or tuple(state.shape) != (self.out_features, self.in_features):
            raise ShapeError(
                f"{where}: checkpoint weight shape "
                f"{tuple(state.shape) if state.shape else None} does not fit "
                f"this layer ({self.out_features}, {self.in_features})"
            )
        check_state_matches(w, state, wkey)
        self._adopt(w.detach().clone().to("cpu"), state)
        return {wkey, *qs_keys}
