"""Evaluation: perplexity and KL against a base (llama-perplexity's method), importance-matrix collection.

Public API::

    from edgequant.eval import perplexity, make_imatrix
    perplexity("model-Q4_K_M.gguf", base_path="model-F32.gguf", n_ctx=512, n_chunks=4)  # -> dict
    make_imatrix("model-F32.gguf", "imatrix.gguf", "calibration.txt", n_ctx=512)         # -> dict

The implementation module is ``edgequant.eval.scoring`` (not ``perplexity``: a submodule of that name
would shadow the ``perplexity`` function as an attribute of this package once imported).
Names are imported lazily: ``import edgequant.eval`` (and the CLI's argument parser, which reads
``DEFAULT_TEXT``) must not pay for importing torch.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "make_imatrix": "edgequant.eval.imatrix_job",
    "CachedLogits": "edgequant.eval.scoring",
    "evaluate_chunks": "edgequant.eval.scoring",
    "perplexity": "edgequant.eval.scoring",
    "QualityComparison": "edgequant.eval.quality",
    "DEFAULT_CALIBRATION_TEXT": "edgequant.eval.text",
    "DEFAULT_TEXT": "edgequant.eval.text",
    "Chunking": "edgequant.eval.text",
    "split_chunks": "edgequant.eval.text",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgequant.eval' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
