"""The allocation solver on GGUF-like instances: exact vs greedy vs policy gradient (loss gap and time).

Instances (seeded, built in code): 200 tensors x 8 types. Tensor sizes log-uniform in 1e4..5e7 weights;
types of 2.625, 3.4375, 4.5, 5.5, 6.5625, 8.5, 16 and 32 bits per weight (Q2_K..F32); cost =
``ceil(weights * bpw / 8)`` bytes (integers up to ~2e8, totals ~1e9); predicted loss =
``sensitivity * weights * 4**-bpw * exp(N(0, 0.3))`` with log-normal sensitivities (sigma 1.5), the shape of
a per-tensor KLD increase. Budgets: the bytes of 3.0, 4.0, 5.0 and 6.5 bits per weight on average.

Per instance and method: the loss gap ``(loss - exact) / exact`` and the wall time (``time.perf_counter``,
best of 3 for exact and greedy, one run of policy gradient at its defaults: 300 iterations x 64 samples,
learning rate 2, seed 0). One process, one thread; the load average is recorded since the machine is shared.

    python benchmarks/bench_allocate.py     # writes benchmarks/results/allocate.{json,md}
"""

from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_info, write_results

from edgequant.analysis.allocate import allocate

BPW = (2.625, 3.4375, 4.5, 5.5, 6.5625, 8.5, 16.0, 32.0)
TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "F16", "F32")
BUDGET_BPW = (3.0, 4.0, 5.0, 6.5)
SEEDS = (0, 1, 2, 3, 4)
N_ITEMS = 200


def instance(seed: int, n: int = N_ITEMS):
    rng = np.random.default_rng(seed)
    weights = np.exp(rng.uniform(np.log(1e4), np.log(5e7), n)).astype(np.int64)
    sens = np.exp(rng.normal(0, 1.5, n))
    choices = [
        {
            t: (
                float(sens[i] * weights[i] * 4.0**-b * np.exp(rng.normal(0, 0.3))),
                math.ceil(weights[i] * b / 8),
            )
            for t, b in zip(TYPES, BPW, strict=True)
        }
        for i in range(n)
    ]
    return choices, int(weights.sum())


def timed(fn, repeat: int):
    best, out = math.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def run() -> dict:
    load_before = os.getloadavg()
    rows = []
    for seed in SEEDS:
        choices, weights = instance(seed)
        for bits in BUDGET_BPW:
            budget = int(weights * bits / 8)
            row = {"seed": seed, "budget_bpw": bits, "budget_bytes": budget}
            for method, repeat in (("exact", 3), ("greedy", 3), ("policy_gradient", 1)):
                a, sec = timed(lambda c=choices, b=budget, m=method: allocate(c, b, method=m), repeat)
                row[method] = {"loss": a.loss, "cost": a.cost, "seconds": sec}
            row["lower_bound"] = a.lower_bound
            for method in ("greedy", "policy_gradient"):
                row[method]["gap"] = (row[method]["loss"] - row["exact"]["loss"]) / row["exact"]["loss"]
            rows.append(row)
    summary = {}
    for method in ("exact", "greedy", "policy_gradient"):
        secs = [r[method]["seconds"] for r in rows]
        gaps = [r[method].get("gap", 0.0) for r in rows]
        summary[method] = {
            "median_seconds": float(np.median(secs)),
            "max_seconds": max(secs),
            "median_gap": float(np.median(gaps)),
            "max_gap": max(gaps),
        }
    return {
        "machine": machine_info(),
        "load_average_before_after": [load_before, os.getloadavg()],
        "items": N_ITEMS,
        "options": len(BPW),
        "rows": rows,
        "summary": summary,
    }


def markdown(d: dict) -> str:
    m = d["machine"]
    s = d["summary"]
    before, after = (tuple(round(x, 2) for x in la) for la in d["load_average_before_after"])
    lines = [
        "# Allocation solver: exact vs greedy vs policy gradient",
        "",
        f"{d['items']} tensors x {d['options']} types, GGUF-like costs and losses (see `bench_allocate.py`); "
        f"{len(SEEDS)} seeds x {len(BUDGET_BPW)} budgets. Gap = (loss - exact) / exact.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, commit {m['commit']}, {m['date']}; "
        f"load average (1, 5, 15 min) before {before}, after {after} (shared machine).",
        "",
        "| method | median time | max time | median gap | max gap |",
        "|---|---|---|---|---|",
    ]
    for method in ("exact", "greedy", "policy_gradient"):
        r = s[method]
        lines.append(
            f"| {method} | {r['median_seconds'] * 1e3:.1f} ms | {r['max_seconds'] * 1e3:.1f} ms | "
            f"{r['median_gap']:.2e} | {r['max_gap']:.2e} |"
        )
    lines += [
        "",
        "| seed | budget bpw | exact loss | LP bound | exact ms | greedy gap | greedy ms | PG gap | PG ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        lines.append(
            f"| {r['seed']} | {r['budget_bpw']} | {r['exact']['loss']:.6g} | {r['lower_bound']:.6g} | "
            f"{r['exact']['seconds'] * 1e3:.1f} | {r['greedy']['gap']:.2e} | "
            f"{r['greedy']['seconds'] * 1e3:.1f} | {r['policy_gradient']['gap']:.2e} | "
            f"{r['policy_gradient']['seconds'] * 1e3:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    data = run()
    write_results("allocate", data, markdown(data))
