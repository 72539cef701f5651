"""A fuzzing campaign: mutated GGUF, imatrix and Hugging Face files, each run through edgequant in-process.

    nice -n 15 .venv/bin/python benchmarks/fuzz_campaign.py --files 100000 --timeout 20

Case ``i`` is a pure function of ``i`` and of this script's version (seeded ``random.Random(i)``: a seed
kind, then byte mutations or a typed metadata/JSON replacement, see ``tests.support.fuzz``); each run
records its commit. A campaign is cumulative: it resumes
from the ``next_case`` recorded in ``benchmarks/results/fuzz.json`` and adds to its counts. Each case runs in
a child forked from a warmed-up parent (imports done, numba kernels compiled), so that a hang can be killed
(``--timeout`` seconds, counted as a hang) and the child's own peak RSS read (``wait4``). Outcomes:

* ``ok``: the file was accepted and every target succeeded;
* ``refused``: an ``edgequant.errors.EdgequantError`` subclass (the contract);
* ``bug``: any other exception (type, message and the place are recorded; the first 40 inputs are kept
  under ``benchmarks/results/fuzz_failures/`` for reproduction);
* ``hang``: killed at the timeout; ``leftover``: a file other than the inputs remained in the case folder.

Peak memory is the child's peak RSS minus the parent's RSS at the fork (what the case itself added); the
limit checked is 10x the input size + 200 MB.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import random
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, ROOT)  # tests/support: the test helpers are not installed with the package

from _common import host_info  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")
KEEP_FAILURES = 40
# (kind, weight): byte mutations and typed replacements of each seed
KINDS = (
    ("gguf_model", 26),
    ("gguf_model/typed", 10),
    ("gguf_types", 14),
    ("imatrix_gguf", 7),
    ("imatrix_gguf/typed", 4),
    ("imatrix_dat", 8),
    ("safetensors", 9),
    ("safetensors/typed", 4),
    ("config", 6),
    ("config/typed", 6),
    ("index", 4),
    ("index/typed", 3),
)


def make_case(i: int) -> tuple[str, bytes]:
    """Case ``i``: (seed kind, bytes)."""
    from tests.support import fuzz

    rng = random.Random(i)
    label = rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
    kind = label.split("/")[0]
    if label == "gguf_model/typed":
        return kind, fuzz.typed_kv_variant(rng.randrange(1000), rng.randrange(1000), rng.random() < 0.1)
    if label == "imatrix_gguf/typed":
        return kind, fuzz.typed_imatrix_variant(rng.randrange(1000), rng.randrange(1000))
    if label.endswith("/typed"):
        return kind, fuzz.typed_json_variant(kind, rng.randrange(1000), rng.randrange(1000))
    ops = [
        (rng.randrange(fuzz.N_OPS), rng.random(), rng.randrange(1 << 20)) for _ in range(rng.randint(1, 6))
    ]
    return kind, fuzz.mutate(fuzz.seed_bytes(kind), ops)


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _child(kind: str, data: bytes, workdir: str, wfd: int) -> None:
    from tests.support import fuzz

    warnings.simplefilter("ignore")
    try:
        fuzz.run_case(kind, data, workdir)
        res = {"status": "ok"}
    except BaseException as e:
        if fuzz.expected_error(e):
            res = {"status": "refused", "exc": type(e).__name__}
        else:
            tb = traceback.extract_tb(e.__traceback__)
            where = f"{os.path.relpath(tb[-1].filename, ROOT)}:{tb[-1].lineno}" if tb else "?"
            res = {"status": "bug", "exc": type(e).__name__, "msg": str(e)[:300], "where": where}
    os.write(wfd, json.dumps(res).encode())
    os._exit(0)


def run_one(kind: str, data: bytes, timeout: float, base: str) -> dict:
    workdir = tempfile.mkdtemp(dir=base)
    rfd, wfd = os.pipe()
    rss0 = _rss_kb()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        _child(kind, data, workdir, wfd)
    os.close(wfd)
    chunks, res = [], None
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            res = {"status": "hang"}
            break
        ready, _, _ = select.select([rfd], [], [], left)
        if ready:
            b = os.read(rfd, 65536)
            if not b:
                break
            chunks.append(b)
    os.close(rfd)
    _, status, ru = os.wait4(pid, 0)
    secs = time.perf_counter() - t0
    if res is None:
        try:
            res = json.loads(b"".join(chunks))
        except ValueError:
            res = {"status": "bug", "exc": f"child died (status {status})", "msg": "", "where": "?"}
    inputs = {"in.gguf", "imatrix.gguf", "imatrix.dat", "hf", "model.gguf"}
    left_over = sorted(set(os.listdir(workdir)) - inputs)
    hf = os.path.join(workdir, "hf")
    if os.path.isdir(hf):
        left_over += [f"hf/{n}" for n in os.listdir(hf) if n.startswith(".")]
    shutil.rmtree(workdir, ignore_errors=True)
    res.update(seconds=secs, peak_kb=ru.ru_maxrss, added_kb=max(0, ru.ru_maxrss - rss0), leftover=left_over)
    return res


def new_state() -> dict:
    return {
        "next_case": 0,
        "files": 0,
        "seconds": 0.0,
        "by_status": {},
        "by_kind": {},
        "refused_by_type": {},
        "bugs": {},
        "hangs": [],
        "leftovers": [],
        "max_added_rss_mb": 0.0,
        "max_peak_rss_mb": 0.0,
        "over_memory_limit": [],
        "max_seconds": 0.0,
        "runs": [],
    }


def save(state: dict, path_json: str) -> None:
    state["updated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    tmp = path_json + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1, sort_keys=True)
    os.replace(tmp, path_json)
    n_bugs = sum(b["count"] for b in state["bugs"].values())
    by = state["by_status"]
    lines = [
        "# Fuzz campaign (`benchmarks/fuzz_campaign.py`)",
        "",
        f"Cumulative over {len(state['runs'])} run(s); last update {state['updated']}; "
        f"machine: {state.get('machine', {}).get('cpu')} ({state.get('machine', {}).get('cores')} cores), "
        f"commit {state.get('machine', {}).get('commit')}.",
        "",
        "| files | accepted | refused (EdgequantError) | other exceptions | hangs | files left behind | "
        "max RSS added by a case | max peak RSS | over 10x size + 200 MB | slowest case |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {state['files']:,} | {by.get('ok', 0):,} | {by.get('refused', 0):,} | {n_bugs} "
        f"| {len(state['hangs'])} | {len(state['leftovers'])} | {state['max_added_rss_mb']:.1f} MB "
        f"| {state['max_peak_rss_mb']:.1f} MB | {len(state['over_memory_limit'])} "
        f"| {state['max_seconds']:.2f} s |",
        "",
        "RSS added by a case: the forked child's peak RSS (`wait4`) minus the parent's RSS at the fork, "
        "i.e. what the case itself allocated beyond the warmed-up process (imports and compiled kernels: "
        "the max peak RSS column); 0.0 means no case grew it. Seeds are 0.2-31 KB files; hangs are cases "
        "killed at the per-case timeout.",
        "",
        "## By seed kind",
        "",
        "| kind | files | accepted | refused | other exceptions | hangs |",
        "|---|---|---|---|---|---|",
    ]
    for kind, c in sorted(state["by_kind"].items()):
        lines.append(
            f"| {kind} | {sum(c.values()):,} | {c.get('ok', 0):,} | {c.get('refused', 0):,} | "
            f"{c.get('bug', 0)} | {c.get('hang', 0)} |"
        )
    lines += ["", "## Refusals by error type", "", "| error | files |", "|---|---|"]
    for k, v in sorted(state["refused_by_type"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {k} | {v:,} |")
    lines += ["", "## Other exceptions (bugs)", ""]
    if state["bugs"]:
        lines += ["| exception | where | files | first case | message |", "|---|---|---|---|---|"]
        for b in sorted(state["bugs"].values(), key=lambda b: -b["count"]):
            msg = b["msg"].replace("|", "\\|").replace("\n", " ")[:120]
            lines.append(f"| {b['exc']} | {b['where']} | {b['count']} | {b['first_case']} | {msg} |")
    else:
        lines.append("None.")
    lines += [
        "",
        "Runs: "
        + "; ".join(
            f"{r['started']} (commit {r.get('commit', '?')}): cases {r['from']}..{r['to'] - 1} in "
            f"{r['seconds']:.0f} s"
            for r in state["runs"]
        ),
        "",
    ]
    with open(os.path.join(os.path.dirname(path_json), "fuzz.md"), "w") as f:
        f.write("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000, help="run until this many cases in total")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per case before it counts as a hang")
    ap.add_argument("--seconds", type=float, default=None, help="stop this run after this many seconds")
    ap.add_argument("--fresh", action="store_true", help="start from case 0, discarding the saved counts")
    ap.add_argument("--out", default=os.path.join(RESULTS, "fuzz.json"))
    args = ap.parse_args()

    from tests.support import fuzz

    state = new_state()
    if os.path.exists(args.out) and not args.fresh:
        with open(args.out) as f:
            state = json.load(f)
    state["machine"] = host_info()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as d:  # warm up: imports and numba compilation, in the parent
        for kind in fuzz.SEED_KINDS:
            fuzz.run_case(kind, fuzz.seed_bytes(kind), d)
    fail_dir = os.path.join(os.path.dirname(os.path.abspath(args.out)), "fuzz_failures")
    os.makedirs(fail_dir, exist_ok=True)
    base = tempfile.mkdtemp(prefix="edgequant-fuzz-")
    run = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": state["machine"]["commit"],
        "from": state["next_case"],
        "to": state["next_case"],
        "seconds": 0.0,
    }
    state["runs"].append(run)
    t_run, t_save = time.perf_counter(), time.perf_counter()
    stop = False

    def on_term(signum, frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    try:
        while state["next_case"] < args.files and not stop:
            if args.seconds is not None and time.perf_counter() - t_run > args.seconds:
                break
            i = state["next_case"]
            kind, data = make_case(i)
            res = run_one(kind, data, args.timeout, base)
            st = res["status"]
            state["files"] += 1
            state["next_case"] = i + 1
            state["by_status"][st] = state["by_status"].get(st, 0) + 1
            kc = state["by_kind"].setdefault(kind, {})
            kc[st] = kc.get(st, 0) + 1
            if st == "refused":
                state["refused_by_type"][res["exc"]] = state["refused_by_type"].get(res["exc"], 0) + 1
            elif st in ("bug", "hang"):
                digest = hashlib.sha1(data).hexdigest()[:12]
                if len(os.listdir(fail_dir)) < KEEP_FAILURES:
                    with open(os.path.join(fail_dir, f"case{i}-{kind}-{digest}"), "wb") as f:
                        f.write(data)
                if st == "bug":
                    key = f"{res['exc']} at {res['where']}"
                    b = state["bugs"].setdefault(
                        key,
                        {
                            "exc": res["exc"],
                            "where": res["where"],
                            "msg": res["msg"],
                            "count": 0,
                            "first_case": i,
                        },
                    )
                    b["count"] += 1
                else:
                    state["hangs"].append({"case": i, "kind": kind})
            if res["leftover"]:
                state["leftovers"].append({"case": i, "kind": kind, "files": res["leftover"][:5]})
            added_mb, peak_mb = res["added_kb"] / 1024, res["peak_kb"] / 1024
            state["max_added_rss_mb"] = max(state["max_added_rss_mb"], added_mb)
            state["max_peak_rss_mb"] = max(state["max_peak_rss_mb"], peak_mb)
            if added_mb > 10 * len(data) / 2**20 + 200:
                state["over_memory_limit"].append({"case": i, "kind": kind, "added_mb": round(added_mb, 1)})
            state["max_seconds"] = max(state["max_seconds"], res["seconds"])
            if time.perf_counter() - t_save > 30:
                run["to"], run["seconds"] = state["next_case"], time.perf_counter() - t_run
                state["seconds"] = state.get("seconds", 0.0)
                save(state, args.out)
                t_save = time.perf_counter()
    finally:
        run["to"], run["seconds"] = state["next_case"], time.perf_counter() - t_run
        save(state, args.out)
        shutil.rmtree(base, ignore_errors=True)
    n_bugs = sum(b["count"] for b in state["bugs"].values())
    print(
        f"{state['files']} files: {state['by_status'].get('refused', 0)} refused, {n_bugs} other exceptions, "
        f"{len(state['hangs'])} hangs, {len(state['leftovers'])} with files left; max RSS added "
        f"{state['max_added_rss_mb']:.1f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
