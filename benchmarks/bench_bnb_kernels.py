"""bitsandbytes-style kernels, edgequant vs bitsandbytes (CPU) vs float32 torch, one run, same process.

Measures (4096 x 4096 float32 weight unless stated): quantize_4bit (nf4, bs 64, with/without double quant),
dequantize_4bit, Linear4bit forward at batch 1/16/128 (eval, no grad) beside float32 nn.Linear and bnb's
Linear4bit, Linear8bitLt (LLM.int8, threshold 6) beside bnb's, bits per parameter, and the resident memory of
a model of 8 such layers (fresh subprocess per format). Timings: median of --reps runs after one warm-up,
the contenders interleaved run by run so machine load hits them alike.

    python benchmarks/bench_bnb_kernels.py            # full run, writes benchmarks/results/bnb_kernels.*
    python benchmarks/bench_bnb_kernels.py --quick    # fewer repetitions, no results file
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_info, write_results

import edgequant.bnb as E
from edgequant.nn import Linear4bit, Linear8bitLt

N = 4096


def interleaved(fns: dict, reps: int) -> dict:
    """Median ms per contender, running them in turn within each repetition."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(kind: str) -> None:
    """Build 8 layers of 4096 x 4096 in the given format, one at a time; print the RSS growth in MiB.

    The kernels are compiled/loaded first (a tiny layer) and freed heap is returned to the OS (malloc_trim)
    before each reading, so the growth is what the 8 layers hold."""
    import ctypes
    import gc

    trim = ctypes.CDLL("libc.so.6").malloc_trim
    Linear4bit.from_linear(torch.nn.Linear(64, 64), quant_type="nf4")(torch.randn(2, 64))
    Linear8bitLt.from_linear(torch.nn.Linear(64, 64))(torch.randn(2, 64))
    gc.collect()
    trim(0)
    base = rss_mib()
    layers = []
    for _ in range(8):
        lin = torch.nn.Linear(N, N, bias=False)
        if kind == "nf4":
            lin = Linear4bit.from_linear(lin, quant_type="nf4", compress_statistics=True)
        elif kind == "int8":
            lin = Linear8bitLt.from_linear(lin)
        layers.append(lin)
    gc.collect()
    trim(0)
    print(json.dumps({"kind": kind, "rss_growth_mib": rss_mib() - base}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch and edgequant threads (default: torch's default)"
    )
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    reps = 3 if args.quick else args.reps
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import torch._dynamo as dynamo

    dynamo.config.disable = True  # bnb's default kernels try torch.compile; eager is what users get
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    torch.manual_seed(0)
    w = torch.randn(N, N) * 0.02
    res: dict = {
        "machine": machine_info(),
        "shape": [N, N],
        "reps": reps,
        "torch_threads": torch.get_num_threads(),
    }

    q = {}
    for dq in (False, True):
        q[dq] = interleaved(
            {
                "edgequant": lambda dq=dq: E.quantize_4bit(
                    w, blocksize=64, quant_type="nf4", compress_statistics=dq
                ),
                "bitsandbytes": lambda dq=dq: F.quantize_4bit(
                    w, blocksize=64, quant_type="nf4", compress_statistics=dq
                ),
            },
            reps,
        )
    res["quantize_4bit_ms"] = {"nf4_bs64": q[False], "nf4_bs64_dq": q[True]}
    pe, se = E.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    pb, sb = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    res["dequantize_4bit_ms"] = interleaved(
        {
            "edgequant": lambda: E.dequantize_4bit(pe, se, threads=threads),
            "bitsandbytes": lambda: F.dequantize_4bit(pb, sb),
        },
        reps,
    )
    res["bits_per_parameter"] = {
        "nf4_bs64": E.measured_bits_per_parameter(*E.quantize_4bit(w, blocksize=64)),
        "nf4_bs64_dq": E.measured_bits_per_parameter(pe, se),
        "formula_nf4_bs64": E.bits_per_parameter(64),
        "formula_nf4_bs64_dq": E.bits_per_parameter(64, True),
    }

    lin = torch.nn.Linear(N, N)
    lin.weight.data = w.clone()
    ours4 = Linear4bit.from_linear(lin, quant_type="nf4", compress_statistics=True, threads=threads).eval()
    theirs4 = bnb.nn.Linear4bit(N, N, quant_type="nf4", compress_statistics=True)
    theirs4.load_state_dict(lin.state_dict())
    theirs4 = theirs4.to("cpu").eval()
    ours8 = Linear8bitLt.from_linear(lin, threshold=6.0, threads=threads).eval()
    theirs8 = bnb.nn.Linear8bitLt(N, N, has_fp16_weights=False, threshold=6.0)
    theirs8.load_state_dict(lin.state_dict())
    theirs8 = theirs8.to("cpu").eval()
    fwd = {}
    with torch.no_grad():
        for batch in (1, 16, 128):
            x = torch.randn(batch, N)
            x[:, 7] *= 20  # one outlier feature, so LLM.int8's decomposition has work to do
            fwd[batch] = interleaved(
                {
                    "float32_nn_linear": lambda x=x: lin(x),
                    "edgequant_linear4bit": lambda x=x: ours4(x),
                    "bnb_linear4bit": lambda x=x: theirs4(x),
                    "edgequant_linear8bitlt": lambda x=x: ours8(x),
                    "bnb_linear8bitlt": lambda x=x: theirs8(x),
                },
                reps,
            )
    res["forward_ms"] = fwd

    mem = {}
    for kind in ("float32", "nf4", "int8"):
        out = (
            subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--memory-child", kind],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        mem[kind] = json.loads(out)["rss_growth_mib"]
    res["resident_mib_8_layers"] = mem
    res["weight_bytes_per_layer"] = {
        "float32": N * N * 4,
        "nf4_dq": int(sum(E.state_bytes(pe, se).values())),
        "int8": N * N + N * 4,
    }

    md = render(res)
    if args.quick:
        print(md)
    else:
        write_results("bnb_kernels", res, md)


def render(r: dict) -> str:
    m = r["machine"]
    q, fwd = r["quantize_4bit_ms"], r["forward_ms"]
    lines = [
        "# bitsandbytes-style kernels: edgequant vs bitsandbytes (CPU) vs float32 torch",
        "",
        f"Commit {m['commit']}, {m['date']}; {m['cpu']}, {m['cores']} cores; threads {r['torch_threads']} "
        "(torch and edgequant); "
        f"versions {m['versions']}. Weight {r['shape'][0]}x{r['shape'][1]} float32; median of {r['reps']} "
        "runs after a warm-up, contenders interleaved. Command: `python benchmarks/bench_bnb_kernels.py`.",
        "",
        "## quantize_4bit / dequantize_4bit (ms)",
        "",
        "| op | edgequant | bitsandbytes | speed-up |",
        "|---|---|---|---|",
    ]
    for name, d in (
        ("quantize_4bit nf4 bs64", q["nf4_bs64"]),
        ("quantize_4bit nf4 bs64 + DQ", q["nf4_bs64_dq"]),
        ("dequantize_4bit nf4 bs64 + DQ", r["dequantize_4bit_ms"]),
    ):
        lines.append(
            f"| {name} | {d['edgequant']:.1f} | {d['bitsandbytes']:.1f} "
            f"| {d['bitsandbytes'] / d['edgequant']:.1f}x |"
        )
    lines += [
        "",
        "## Forward, eval, no grad (ms); ratio = time / float32 nn.Linear",
        "",
        "| batch | float32 nn.Linear | edgequant Linear4bit | bnb Linear4bit | edgequant Linear8bitLt "
        "| bnb Linear8bitLt |",
        "|---|---|---|---|---|---|",
    ]
    for b, d in fwd.items():
        f32 = d["float32_nn_linear"]
        cells = [f"{f32:.1f}"] + [
            f"{d[k]:.1f} ({d[k] / f32:.2f}x)"
            for k in ("edgequant_linear4bit", "bnb_linear4bit", "edgequant_linear8bitlt", "bnb_linear8bitlt")
        ]
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    bpp, mem, wb = r["bits_per_parameter"], r["resident_mib_8_layers"], r["weight_bytes_per_layer"]
    lines += [
        "",
        "## Size",
        "",
        f"Bits per parameter (measured from the stored tensors): NF4 bs64 {bpp['nf4_bs64']:.3f} "
        f"(formula {bpp['formula_nf4_bs64']:.3f}), with double quantization {bpp['nf4_bs64_dq']:.4f} "
        f"(formula {bpp['formula_nf4_bs64_dq']:.4f}): the QLoRA paper's 0.5 -> 0.127 bit overhead.",
        "",
        "| format | weight bytes per layer | RSS growth, 8 layers (MiB) |",
        "|---|---|---|",
        f"| float32 | {wb['float32']:,} | {mem['float32']:.0f} |",
        f"| NF4 + DQ (Linear4bit) | {wb['nf4_dq']:,} | {mem['nf4']:.0f} |",
        f"| int8 (Linear8bitLt) | {wb['int8']:,} | {mem['int8']:.0f} |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
