"""What ``edgequant evaluate`` measures of one GGUF file in llama.cpp's runtime (llama-cpp-python).

Quality (:class:`LlamaCppScorer`): llama-perplexity's chunks of a text, scored by
:class:`edgequant.eval.llamacpp_backend.LlamaCppBackend` against the float base model's logits, which are
computed once per text and kept in memory (:class:`edgequant.eval.scoring.CachedLogits`), so every candidate
is compared on the same tokens without a logits file. The numbers kept per text are :data:`QUALITY_KEYS`
plus the 99 % and 99.9 % KLD percentiles.

Speed and memory (:func:`measure_runtime`), reusing the device advisor's measurements
(:mod:`edgequant.workflows.recommend_measure`): generation tokens/s at one thread count is ``probe_threads``;
prompt tokens/s is timed here the same way (cache cleared, ``n_prompt`` tokens decoded in one call, best of
``repeats``); time to first token is the prompt's time plus one generated token; RSS is ``measure_rss``
(VmRSS growth of a child process that loads the file and decodes a ubatch); llama.cpp's KV, compute and
output buffers at ``fit_ctx`` are ``measure_buffers`` (what ``recommend``'s fit rule adds to the weights).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from edgequant.eval.scoring import CachedLogits, evaluate_chunks
from edgequant.eval.text import Chunking, read_text, split_chunks
from edgequant.workflows.recommend_measure import load, measure_buffers, measure_rss, probe_threads

QUALITY_KEYS = (
    "ppl",
    "ppl_uncertainty",
    "delta_ppl",
    "mean_kld",
    "mean_kld_uncertainty",
    "same_top_fraction",
    "mean_delta_p",
    "rms_delta_p",
    "n_scored_tokens",
)


def quality_row(summary: dict) -> dict:
    """The keys of :data:`QUALITY_KEYS` from ``evaluate_chunks``' summary, plus ``kld_99``, ``kld_999``."""
    out = {k: summary[k] for k in QUALITY_KEYS}
    out["kld_99"] = summary["kld_percentiles"]["99"]
    out["kld_999"] = summary["kld_percentiles"]["99.9"]
    return out


class LlamaCppScorer:
    """The base model's chunks of each named text, scored once in llama.cpp; ``score(path)`` per candidate.

    ``texts``: {name: path}. The base is loaded once, evaluated on every text (its logits cached) and
    closed; ``base`` then holds its summary (PPL) per text."""

    def __init__(self, base_path: str, texts: dict[str, str], chunking: Chunking, threads: int) -> None:
        from edgequant.eval.llamacpp_backend import LlamaCppBackend

        self.chunking, self.threads = chunking, threads
        backend = LlamaCppBackend(base_path, chunking.n_ctx, threads)
        self.cached = CachedLogits(backend)
        self.chunks, self.base = {}, {}
        try:
            for name, path in texts.items():
                text, path = read_text(path)
                tokens, bos = backend.tokenize(text)
                self.chunks[name] = split_chunks(tokens, chunking, bos, source=path)
                self.base[name] = evaluate_chunks(self.cached, self.chunks[name], chunking)
        finally:
            backend.close()

    def score(self, path: str, on_chunk: Callable[[int, int], None] | None = None) -> dict:
        """{text name: quality_row} of ``path`` against the base."""
        from edgequant.eval.llamacpp_backend import LlamaCppBackend

        model = LlamaCppBackend(path, self.chunking.n_ctx, self.threads)
        try:
            return {
                name: quality_row(evaluate_chunks(model, chunks, self.chunking, self.cached, on_chunk))
                for name, chunks in self.chunks.items()
            }
        finally:
            model.close()


def prompt_speed(path: str, threads: int, n_prompt: int, repeats: int = 2) -> float:
    """Prompt processing tokens/s: ``n_prompt`` tokens decoded from an empty cache, best of ``repeats``."""
    import llama_cpp

    llm = load(path, n_prompt, threads=threads)
    try:
        llama_cpp.llama_set_n_threads(llm.ctx, int(threads), int(threads))
        tok = max(int(llm.token_bos()), 0)
        best = 0.0
        for _ in range(max(1, repeats)):
            llm.reset()
            start = time.perf_counter()
            llm.eval([tok] * n_prompt)
            best = max(best, n_prompt / (time.perf_counter() - start))
        return best
    finally:
        llm.close()


def measure_runtime(
    path: str, *, threads: int, n_prompt: int = 512, n_gen: int = 32, fit_ctx: int = 4096, repeats: int = 2
) -> dict:
    """Speed at ``threads`` threads, RSS growth and llama.cpp's buffers at ``fit_ctx`` for one GGUF file."""
    pp = prompt_speed(path, threads, n_prompt, repeats)
    [(_, tg)] = probe_threads(path, max(64, n_gen + 16), counts=[threads], n_gen=n_gen, repeats=repeats)
    rss = measure_rss(path, n_prompt, tokens=n_prompt)
    b = measure_buffers(path, fit_ctx)
    return {
        "threads": threads,
        "n_prompt": n_prompt,
        "n_gen": n_gen,
        "prompt_tokens_per_s": pp,
        "gen_tokens_per_s": tg,
        "ttft_s": n_prompt / pp + 1.0 / tg,
        "rss_growth_bytes": int(rss["decoded"]),
        "rss_tokens": int(rss["tokens"]),
        "fit_ctx": fit_ctx,
        "llama_kv_bytes": b.kv,
        "compute_bytes": b.compute,
        "output_bytes": b.output,
        "file_bytes": os.path.getsize(path),
        "load_average": os.getloadavg()[0],  # other processes slow the speeds down: recorded beside them
        "cpus": os.cpu_count(),
    }
