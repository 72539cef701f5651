"""Whole-model jobs: read a model, loop over its tensors or batches, write a result.

Each is one function the CLI calls once (parse -> one call -> render); they return results and never print.
This layer sits directly under ``edgequant.cli`` and may import every layer below it
(see ``docs/architecture.md``).

- :mod:`edgequant.workflows.quantize`: ``quantize_model`` / ``plan_model`` (``llama-quantize IN OUT FTYPE``)
- :mod:`edgequant.workflows.dequantize`: ``dequantize_model`` (GGUF -> F32/F16 GGUF or safetensors)

Modules are imported on demand (``from edgequant.workflows.quantize import quantize_model``) so that importing
one job does not pull in torch for another.
"""
