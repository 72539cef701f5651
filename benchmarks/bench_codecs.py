"""Codec speed: edgequant (numba) against llama.cpp's ``ggml_quantize_chunk``, same matrix, same process.

For every type, without and with an importance vector, on a 256x4096 N(0,1) float32 matrix (seed 0):

* edgequant single-thread quantize time (best of N after a warm-up call), and the first call's time on
  one row, which is numba's compile or on-disk cache load (reported separately);
* ggml_quantize_chunk single-thread time (best of N), ratio ggml/edgequant (> 1: edgequant faster);
* edgequant with threads=2 and its scaling factor (t1 / t2);
* whether the bytes are identical to llama.cpp's;
* dequantize: edgequant vs ggml ``to_float`` (best of N).

Writes ``benchmarks/results/codecs.json`` and ``codecs.md``. ``--quick`` uses 32 rows.
Needs llama-cpp-python for the ggml columns (they read "n/a" without it).

Usage: ``python benchmarks/bench_codecs.py [--quick] [--repeats 3] [--types Q4_K,Q6_K]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np

# the test helpers (tests/support) are not installed with the package: import them from the repository
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import edgequant
import edgequant.gguf as eg
from tests.support import ggml_peer
from tests.support.cases import imatrix_cases

ROOT = Path(__file__).resolve().parents[1]
TYPES = list(eg.codec_names())


def best_of(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls (the caller does the warm-up)."""
    best = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "platform": platform.platform()}


def git_commit() -> str:
    try:
        r = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return r.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict:
    out = {"python": platform.python_version(), "edgequant": edgequant.__version__}
    for pkg in ("numpy", "numba", "llvmlite", "llama-cpp-python", "gguf"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def quiet_quantize(x, qtype, qw, threads):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return eg.quantize(x, qtype, qw, threads=threads)


def bench_one(
    qtype: str, x: np.ndarray, qw: np.ndarray | None, repeats: int, have_ggml: bool, first_call: float | None
) -> dict:
    rows, n = x.shape
    res: dict = {"type": qtype, "imatrix": qw is not None, "rows": rows, "n_per_row": n}
    res["first_call_s"] = first_call
    out1 = quiet_quantize(x, qtype, qw, 1)  # warm-up (full size)
    res["edgequant_s"] = best_of(lambda: quiet_quantize(x, qtype, qw, 1), repeats)
    quiet_quantize(x, qtype, qw, 2)
    res["edgequant_t2_s"] = best_of(lambda: quiet_quantize(x, qtype, qw, 2), repeats)
    res["scaling_t2"] = res["edgequant_s"] / res["edgequant_t2_s"]
    res["melem_per_s"] = x.size / res["edgequant_s"] / 1e6
    shape = x.shape
    eg.dequantize(out1, qtype, shape)
    res["edgequant_deq_s"] = best_of(lambda: eg.dequantize(out1, qtype, shape), repeats)
    if have_ggml:
        ref = ggml_peer.ggml_quantize(x, qtype, qw)
        res["identical"] = bool(np.array_equal(out1, ref))
        res["ggml_s"] = ggml_peer.bench_ggml(qtype, x, qw, repeats)
        res["ratio_ggml_over_edgequant"] = res["ggml_s"] / res["edgequant_s"]
        ggml_peer.ggml_dequantize(ref, qtype, shape)
        res["ggml_deq_s"] = best_of(lambda: ggml_peer.ggml_dequantize(ref, qtype, shape), repeats)
    else:
        res.update(identical=None, ggml_s=None, ratio_ggml_over_edgequant=None, ggml_deq_s=None)
    return res


def fmt_ms(s: float | None) -> str:
    return "n/a" if s is None else f"{s * 1e3:.2f}"


def to_markdown(report: dict) -> str:
    m, v = report["machine"], report["versions"]
    lines = [
        "# Codec benchmark: edgequant vs llama.cpp `ggml_quantize_chunk`",
        "",
        f"* date: {report['date']}  commit: `{report['git_commit']}`",
        f"* machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), {m['platform']}",
        f"* load average (1/5/15 min) before: {report['loadavg_before']}, after: {report['loadavg_after']} "
        "(a load near the core count means other processes shared the CPU: timings and scaling are noisy)",
        "* versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        f"* input: {report['rows']}x{report['n_per_row']} N(0,1) float32, seed 0; imatrix: "
        "`imatrix_cases(n, 0)['random']`; best of "
        f"{report['repeats']} after a warm-up; single thread unless noted",
        "* ratio = ggml time / edgequant time (> 1: edgequant faster); scaling = t(1 thread) / t(2 threads)",
        "* first call = numba compile or cache load of the type's kernel (one row, first use in the process)",
        "",
        "| type | imatrix | edgequant ms | ggml ms | ratio | Melem/s | threads=2 ms | scaling | identical | "
        "first call s | deq ms (eq / ggml) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in report["results"]:
        ratio = "n/a" if r["ratio_ggml_over_edgequant"] is None else f"{r['ratio_ggml_over_edgequant']:.2f}"
        ident = {True: "yes", False: "**NO**", None: "n/a"}[r["identical"]]
        first = "" if r["first_call_s"] is None else f"{r['first_call_s']:.2f}"
        cells = [
            r["type"],
            "yes" if r["imatrix"] else "no",
            fmt_ms(r["edgequant_s"]),
            fmt_ms(r["ggml_s"]),
            ratio,
            f"{r['melem_per_s']:.1f}",
            fmt_ms(r["edgequant_t2_s"]),
            f"{r['scaling_t2']:.2f}",
            ident,
            first,
            f"{fmt_ms(r['edgequant_deq_s'])} / {fmt_ms(r['ggml_deq_s'])}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="32 rows instead of 256")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    rows = args.rows or (32 if args.quick else 256)
    types = [t.strip().upper() for t in args.types.split(",") if t.strip()]
    have_ggml = ggml_peer.available()
    if not have_ggml:
        print("llama-cpp-python not installed: ggml columns will read n/a", file=sys.stderr)

    load_before = os.getloadavg()
    x = np.random.default_rng(0).standard_normal((rows, args.cols)).astype(np.float32)
    qw = imatrix_cases(args.cols, 0)["random"]
    results = []
    for qtype in types:
        codec = eg.get_codec(qtype)
        t0 = time.perf_counter()
        quiet_quantize(x[:1], qtype, None, 1)
        eg.dequantize(quiet_quantize(x[:1], qtype, None, 1), qtype, (1, args.cols))
        first = time.perf_counter() - t0
        variants = [None, qw] if codec.uses_imatrix else [None]
        for i, w in enumerate(variants):
            r = bench_one(qtype, x, w, args.repeats, have_ggml, first if i == 0 else None)
            results.append(r)
            ratio = r["ratio_ggml_over_edgequant"]
            print(
                f"{qtype:7s} imatrix={'yes' if w is not None else 'no ':3s} "
                f"eq {fmt_ms(r['edgequant_s']):>9s} ms  ggml {fmt_ms(r['ggml_s']):>9s} ms  "
                f"ratio {'n/a' if ratio is None else format(ratio, '.2f')}  t2 x{r['scaling_t2']:.2f}  "
                f"identical={r['identical']}  first={first:.2f}s",
                flush=True,
            )
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine": machine(),
        # Other processes on the machine distort the timings and the threads=2 scaling; check these.
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "versions": versions(),
        "rows": rows,
        "n_per_row": args.cols,
        "repeats": args.repeats,
        "quick": bool(args.quick),
        "results": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "codecs.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "codecs.md").write_text(to_markdown(report))
    print(f"wrote {out / 'codecs.json'} and {out / 'codecs.md'}")
    return 0 if all(r["identical"] is not False for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
