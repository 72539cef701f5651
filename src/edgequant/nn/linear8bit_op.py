"""``edgequant::llm_int8_linear``: ``Linear8bitLt``'s frozen-weight forward as a PyTorch custom op for
``torch.compile``.

The native and numba kernels behind ``nn.linear8bit.llm_int8_forward`` cannot be traced by dynamo
(``fullgraph=True`` fails on them). Under ``torch.compile`` the layer calls this opaque op instead; its
values are exactly ``llm_int8_forward``'s (the op runs it), its fake implementation gives the shape
``(M, N)`` in x's dtype. Backward (weights frozen, as the eager ``_LLMInt8``):
``grad_x = grad_y @ (CB * SCB[:, None] * float32(1/127)).to(grad_y.dtype)``, ``grad_bias = grad_y.sum(0)``.
The outlier columns of a compiled call are not recorded on the layer (``outlier_cols`` keeps the last eager
call's).
"""

from __future__ import annotations

import torch

from edgequant.bnb.int8 import DEQ_SCALE
from edgequant.nn.linear8bit import llm_int8_forward


@torch.library.custom_op("edgequant::llm_int8_linear", mutates_args=())
def llm_int8_linear(
    x2: torch.Tensor, cb: torch.Tensor, scb: torch.Tensor, bias: torch.Tensor | None, threshold: float
) -> torch.Tensor:
    return llm_int8_forward(x2, cb, scb, bias, threshold)[0]


@llm_int8_linear.register_fake
def _(x2, cb, scb, bias, threshold):
    return x2.new_empty((x2.shape[0], cb.shape[0]))


def _setup(ctx, inputs, output):
    _, cb, scb, bias, _ = inputs
    ctx.save_for_backward(cb, scb)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_y):
    cb, scb = ctx.saved_tensors
    w = cb * scb.unsqueeze(-1) * DEQ_SCALE
    grad_x = grad_y @ w.to(grad_y.dtype)
    grad_b = grad_y.sum(0) if ctx.has_bias else None
    return grad_x, None, None, grad_b, None


llm_int8_linear.register_autograd(_backward, setup_context=_setup)
