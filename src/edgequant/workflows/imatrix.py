"""``make_imatrix``: collect an importance matrix from a model and a text, merge earlier files, write it.

This is what ``edgequant imatrix`` runs; collection itself is :mod:`edgequant.eval.imatrix_collect`, the
file format :mod:`edgequant.gguf.imatrix`. Order of work, as llama-imatrix: load the ``in_files`` inputs
first (summed), then add this run's collection, then write once (atomically: the output appears complete
or not at all). Without a model only the merge is done. The result dict records what was done.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from edgequant.core.atomic import check_writable
from edgequant.errors import ConfigError
from edgequant.eval.imatrix_collect import ImatrixCollector, check_fits, expected_entries
from edgequant.eval.text import Chunking, hf_tokenize, read_text, split_chunks
from edgequant.gguf.imatrix import ImatrixEntry, merge_into, read_stats, write_stats


def make_imatrix(
    model_path: str | os.PathLike | None,
    out_path: str | os.PathLike,
    text_path: str | os.PathLike | None = None,
    *,
    output_format: str | None = None,
    n_ctx: int = 512,
    n_chunks: int | None = None,
    in_files: list[str] | None = None,
    process_output: bool = False,
    threads: int | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
) -> dict:
    """Collect (when ``model_path``) and merge (``in_files``) into ``out_path``; returns a summary dict.

    ``output_format``: ``gguf`` or ``dat``; None picks ``dat`` for a ``.dat`` suffix, else ``gguf``.
    Raises ConfigError for a short text or bad options, ShapeError for an input imatrix that does not
    fit the model (or the other inputs), FormatError for unreadable files.
    """
    out_path = os.fspath(out_path)
    fmt = output_format or ("dat" if out_path.endswith(".dat") else "gguf")
    if fmt not in ("gguf", "dat"):
        raise ConfigError(f"output_format must be 'gguf' or 'dat', got '{fmt}'")
    if model_path is None and not in_files:
        raise ConfigError("nothing to do: give a model to collect from, or imatrix files to merge")
    chunking = Chunking(n_ctx, n_chunks)
    check_writable(out_path)
    stats: dict[str, ImatrixEntry] = {}
    datasets: list[str] = []
    for f in in_files or []:
        s, ds = read_stats(f, n_ctx)
        merge_into(stats, s, f)
        datasets += ds
    summary = {"output": out_path, "format": fmt, "n_ctx": n_ctx, "in_files": list(in_files or [])}
    if model_path is not None:
        model_path = os.fspath(model_path)
        new, text_path, info = _collect(
            model_path, text_path, chunking, stats, in_files, process_output, threads, on_chunk
        )
        merge_into(stats, new, model_path)
        datasets.append(text_path)
        summary.update(info)
    if not stats:
        raise ConfigError("nothing was collected: no entry to write")
    write_stats(out_path, stats, fmt, n_ctx, datasets)
    summary.update(
        {
            "entries": len(stats),
            "datasets": datasets,
            "chunk_count": max(int(e.counts.max()) // n_ctx for e in stats.values()),
        }
    )
    return summary


def _collect(model_path, text_path, chunking, stats, in_files, process_output, threads, on_chunk):
    """Run the model on the text's chunks with the collector; (its stats, the text path, a summary dict)."""
    import torch

    from edgequant.models import load_causal_lm

    if not os.path.exists(model_path):
        raise ConfigError(f"model {model_path} does not exist")
    text, text_path = read_text(text_path)
    if threads:
        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    model, tokenizer = load_causal_lm(model_path, dtype=torch.float32)
    load_s = time.perf_counter() - t0
    if stats:
        check_fits(stats, expected_entries(model), ", ".join(in_files or []), model_path)
    tokens, bos = hf_tokenize(tokenizer, text)
    chunks = split_chunks(tokens, chunking, bos, source=text_path)
    collector = ImatrixCollector(model, process_output=process_output)
    t0 = time.perf_counter()
    collector.run(chunks, on_chunk)
    collect_s = time.perf_counter() - t0
    n_ctx = chunking.n_ctx
    info = {
        "model": model_path,
        "text": text_path,
        "text_tokens": int(tokens.size),
        "n_chunks": len(chunks),
        "collected_tokens": len(chunks) * n_ctx,
        "load_seconds": load_s,
        "collect_seconds": collect_s,
        "tokens_per_second": len(chunks) * n_ctx / collect_s if collect_s > 0 else None,
    }
    return collector.stats(), text_path, info
