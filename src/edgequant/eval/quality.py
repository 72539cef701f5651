"""Score several model files against one base on the same chunks (perplexity, KL, top-token agreement).

:class:`QualityComparison` loads the base once (PyTorch backend), tokenizes the text with the base's
tokenizer, cuts llama-perplexity's chunks and keeps the base's scored logits in memory
(:class:`~edgequant.eval.scoring.CachedLogits`); each :meth:`QualityComparison.score` then loads one
file, evaluates the same chunks and frees it, so a caller can quantize, score and delete one file at a
time (``edgequant demo``). All models must share the base's vocabulary (quantized versions of it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from edgequant.eval.scoring import CachedLogits, evaluate_chunks, load_torch_backend
from edgequant.eval.text import Chunking, hf_tokenize, read_text, split_chunks


class QualityComparison:
    """Base model + evaluation chunks; ``score(path)`` gives the summary dict of ``evaluate_chunks``."""

    def __init__(
        self,
        base_path: str | os.PathLike,
        text_path: str | os.PathLike | None = None,
        n_ctx: int = 256,
        n_chunks: int | None = 2,
        threads: int | None = None,
        ggml_rounding: bool = True,
    ) -> None:
        self.chunking = Chunking(n_ctx, n_chunks)
        self.threads = threads
        self.ggml_rounding = ggml_rounding
        text, self.text_path = read_text(text_path)
        t0 = time.perf_counter()
        base, tokenizer = load_torch_backend(base_path, threads, ggml_rounding)
        self.base_load_seconds = time.perf_counter() - t0
        tokens, bos = hf_tokenize(tokenizer, text)
        self.text_tokens = int(tokens.size)
        self.chunks = split_chunks(tokens, self.chunking, bos, source=self.text_path)
        self.base = CachedLogits(base)
        self.base_path = os.fspath(base_path)

    def base_summary(self, on_chunk: Callable[[int, int], None] | None = None) -> dict:
        """Perplexity of the base itself (computes and caches its logits)."""
        return evaluate_chunks(self.base, self.chunks, self.chunking, on_chunk=on_chunk)

    def score(self, path: str | os.PathLike, on_chunk: Callable[[int, int], None] | None = None) -> dict:
        """Perplexity of ``path`` and its KL, top-token agreement, Δp against the base."""
        t0 = time.perf_counter()
        model, _ = load_torch_backend(path, self.threads, self.ggml_rounding)
        load_s = time.perf_counter() - t0
        out = evaluate_chunks(model, self.chunks, self.chunking, base=self.base, on_chunk=on_chunk)
        out["load_seconds"] = load_s
        return out
