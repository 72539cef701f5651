"""Evaluation: perplexity and KL against a base (llama-perplexity's method), importance-matrix collection.

Public API::

    from edgequant.eval import perplexity, make_imatrix
    perplexity("model-Q4_K_M.gguf", base_path="model-F32.gguf", n_ctx=512, n_chunks=4)  # -> dict
    make_imatrix("model-F32.gguf", "imatrix.gguf", "calibration.txt", n_ctx=512)         # -> dict
"""

from edgequant.eval.imatrix_job import make_imatrix
from edgequant.eval.perplexity import CachedLogits, evaluate_chunks, perplexity
from edgequant.eval.text import DEFAULT_CALIBRATION_TEXT, DEFAULT_TEXT, Chunking, split_chunks

__all__ = [
    "DEFAULT_CALIBRATION_TEXT",
    "DEFAULT_TEXT",
    "CachedLogits",
    "Chunking",
    "evaluate_chunks",
    "make_imatrix",
    "perplexity",
    "split_chunks",
]
