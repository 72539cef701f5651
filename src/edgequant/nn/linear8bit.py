"""Linear8bitLt: LLM.int8 (Dettmers et al. 2022) with bitsandbytes' weights, state_dict and numerics.

Weight (``has_fp16_weights=False``): ``W16 = W.half()``; ``SCB[o] = max_k |W16[o, k]|`` (float32, one per
output row); ``CB = round(W16 * (127 / SCB[o]))`` as int8 (round half to even). state_dict: ``weight`` int8
(out, in), ``bias``, ``SCB`` float32 (out,), ``weight_format`` uint8 0 ("row") -- bnb's layout.

Forward, in eval **and in training** (bnb 0.50.2 on CPU drops the int8 matmul and the outlier split in
training; edgequant keeps the mixed decomposition in both), x flattened to (M, K):

1. ``A = x.half()``; outliers are ``|A| >= threshold`` (>=, as bnb); ``cols`` = sorted columns holding one.
   Outlier elements are zeroed, ``SCA[i] = max_k |A[i, k]|`` (float32), ``CA = round(A * (127 / SCA[i]))``
   int8, then (M > 1) whole outlier columns of CA are zeroed.
2. ``acc = CA @ CB.T`` exact int32 (see ``int8_matmul``).
3. ``y = float32(acc) * (SCA[i] * SCB[o]) * 6.200124e-05`` (bnb's literal, not 1/127**2), ``+ bias`` (bias in
   x's dtype, added in float32), cast to x's dtype.
4. If cols: ``y = addmm(y, x[:, cols], Wo.T)`` with the original x and
   ``Wo = (CB[:, cols] * SCB[:, None] * float32(1/127)).to(x.dtype)`` (int8-dequantized weights).

Backward (weights frozen): ``grad_x = grad_y @ (CB * SCB[:, None] * float32(1/127))``, bias gets
``grad_y.sum(0)``. With ``has_fp16_weights=True`` the float weight is a trainable parameter, requantized at
every forward, and gets ``grad_W = grad_y.T @ x`` (straight-through).
"""

from __future__ import annotations

import torch
from torch import nn

from edgequant.bnb.int8 import DEQ_SCALE, MM_SCALE, int8_vectorwise_quant
from edgequant.bnb.matmul_state import MatmulLtState
from edgequant.bnb.params import Int8Params, NotQuantizedError
from edgequant.errors import ConfigError, FormatError
from edgequant.kernels.bnb8_linear import llm_int8_gemv
from edgequant.kernels.bnb8_matmul import int8_gemm, int8_matmul_rows
from edgequant.kernels.parallel import run_ranges
from edgequant.nn.quantized_linear import QuantizedLinear, check_finite


def quantize_rows_int8(w: torch.Tensor, name: str = "weight") -> tuple[torch.Tensor, torch.Tensor]:
    """bnb's row-wise weight quantization: (CB int8, SCB float32) from ``w.half()``."""
    check_finite(w, name, "LLM.int8 needs finite weights")
    w16 = w.detach().to(torch.float16)
    scb = w16.abs().max(dim=1).values.float()
    cb = torch.round(w16 * (127.0 / scb.unsqueeze(-1))).to(torch.int8)
    return cb, scb


GEMV_MAX_ROWS = 4
EXACT_K_CHUNK = 1024  # 1024 * 127 * 127 < 2**24: a float32 dot product of this many int8 pairs is exact


def int8_matmul(a: torch.Tensor, w: torch.Tensor, threads: int | None = None) -> torch.Tensor:
    """Exact int32 ``a @ w.T`` for int8 a (M, K), w (N, K).

    Up to 8 rows on an AVX2 CPU: the C kernel ``int8_gemm``; else up to GEMV_MAX_ROWS rows: a numba integer
    kernel. More rows: float32 BLAS on K-chunks of 1024, each chunk exact (partial sums stay below 2**24),
    the chunks added in int32 -- exact, at BLAS speed.
    """
    out = int8_gemm(a, w, threads)
    if out is not None:
        return out
    if a.shape[0] <= GEMV_MAX_ROWS:
        out = torch.empty((a.shape[0], w.shape[0]), dtype=torch.int32)
        run_ranges(
            int8_matmul_rows,
            w.shape[0],
            threads,
            a.contiguous().numpy(),
            w.contiguous().numpy(),
            out.numpy(),
            min_chunk=16,
        )
        return out
    out = None
    for k0 in range(0, a.shape[1], EXACT_K_CHUNK):
        part = torch.mm(a[:, k0 : k0 + EXACT_K_CHUNK].float(), w[:, k0 : k0 + EXACT_K_CHUNK].float().T)
        part = part.to(torch.int32)
        out = part if out is None else out.add_(part)
    return out


def llm_int8_forward(x2, cb, scb, bias, threshold, threads=None):
    """Steps 1-4 of the module docstring on a 2-D x; returns (y in x's dtype, outlier columns).

    Batch 1..8 on an AVX2 CPU: ``kernels.bnb8_linear.llm_int8_gemv`` (native; bit-identical to the torch path
    below, see its docstring); everything it does not cover takes the torch path."""
    fast = llm_int8_gemv(x2, cb, scb, bias, threshold, MM_SCALE, DEQ_SCALE, threads)
    if fast is not None:
        return fast
    ca, sca, cols = int8_vectorwise_quant(x2.to(torch.float16), threshold)
    if cols is None:
        cols = torch.empty(0, dtype=torch.int64)
    acc = int8_matmul(ca, cb, threads)
    y = acc * (sca.unsqueeze(-1) * scb.unsqueeze(0)) * MM_SCALE
    if bias is not None:
        y += bias.to(x2.dtype)
    y = y.to(x2.dtype)
    if cols.numel():
        wo = (cb[:, cols] * scb.unsqueeze(-1) * DEQ_SCALE).to(x2.dtype)
        y = y.addmm(x2[:, cols].contiguous(), wo.t())
    return y, cols


def _llm_int8(x2, module):
    """``_LLMInt8.apply``, or without the autograd node when no gradient can flow (``torch.no_grad()``,
    inference mode, or nothing requires grad): the same values, about 25 us less per call."""
    w, b = module.weight, module.bias
    grads = x2.requires_grad or w.requires_grad or (b is not None and b.requires_grad)
    if torch.is_grad_enabled() and grads:
        return _LLMInt8.apply(x2, w, b, module)
    cb, scb = _int8_weight(w, module)
    y, module.outlier_cols = llm_int8_forward(x2, cb, scb, b, module.threshold, module.threads)
    return y


def _int8_weight(weight, module):
    """(CB, SCB): the layer's int8 weight, or the float weight quantized now (``has_fp16_weights``)."""
    if module.has_fp16_weights:
        return quantize_rows_int8(weight, module.layer_name or "Linear8bitLt.weight")
    return module.weight.data, module.SCB


class _LLMInt8(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, weight, bias, module):
        cb, scb = _int8_weight(weight, module)
        y, cols = llm_int8_forward(x2, cb, scb, bias, module.threshold, module.threads)
        module.outlier_cols = cols
        ctx.save_for_backward(x2, cb, scb)
        ctx.has_bias = bias is not None
        ctx.fp16_weights = module.has_fp16_weights
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x2, cb, scb = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            w = cb * scb.unsqueeze(-1) * DEQ_SCALE
            grad_x = grad_y @ w.to(grad_y.dtype)
        if ctx.fp16_weights and ctx.needs_input_grad[1]:
            grad_w = grad_y.t() @ x2
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_y.sum(0)
        return grad_x, grad_w, grad_b, None


class Linear8bitLt(QuantizedLinear):
    """LLM.int8 linear layer, bitsandbytes-compatible (see the module docstring).

    bitsandbytes' module contract: ``weight`` is always an ``edgequant.bnb.Int8Params``, ``state`` a
    ``MatmulLtState`` (``threshold``, ``has_fp16_weights``, and after quantization ``CB`` = the int8
    weight and ``SCB`` its row scales; ``layer.SCB`` is the weight's). The layer can be built on
    ``device="meta"``; a float weight (assigned, or loaded from a float checkpoint) is quantized by
    ``.to(device)`` or at the first use. Loading an int8 checkpoint (one with ``SCB``) into a layer whose
    weight is not quantized yet raises ``NotQuantizedError`` (a RuntimeError), as bitsandbytes. Off the
    ``meta`` device edgequant's class quantizes at construction (``quantize_on_init``), so it takes an int8
    checkpoint at once; ``edgequant.nn.bnb_dropin``'s classes follow bnb (defaults
    ``has_fp16_weights=True``, ``threshold=0.0``, quantization on ``.to()``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        has_fp16_weights: bool = False,
        threshold: float = 6.0,
        index=None,
        device=None,
        *,
        weight: torch.Tensor | None = None,
        threads: int | None = None,
        name: str = "",
    ):
        super().__init__()
        given = weight is not None
        weight = self._init_linear(in_features, out_features, bias, weight, name, device)
        self.state = MatmulLtState()
        self.state.threshold = float(threshold)
        self.state.has_fp16_weights = has_fp16_weights
        self.state.use_pool = threshold > 0.0 and not has_fp16_weights
        self.index = index
        self.threads = threads
        self.outlier_cols = torch.empty(0, dtype=torch.int64)
        self.weight: nn.Parameter = Int8Params(
            weight.detach(), requires_grad=has_fp16_weights, has_fp16_weights=has_fp16_weights
        )
        if given or (self.quantize_on_init and weight.device.type != "meta"):
            self.set_weight(weight)

    @property
    def threshold(self) -> float:
        """Outlier threshold of the mixed decomposition (``state.threshold``)."""
        return self.state.threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self.state.threshold = float(value)

    @property
    def has_fp16_weights(self) -> bool:
        """Train the float weight, requantized at every forward (``state.has_fp16_weights``)."""
        return self.state.has_fp16_weights

    @has_fp16_weights.setter
    def has_fp16_weights(self, value: bool) -> None:
        self.state.has_fp16_weights = value

    @property
    def SCB(self) -> torch.Tensor | None:
        """float32 row scales of the int8 weight (the weight's ``SCB``); None before quantization."""
        scb = getattr(self.weight, "SCB", None)
        return scb if scb is not None else self.state.SCB

    @SCB.setter
    def SCB(self, value: torch.Tensor) -> None:
        self.weight.SCB = value
        self._sync_state()

    @property
    def is_quantized(self) -> bool:
        """Whether ``weight`` holds the int8 codes (always False with ``has_fp16_weights``)."""
        return self.weight.dtype == torch.int8

    def set_weight(self, weight: torch.Tensor) -> None:
        self._check_weight_shape(weight)
        if self.has_fp16_weights:
            self.weight = Int8Params(
                weight.detach().clone().float(), requires_grad=True, has_fp16_weights=True
            )
            return
        cb, scb = quantize_rows_int8(weight, self.weight_name)
        self._adopt(cb, scb)

    def _adopt(self, cb: torch.Tensor, scb: torch.Tensor) -> None:
        self.weight = Int8Params(cb, requires_grad=False, has_fp16_weights=False, CB=cb, SCB=scb)
        self._sync_state()

    def _sync_state(self) -> None:
        """``state.CB`` / ``state.SCB`` = the weight's codes and scales (None before quantization)."""
        quantized = self.is_quantized
        self.state.CB = self.weight.data if quantized else None
        self.state.SCB = getattr(self.weight, "SCB", None) if quantized else None

    def quantize_weight(self) -> None:
        """Quantize a float weight now (what ``.to(device)`` does); nothing if quantized or fp16 weights.

        ``Int8Params`` quantize in place (``quantize_rows_int8``'s codes and scales: bnb's); a plain float
        Parameter assigned to the layer is replaced by its quantized twin (a tie to it does not survive).
        """
        w = self.weight
        if self.has_fp16_weights or self.is_quantized:
            self._sync_state()  # a quantized weight assigned from outside (transformers' loader)
            return
        if w.device.type == "meta":
            raise ConfigError(
                f"{self.weight_name}: the weight is on the meta device; assign or load it, then .to(device)"
            )
        if isinstance(w, Int8Params) and w.device.type == "cpu":
            w._quantize(w.device)
            self._sync_state()
        else:
            self.set_weight(w.data)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._sync_state()
        return self

    def dequantize(self) -> torch.Tensor:
        """float32 weight: ``CB * SCB[:, None] * float32(1/127)`` (or the float weight itself)."""
        if self.has_fp16_weights:
            return self.weight.detach()
        self.quantize_weight()
        return self.weight.data * self.SCB.unsqueeze(-1) * DEQ_SCALE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        self.quantize_weight()
        self.state.is_training = self.training
        x2 = x.reshape(-1, self.in_features)
        if torch.compiler.is_compiling() and not self.has_fp16_weights:  # the same values, traceable
            from edgequant.nn.linear8bit_op import llm_int8_linear

            y = llm_int8_linear(x2, self.weight.data, self.SCB, self.bias, self.threshold)
        else:
            y = _llm_int8(x2, self)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, "
            f"threshold={self.threshold}, has_fp16_weights={self.has_fp16_weights}"
        )

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        scb = self.SCB
        if not self.has_fp16_weights and self.is_quantized and scb is not None:
            destination[prefix + "SCB"] = scb if keep_vars else scb.detach()
            destination[prefix + "weight_format"] = torch.tensor(0, dtype=torch.uint8)

    def _load_weight(self, state_dict, prefix, where):
        if self.has_fp16_weights:
            return None
        wkey, skey, fkey = prefix + "weight", prefix + "SCB", prefix + "weight_format"
        if not self.is_quantized:
            if skey in state_dict:
                raise NotQuantizedError(
                    f"{where}: Loading a quantized checkpoint into non-quantized Linear8bitLt is not "
                    f"supported; call .to(device) first (it quantizes the layer), then load_state_dict"
                )
            return None  # a float checkpoint into a float weight: nn.Module copies it; .to(device) quantizes
        self._check_int8_rows(state_dict, wkey, skey, where, "bitsandbytes' Linear8bitLt")
        if fkey in state_dict and int(state_dict[fkey]) != 0:
            raise FormatError(f"{where}: weight_format {int(state_dict[fkey])} is not 0 ('row')")
        self._adopt(state_dict[wkey].detach().clone(), state_dict[skey].detach().clone().float())
        return {wkey, skey, fkey}
