"""Batch-1..8 forward of the 4-bit and 8-bit layers against float32 nn.Linear, weights from memory (issue 14).

For each weight shape (out x in) a stack of 8 distinct layers per format is built, so that the weights come
from memory as in a model (8 x 4096 x 4096 float32 is 512 MiB, far above the last-level cache), and one
"pass" runs the same input through all 8. Contenders, interleaved pass by pass within each round so that the
(shared, noisy) machine load hits them alike: float32 nn.Linear, edgequant Linear4bit (NF4 and FP4, with and
without double quantization), edgequant Linear8bitLt (threshold 6), bitsandbytes 0.50.2's Linear4bit (NF4 +
DQ) and Linear8bitLt. Reported: median ms per layer over the rounds, and ratios float32 / contender (> 1:
faster than float32). Threads: torch.set_num_threads(t) and the edgequant layers' ``threads = t``.

    python benchmarks/bench_bnb_kernels_gemv.py             # writes benchmarks/results/bnb_kernels_gemv.*
    python benchmarks/bench_bnb_kernels_gemv.py --quick     # 4096 x 4096 only, 3 rounds, no results file
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_info, write_results

from edgequant.kernels import bnb4_native
from edgequant.nn import Linear4bit, Linear8bitLt

STACK = 8
FORMATS_4BIT = {
    "nf4_dq": ("nf4", True),
    "nf4": ("nf4", False),
    "fp4_dq": ("fp4", True),
    "fp4": ("fp4", False),
}


def build(out_f: int, in_f: int, with_bnb: bool) -> dict:
    """Contender name -> list of STACK eval-mode layers (distinct random weights)."""
    stacks: dict[str, list] = {"float32": []}
    for name in FORMATS_4BIT:
        stacks[f"eq_{name}"] = []
    stacks["eq_int8"] = []
    if with_bnb:
        stacks["bnb_nf4_dq"], stacks["bnb_int8"] = [], []
    import bitsandbytes as bnb

    for i in range(STACK):
        torch.manual_seed(i)
        lin = torch.nn.Linear(in_f, out_f)
        lin.weight.data.mul_(0.02 / lin.weight.data.std())
        stacks["float32"].append(lin.eval())
        for name, (qt, dq) in FORMATS_4BIT.items():
            q = Linear4bit.from_linear(lin, quant_type=qt, compress_statistics=dq)
            stacks[f"eq_{name}"].append(q.eval())
        stacks["eq_int8"].append(Linear8bitLt.from_linear(lin, threshold=6.0).eval())
        if with_bnb:
            b4 = bnb.nn.Linear4bit(in_f, out_f, quant_type="nf4", compress_statistics=True)
            b4.load_state_dict(lin.state_dict())
            stacks["bnb_nf4_dq"].append(b4.to("cpu").eval())
            b8 = bnb.nn.Linear8bitLt(in_f, out_f, has_fp16_weights=False, threshold=6.0)
            b8.load_state_dict(lin.state_dict())
            stacks["bnb_int8"].append(b8.to("cpu").eval())
    return stacks


def timed_rounds(stacks: dict, x: torch.Tensor, rounds: int) -> dict:
    """Median ms per layer for each contender; passes interleaved within each round, one warm-up pass."""

    def one_pass(layers):
        for layer in layers:
            layer(x)

    times: dict[str, list] = {k: [] for k in stacks}
    with torch.no_grad():
        for layers in stacks.values():
            one_pass(layers)
        for _ in range(rounds):
            for name, layers in stacks.items():
                t0 = time.perf_counter()
                one_pass(layers)
                times[name].append((time.perf_counter() - t0) * 1e3 / len(layers))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-bnb", action="store_true", help="leave bitsandbytes out (faster)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batches", default="1,8")
    args = ap.parse_args()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import torch._dynamo as dynamo

    dynamo.config.disable = True  # bnb's default kernels try torch.compile; eager is what users get
    shapes = [(4096, 4096)] if args.quick else [(4096, 4096), (11008, 4096), (4096, 11008)]
    rounds = 3 if args.quick else args.rounds
    threads = [int(t) for t in args.threads.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    res: dict = {
        "machine": machine_info(),
        "loadavg_start": os.getloadavg(),
        "native_kernels": bnb4_native.available(),
        "stack": STACK,
        "rounds": rounds,
        "results": [],
    }
    for out_f, in_f in shapes:
        stacks = build(out_f, in_f, not args.no_bnb)
        for t in threads:
            torch.set_num_threads(t)
            for name, layers in stacks.items():
                if name.startswith("eq_"):
                    for layer in layers:
                        layer.threads = t
            for b in batches:
                x = torch.randn(b, in_f)
                x[:, 7] *= 20  # one outlier feature, so LLM.int8's decomposition has work to do
                ms = timed_rounds(stacks, x, rounds)
                row = {
                    "out": out_f,
                    "in": in_f,
                    "threads": t,
                    "batch": b,
                    "ms": ms,
                    "loadavg": os.getloadavg(),
                }
                res["results"].append(row)
                print(render_row(row), flush=True)
        del stacks
        gc.collect()
    res["loadavg_end"] = os.getloadavg()
    md = render(res)
    if args.quick:
        print(md)
    else:
        write_results("bnb_kernels_gemv", res, md)


COLUMNS = ["eq_nf4_dq", "eq_nf4", "eq_fp4_dq", "eq_fp4", "bnb_nf4_dq", "eq_int8", "bnb_int8"]


def render_row(r: dict) -> str:
    ms = r["ms"]
    f32 = ms["float32"]
    cells = [f"{r['out']}x{r['in']}", str(r["threads"]), str(r["batch"]), f"{f32:.2f}"]
    for c in COLUMNS:
        cells.append(f"{ms[c]:.2f} ({f32 / ms[c]:.2f}x)" if c in ms else "-")
    la = r["loadavg"][0]
    return "| " + " | ".join(cells) + f" | {la:.1f} |"


def render(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# Batch-1..8 forward: 4-bit / 8-bit layers vs float32 nn.Linear (weights from memory)",
        "",
        f"Commit {m['commit']}, {m['date']}; {m['cpu']}, {m['cores']} cores (shared); "
        f"versions {m['versions']}. "
        f"AVX2 kernels: {r['native_kernels']}. Load average (1/5/15 min) at start "
        f"{'/'.join(f'{v:.2f}' for v in r['loadavg_start'])}, at end "
        f"{'/'.join(f'{v:.2f}' for v in r['loadavg_end'])}.",
        "",
        f"Each cell: median ms per layer over {r['rounds']} rounds of a pass through a stack of {r['stack']} "
        "distinct layers (weights from memory), contenders interleaved within each round; in brackets "
        "float32 time / contender time (> 1.00x: faster than float32). Shape = out x in features. "
        "Command: `python benchmarks/bench_bnb_kernels_gemv.py`.",
        "",
        "| shape | threads | batch | float32 | eq NF4+DQ | eq NF4 | eq FP4+DQ | eq FP4 | bnb NF4+DQ "
        "| eq Linear8bitLt | bnb Linear8bitLt | load 1 min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [render_row(row) for row in r["results"]]
    lines += [
        "",
        "Goals (issue 14): Linear4bit batch 1 >= 2.0x at 4096x4096 and 4096x11008 with 1 and 2 threads, "
        "batch 8 >= 1.0x; Linear8bitLt batch 1 >= 2.5x.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
