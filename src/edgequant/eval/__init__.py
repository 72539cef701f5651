"""Evaluation: perplexity and KL against a base (llama-perplexity's method), imatrix collection hooks.

Public API::

    from edgequant.eval import perplexity
    perplexity("model-Q4_K_M.gguf", base_path="model-F32.gguf", n_ctx=512, n_chunks=4)  # -> dict

The whole imatrix job (collect, merge, write) is ``edgequant.workflows.imatrix.make_imatrix``.

The implementation module is ``edgequant.eval.scoring`` (not ``perplexity``: a submodule of that name
would shadow the ``perplexity`` function as an attribute of this package once imported).
Names are imported lazily: ``import edgequant.eval`` (and the CLI's argument parser, which reads
``DEFAULT_TEXT``) must not pay for importing torch.
"""

from __future__ import annotations

from edgequant.core.lazy import lazy_exports

_LAZY = {
    "CachedLogits": "edgequant.eval.scoring",
    "evaluate_chunks": "edgequant.eval.scoring",
    "perplexity": "edgequant.eval.scoring",
    "QualityComparison": "edgequant.eval.quality",
    "DEFAULT_CALIBRATION_TEXT": "edgequant.eval.text",
    "DEFAULT_TEXT": "edgequant.eval.text",
    "Chunking": "edgequant.eval.text",
    "split_chunks": "edgequant.eval.text",
}

__getattr__, __all__ = lazy_exports(__name__, _LAZY)
