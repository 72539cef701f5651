"""Pick a type per tensor to hit a size or bits/weight with the least predicted loss; write a type file.

For every quantizable tensor of a float GGUF model (F32/F16/BF16) and every candidate type, edgequant
predicts the mean KL divergence quantizing that tensor alone adds (the block second-order term of the KL
from a few backward passes over the calibration text; --method measured runs one forward pass per tensor
and type instead), then solves the exact multiple-choice knapsack under the budget. The plan file has one
`name=type` line per tensor: `edgequant quantize --tensor-type-file PLAN` and llama.cpp's
`llama-quantize --tensor-type-file PLAN` both accept it. `edgequant quantize IN OUT FTYPE --target-bpw X`
does both steps at once. Types whose block does not divide a tensor's rows are skipped (see --json).
"""

from __future__ import annotations

from edgequant.cli.parsers import add_command
from edgequant.core.text import dumps
from edgequant.eval.text import DEFAULT_TEXT

EXAMPLES = f"""examples:
  edgequant allocate model-f32.gguf --target-size 5m -f train-sample.txt --imatrix imatrix.gguf -o plan.txt
  edgequant allocate model-f32.gguf --target-bpw 4.5 --types q3_k,q4_k,q5_k,q6_k,q8_0 -o plan.txt --json
  edgequant quantize --tensor-type-file plan.txt --imatrix imatrix.gguf model-f32.gguf out.gguf Q4_K_M
  edgequant quantize model-f32.gguf out.gguf Q4_K_M --target-bpw 4.5 -f train-sample.txt --imatrix im.gguf

Sizes: N[b|k|kib|m|mib|g|gib] (k, m, g decimal; kib, mib, gib binary). Without -f the calibration text
is {DEFAULT_TEXT}; calibrate on text like the model's use, evaluate on other text. --state FILE keeps the
measured table, so asking another budget of the same model takes a second.
"""


def add_budget_arguments(p, with_imatrix: bool = True) -> None:
    """The options shared by ``allocate`` and ``quantize --target-*``."""
    g = p.add_mutually_exclusive_group(required=with_imatrix)  # allocate needs one; quantize takes either
    g.add_argument("--target-bpw", type=float, metavar="X", help="bits per weight of the tensor data")
    g.add_argument("--target-size", metavar="N", help="size of the output file, e.g. 120m, 4gib")
    p.add_argument("-f", "--file", metavar="TEXT", help=f"calibration text (default {DEFAULT_TEXT})")
    if with_imatrix:
        p.add_argument(
            "--imatrix", metavar="FILE", help="importance matrix the final file will be quantized with"
        )
    p.add_argument("--types", metavar="T1,T2", help="candidate types (default Q2_K..Q8_0, IQ4_XS, Q4_0...)")
    p.add_argument("--method", choices=("fisher", "measured"), default="fisher", help="sensitivity estimate")
    p.add_argument(
        "--solver", choices=("exact", "greedy", "policy_gradient"), default="exact", help="default exact"
    )
    p.add_argument("--ctx", type=int, default=512, help="tokens per calibration chunk (default 512)")
    p.add_argument("--chunks", type=int, default=8, help="calibration chunks (default 8)")
    p.add_argument(
        "--draws", type=int, default=4, help="label draws per chunk for --method fisher (default 4)"
    )
    p.add_argument("--state", metavar="FILE", help="JSON file keeping the sensitivity table between runs")
    p.add_argument("--write-recipe", action="store_true", help="store the plan in the output's metadata")


def register(sub) -> None:
    p = add_command(sub, "allocate", __doc__, EXAMPLES)
    p.add_argument("model", metavar="IN.gguf", help="a float GGUF model (F32/F16/BF16)")
    p.add_argument("-o", "--output", metavar="PLAN.txt", required=True, help="tensor-type file to write")
    add_budget_arguments(p)
    p.add_argument("--threads", type=int, default=None, help="torch and codec threads")
    p.add_argument("--json", action="store_true", help="print each tensor's type, bytes and predicted KL")
    p.set_defaults(func=run)


def budget_plan(args, src: str, imatrix, plan_path: str | None):
    """Run the allocation job from parsed arguments, with progress bars; returns (table, plan)."""
    from edgequant.cli.flags import flag_names
    from edgequant.cli.progress import tensor_progress
    from edgequant.eval.text import read_text
    from edgequant.workflows.allocate import allocate_model, parse_size

    text, _ = read_text(args.file)
    target_size = parse_size(args.target_size) if args.target_size is not None else None
    with tensor_progress("sensitivity") as advance, flag_names():
        return allocate_model(
            src,
            text,
            target_bpw=args.target_bpw,
            target_size=target_size,
            plan_path=plan_path,
            solver=args.solver,
            imatrix=imatrix,
            types=args.types,
            n_ctx=args.ctx,
            n_chunks=args.chunks,
            draws=args.draws,
            method=args.method,
            threads=getattr(args, "threads", None),
            state=args.state,
            on_progress=lambda stage, i, n: advance(i - 1, n, f"{stage} {i}/{n}"),
        )


def run(args) -> int:
    from edgequant.cli.tables import console, safe
    from edgequant.gguf.imatrix import load_imatrix
    from edgequant.workflows.allocate import plan_dict

    imatrix = load_imatrix(args.imatrix) if args.imatrix else None
    table, plan = budget_plan(args, args.model, imatrix, args.output)
    if args.json:
        out = plan_dict(plan)
        out["plan_file"] = args.output
        out["sensitivity_seconds"] = round(table.seconds, 2)
        print(dumps(out))
        return 0
    counts = ", ".join(f"{k} {v}" for k, v in plan_dict(plan)["type_counts"].items())
    console.print(
        f"{safe(args.output)}: {len(plan.tensors)} tensors ({counts}); file at most {plan.file_bytes} bytes "
        f"({plan.file_bytes / 2**20:.2f} MiB), {plan.bits_per_weight:.3f} bits/weight; predicted mean KLD "
        f"{plan.predicted_kld:.5f} on the calibration text ({'optimal' if plan.optimal else plan.method}); "
        f"sensitivities {table.seconds:.1f} s"
    )
    if plan.underfill:
        console.print(f"note: the plan uses {plan.used / plan.budget:.1%} of the budget: {plan.underfill}")
    return 0
