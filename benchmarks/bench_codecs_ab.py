"""Codec speed before and after a refactor, in one session: this tree against another commit's ``src/``.

The other commit is checked out with ``git worktree add`` into ``--old-dir`` (once); rounds alternate
old/new in fresh subprocesses (``PYTHONPATH`` set to each tree's ``src``, one numba thread), each timing
``quantize`` (with and without an importance vector) and ``dequantize`` of a 64 x 4096 N(0,1) matrix (seed 0)
per type, best of 7 / 15 calls; the best over rounds is kept per tree. Prints new/old per type and the
geometric means, and writes ``benchmarks/results/codecs_ab.{json,md}``. Run it on a quiet machine: the
issue's goal (ratios within 10 %) is about noise-free times.

Usage: ``python benchmarks/bench_codecs_ab.py --old 6b77cd6 [--rounds 4]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine_info, write_results

TYPES = "F16,BF16,Q4_0,Q4_1,Q5_0,Q5_1,Q8_0,Q2_K,Q3_K,Q4_K,Q5_K,Q6_K,Q8_K,IQ4_NL,IQ4_XS"
CHILD = r"""
import json, sys, time, warnings
import numpy as np
from edgequant.gguf.codecs import dequantize, get_codec, quantize
x = np.random.default_rng(0).standard_normal((64, 4096)).astype(np.float32)
qw = (np.random.default_rng(1).random(4096) * 2 + 0.01).astype(np.float32)
def best(fn, n):
    b = 1e9
    for _ in range(n):
        t = time.perf_counter(); fn(); b = min(b, time.perf_counter() - t)
    return b
warnings.simplefilter("ignore")
res = {}
for t in sys.argv[1].split(","):
    for w in ([None, qw] if get_codec(t).uses_imatrix else [None]):
        q = quantize(x, t, w, threads=1)
        tq = best(lambda: quantize(x, t, w, threads=1), 7)
        td = best(lambda: dequantize(q, t, x.shape, threads=1), 15)
        res[f"{t}/{'imat' if w is not None else 'ref'}"] = (tq, td)
print(json.dumps(res))
"""


def run(src: str, types: str) -> dict:
    env = {**os.environ, "PYTHONPATH": src, "NUMBA_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, types], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="the commit to compare with")
    ap.add_argument("--old-dir", default=os.path.join(tempfile.gettempdir(), "eq-codecs-ab-old"))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--types", default=TYPES)
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isdir(args.old_dir):
        subprocess.run(["git", "-C", root, "worktree", "add", "--detach", args.old_dir, args.old], check=True)
    trees = {"new": os.path.join(root, "src"), "old": os.path.join(args.old_dir, "src")}
    best: dict[str, dict[str, list[float]]] = {"new": {}, "old": {}}
    loads = []
    for r in range(args.rounds):
        for tree, src in trees.items():
            for k, (q, d) in run(src, args.types).items():
                b = best[tree].setdefault(k, [q, d])
                best[tree][k] = [min(b[0], q), min(b[1], d)]
            loads.append(os.getloadavg()[0])
            print(f"round {r + 1} {tree} done (load {loads[-1]:.2f})", file=sys.stderr)
    rows = []
    for k in best["new"]:
        (qn, dn), (qo, do) = best["new"][k], best["old"][k]
        rows.append(
            {
                "config": k,
                "quantize_old_ms": qo * 1e3,
                "quantize_new_ms": qn * 1e3,
                "quantize_ratio": qn / qo,
                "dequantize_ratio": dn / do,
            }
        )
    geo = lambda v: float(np.exp(np.mean(np.log(v))))  # noqa: E731
    data = {
        "machine": machine_info(),
        "old_commit": args.old,
        "rounds": args.rounds,
        "load_average_1min": loads,
        "rows": rows,
        "geomean_quantize_ratio": geo([r["quantize_ratio"] for r in rows]),
        "geomean_dequantize_ratio": geo(
            [r["dequantize_ratio"] for r in rows if r["config"].endswith("/ref")]
        ),
        "max_quantize_ratio": max(r["quantize_ratio"] for r in rows),
    }
    md = [
        f"# Codec speed, this tree vs {args.old} (new/old, < 1: faster now)",
        "",
        f"Commit {data['machine'].get('commit')}, {data['machine'].get('date')}, one numba thread, best over "
        f"{args.rounds} alternating rounds; 1-min load average during the rounds: "
        f"{min(loads):.2f}-{max(loads):.2f}.",
        "",
        "| config | quantize old ms | new ms | new/old | dequantize new/old |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    md += [
        f"| {r['config']} | {r['quantize_old_ms']:.3f} | {r['quantize_new_ms']:.3f} | "
        f"{r['quantize_ratio']:.3f} | {r['dequantize_ratio']:.3f} |"
        for r in rows
    ]
    md += [
        "",
        f"Geometric mean new/old: quantize {data['geomean_quantize_ratio']:.3f}, dequantize "
        f"{data['geomean_dequantize_ratio']:.3f}; worst quantize {data['max_quantize_ratio']:.3f}.",
    ]
    print("\n".join(md))
    write_results("codecs_ab", data, "\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
