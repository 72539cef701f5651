"""Quantization-aware training: fake quantizers (STE, LSQ, LSQ+, soft tanh, sigmoid-surrogate rounding,
Gumbel-softmax, ggml-exact grids, real codecs), schedules, distillation, distributed helpers and export.

    model = edgequant.qat.prepare(model, QATConfig(weight=QuantSpec(bits=4, method="lsq")))
    ...train with any loop (build the optimizer after prepare)...
    model = edgequant.qat.convert(model)          # plain modules holding the quantized weights
"""

from edgequant.qat.batchnorm import reestimate_bn
from edgequant.qat.config import QATConfig, QuantSpec
from edgequant.qat.distill import distillation_loss, kd_kl_loss
from edgequant.qat.prepare import convert, prepare, qat_modules, quantizers, set_bits, set_scope
from edgequant.qat.regularizer import range_regularizer
from edgequant.qat.schedules import (
    DecayingWeight,
    ProgressiveBits,
    ProgressiveScope,
    cosine_lr_lambda,
    qat_learning_rate,
    set_gumbel_step,
)

__all__ = [
    "DecayingWeight",
    "ProgressiveBits",
    "ProgressiveScope",
    "QATConfig",
    "QuantSpec",
    "convert",
    "cosine_lr_lambda",
    "distillation_loss",
    "kd_kl_loss",
    "prepare",
    "qat_learning_rate",
    "qat_modules",
    "quantizers",
    "range_regularizer",
    "reestimate_bn",
    "set_bits",
    "set_gumbel_step",
    "set_scope",
]
