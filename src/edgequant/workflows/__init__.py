"""Whole-model jobs: read a model, loop over its tensors or batches, write a result.

Each is one function the CLI calls once (parse -> one call -> render); they return results and never print.
This layer sits directly under ``edgequant.cli`` and may import every layer below it
(see ``docs/architecture.md``).

- :mod:`edgequant.workflows.quantize`: ``quantize_model`` / ``plan_model`` (``llama-quantize IN OUT FTYPE``)
- :mod:`edgequant.workflows.dequantize`: ``dequantize_model`` (GGUF -> F32/F16 GGUF or safetensors)
- :mod:`edgequant.workflows.imatrix`: ``make_imatrix`` (collect with ``eval.imatrix_collect``, merge, write)
- :mod:`edgequant.workflows.qat`: ``finetune_qat`` (QAT fine-tune of a causal LM, loss log, GGUF export)
- :mod:`edgequant.workflows.demo`: ``run_demo`` (expand, quantize to several ftypes, quality table data)

HF <-> GGUF conversion (``models.convert_hf_to_gguf``, ``models.export_hf``) stays in ``models/``: the QAT
and LoRA exports of ``qat/`` and ``nn/`` (layers below this one) call it.

Modules are imported on demand (``from edgequant.workflows.quantize import quantize_model``) so that importing
one job does not pull in torch for another.
"""
