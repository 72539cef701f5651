"""QAT step time and peak memory against a float fine-tune step on SmolLM2-135M (issue 14, item 2).

The model is loaded as ``edgequant qat`` loads it (``workflows.qat``: the packaged SmolLM2 GGUF through
``load_causal_lm``, a float deep copy as the teacher, the student ``qat.prepare``-d with the CLI's spec for
the format). A step is one ``qat.lm_training.distill_lm`` step (same loop, same AdamW, same KL to the float
teacher, embeddings frozen) on ``--batch`` x ``--seq-len`` tokens of the GPL-3 text; the float step is the
same loop on the un-prepared student.

Each mode runs in a fresh subprocess (so its peak RSS, VmHWM from /proc/self/status, is its own):
``--warmup`` steps, then ``--steps`` timed steps (median reported). The modes are run interleaved, float /
Q4_0 / ... / float / Q4_0 / ..., ``--rounds`` times, so that each QAT/float ratio compares runs made under
the same load; the load average is recorded with every run. One more subprocess profiles a Q4_0 step
(torch.profiler, top ops by self CPU time). No timing is asserted anywhere.

``--baseline-src DIR`` (a ``src/`` folder of an earlier commit, from ``git archive``) adds each QAT mode
as run
by that code (``MODE@base``), in the same interleaved run: before and after under the same load.
Writes ``benchmarks/results/qat_step.{json,md}``.
Usage: ``python benchmarks/bench_qat_step.py [--formats Q4_0,Q4_1,Q8_0,lsq] [--rounds 2] [--threads 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_info, write_results

TEXT = "/usr/share/common-licenses/GPL-3"


def _vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _build(fmt: str, batch: int, seq_len: int, steps: int):
    import copy

    import torch

    from edgequant.models import load_causal_lm
    from edgequant.models.packaged import smollm2_gguf_path
    from edgequant.qat import QATConfig, prepare
    from edgequant.qat.lm_training import LMTrainConfig
    from edgequant.workflows.qat import qat_spec

    student, tok = load_causal_lm(smollm2_gguf_path())
    teacher = copy.deepcopy(student).eval()
    with open(TEXT, encoding="utf-8") as f:
        ids = torch.tensor(tok(f.read())["input_ids"])
    if fmt != "float":
        prepare(student, QATConfig(weight=qat_spec(fmt)))
    cfg = LMTrainConfig(steps=steps, seq_len=seq_len, batch_size=batch, warmup=min(5, steps - 1))
    return student, teacher, ids, cfg


def child(args) -> None:
    """One mode in this process: warm-up + timed steps (or a profiled step); prints one JSON line."""
    import torch

    from edgequant.qat.lm_training import distill_lm

    torch.set_num_threads(args.threads)
    rss_loaded = None
    extra = 1 if args.profile else 0
    student, teacher, ids, cfg = _build(
        args.child, args.batch, args.seq_len, args.warmup + args.steps + extra
    )
    rss_loaded = _vm_hwm_mb()
    out = {"mode": args.child, "load1": os.getloadavg()[0], "rss_after_load_mb": rss_loaded}
    prof = {}

    def on_step(rec):
        if not args.profile:
            return
        if rec["step"] == args.warmup + args.steps:
            prof["p"] = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            prof["p"].__enter__()
        elif rec["step"] == args.warmup + args.steps + 1:
            prof["p"].__exit__(None, None, None)

    log = distill_lm(student, teacher, ids, cfg, on_step=on_step)
    times = [r["seconds"] for r in log[args.warmup : args.warmup + args.steps]]
    out.update(step_s=times, median_s=statistics.median(times), peak_rss_mb=_vm_hwm_mb())
    out["load1_end"] = os.getloadavg()[0]
    if args.profile:
        p = prof["p"]
        out["profile_step_s"] = log[-1]["seconds"]
        rows = sorted(p.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]
        out["profile"] = [
            {
                "op": e.key,
                "self_cpu_ms": e.self_cpu_time_total / 1e3,
                "cpu_total_ms": e.cpu_time_total / 1e3,
                "calls": e.count,
            }
            for e in rows
        ]
        out["profile_total_self_ms"] = sum(e.self_cpu_time_total for e in p.key_averages()) / 1e3
    print("RESULT " + json.dumps(out), flush=True)


def _run_child(mode: str, args, profile: bool = False) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--threads", str(args.threads)]
    cmd += ["--batch", str(args.batch), "--seq-len", str(args.seq_len)]
    cmd += ["--warmup", str(args.warmup), "--steps", str(args.steps)]
    if profile:
        cmd += ["--profile", "--top", str(args.top)]
    env = dict(os.environ)
    if mode.endswith("@base"):  # the same mode run by the baseline source tree (before/after in one run)
        cmd[cmd.index("--child") + 1] = mode[: -len("@base")]
        env["PYTHONPATH"] = os.path.abspath(args.baseline_src)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in res.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{mode} failed (rc {res.returncode}):\n{res.stderr[-3000:]}")


def _markdown(data: dict) -> str:
    m = data["machine"]
    lines = [
        "# QAT step vs float fine-tune step, SmolLM2-135M (issue 14, item 2)",
        "",
        f"commit {m['commit']}, {m['date']}, {m['cpu']}, {m['cores']} cores (shared), torch threads "
        f"{data['threads']}, batch {data['batch']} x {data['seq_len']} tokens, median of "
        f"{data['steps']} steps after {data['warmup']} warm-up, one fresh process per cell, "
        "modes interleaved per round.",
        "Goal: QAT step <= 1.3x float, peak RSS <= 1.5x float.",
        "",
        "| round | mode | median step s | QAT/float time | peak RSS MB | QAT/float RSS | load1 start-end |",
        "|---|---|---|---|---|---|---|",
    ]
    for r, cells in enumerate(data["rounds"]):
        base = cells["float"]
        for mode, c in cells.items():
            tr = c["median_s"] / base["median_s"]
            rr = c["peak_rss_mb"] / base["peak_rss_mb"]
            lines.append(
                f"| {r + 1} | {mode} | {c['median_s']:.3f} | {tr:.2f} | {c['peak_rss_mb']:.0f} | {rr:.2f} | "
                f"{c['load1']:.1f}-{c['load1_end']:.1f} |"
            )
    p = data.get("profile")
    if p:
        lines += [
            "",
            f"## Profile of one {p['mode']} step (torch.profiler, {p['profile_step_s']:.2f} s "
            f"with profiling, load1 {p['load1']:.1f}; total self CPU {p['profile_total_self_ms']:.0f} ms)",
            "",
            "| op | self CPU ms | CPU total ms | calls |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| `{e['op']}` | {e['self_cpu_ms']:.1f} | {e['cpu_total_ms']:.1f} | {e['calls']} |"
            for e in p["profile"]
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--formats", default="Q4_0,Q4_1,Q8_0,lsq", help="QAT formats besides float (CLI names)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--name", default="qat_step")
    ap.add_argument(
        "--baseline-src",
        default=None,
        help="a src/ folder of an earlier commit (git archive): its QAT modes run too, as MODE@base",
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    modes = ["float", *[f for f in args.formats.split(",") if f]]
    if args.baseline_src:
        modes += [f"{m}@base" for m in modes[1:]]
    rounds = []
    for r in range(args.rounds):
        cells = {}
        for mode in modes:
            cells[mode] = _run_child(mode, args)
            print(
                f"round {r + 1} {mode}: {cells[mode]['median_s']:.3f} s, "
                f"{cells[mode]['peak_rss_mb']:.0f} MB, load {cells[mode]['load1']:.1f}",
                flush=True,
            )
        rounds.append(cells)
    data = {
        "machine": machine_info(),
        "threads": args.threads,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "warmup": args.warmup,
        "steps": args.steps,
        "rounds": rounds,
    }
    if not args.no_profile:
        data["profile"] = _run_child(modes[1] if len(modes) > 1 else "float", args, profile=True)
    write_results(args.name, data, _markdown(data))


if __name__ == "__main__":
    main()
