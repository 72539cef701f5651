"""Quantization-aware training: fake quantizers (STE, LSQ, LSQ+, soft tanh, sigmoid-surrogate rounding,
Gumbel-softmax, ggml-exact grids, real codecs), schedules, distillation, distributed helpers and export.

    model = edgequant.qat.prepare(model, QATConfig(weight=QuantSpec(bits=4, method="lsq")))
    ...train with any loop (build the optimizer after prepare)...
    model = edgequant.qat.convert(model)          # plain modules holding the quantized weights

Deployable formats (fake equals real): ``QuantSpec(method="ggml", format="Q4_0"|"Q4_1"|"Q8_0")`` and
``method="codec"`` (any GGUF type) → ``export_gguf(model, tokenizer, "out.gguf")``; ``method="bnb"`` (NF4/FP4)
→ ``to_linear4bit(model)``; ``init_from_gguf(model, "gptq.gguf")`` starts learned ggml grids from a file's
codes and scales (e.g. GPTQ-rounded). LLM fine-tuning with distillation: ``distill_lm(student, teacher,
tokens, LMTrainConfig(...))``. Data-parallel: ``edgequant.qat.distributed``.
"""

from edgequant.qat.batchnorm import reestimate_bn
from edgequant.qat.config import QATConfig, QuantSpec
from edgequant.qat.distill import distillation_loss, kd_kl_loss
from edgequant.qat.export import export_gguf, to_linear4bit
from edgequant.qat.gguf_init import init_from_gguf
from edgequant.qat.lm_training import LMTrainConfig, distill_lm, evaluate_lm
from edgequant.qat.mixed_precision import MasterWeights, checkpoint_modules
from edgequant.qat.prepare import convert, prepare, qat_modules, quantizers, set_bits, set_scope
from edgequant.qat.regularizer import range_regularizer
from edgequant.qat.schedules import (
    DecayingWeight,
    ProgressiveBits,
    ProgressiveScope,
    cosine_lr_lambda,
    freeze_modules,
    qat_learning_rate,
    set_gumbel_step,
)

__all__ = [
    "DecayingWeight",
    "LMTrainConfig",
    "MasterWeights",
    "ProgressiveBits",
    "ProgressiveScope",
    "QATConfig",
    "QuantSpec",
    "checkpoint_modules",
    "convert",
    "cosine_lr_lambda",
    "distill_lm",
    "distillation_loss",
    "evaluate_lm",
    "export_gguf",
    "freeze_modules",
    "init_from_gguf",
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
    "to_linear4bit",
]
