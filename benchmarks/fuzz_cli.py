"""The command line on fuzzed files: every failing command prints exactly one stderr line without raw control
characters, ``--json`` output parses strictly, no file is left behind.

    nice -n 15 .venv/bin/python benchmarks/fuzz_cli.py --files 1000

Files come from the seeds and mutations of ``tests.support.fuzz``, GGUF and imatrix kinds only
(``convert`` of a Hugging Face folder imports torch: seconds per run), case ``i`` seeded by ``i``. Each GGUF
file gets ``inspect --json`` and, in turn, plain ``inspect``, ``quantize --json`` (Q4_0), ``quantize
--dry-run --json`` (Q4_K_M) or ``dequantize``; each imatrix file gets ``quantize --imatrix`` on the valid
seed model. Results: ``benchmarks/results/fuzz_cli.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, ROOT)  # tests/support: the test helpers are not installed with the package
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def _strict(text: str) -> bool:
    def bad(token):
        raise ValueError(token)

    try:
        json.loads(text, parse_constant=bad)
        return True
    except ValueError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument(
        "--first", type=int, default=10_000_000, help="first case number (apart from the campaign's)"
    )
    ap.add_argument("--timeout", type=float, default=120)
    args = ap.parse_args()

    from fuzz_campaign import machine

    from tests.support import fuzz

    exe = [sys.executable, "-m", "edgequant"]
    stats = {"files": 0, "commands": 0, "exit_codes": {}, "problems": [], "by_command": {}}
    base = tempfile.mkdtemp(prefix="edgequant-fuzz-cli-")
    model = os.path.join(base, "model.gguf")
    with open(model, "wb") as f:
        f.write(fuzz.seed_bytes("gguf_model"))
    t0 = time.perf_counter()
    i = args.first
    try:
        while stats["files"] < args.files:
            rng = random.Random(i)
            i += 1
            kind = rng.choices(
                ["gguf_model", "gguf_typed", "gguf_types", "imatrix_gguf", "imatrix_dat", "imatrix_typed"],
                [35, 15, 15, 15, 10, 10],
            )[0]
            if kind == "gguf_typed":
                data = fuzz.typed_kv_variant(rng.randrange(1000), rng.randrange(1000), rng.random() < 0.1)
            elif kind == "imatrix_typed":
                data = fuzz.typed_imatrix_variant(rng.randrange(1000), rng.randrange(1000))
            else:
                ops = [
                    (rng.randrange(fuzz.N_OPS), rng.random(), rng.randrange(1 << 20))
                    for _ in range(rng.randint(1, 6))
                ]
                data = fuzz.mutate(fuzz.seed_bytes(kind), ops)
            work = tempfile.mkdtemp(dir=base)
            if kind.startswith("gguf"):
                src = os.path.join(work, "in.gguf")
                out = os.path.join(work, "out.gguf")
                variant = stats["files"] % 4
                cmds = [["inspect", src, "--json"]]
                cmds.append(
                    [
                        ["inspect", src],
                        ["quantize", "--json", src, out, "Q4_0"],
                        ["quantize", "--dry-run", "--json", src, out, "Q4_K_M"],
                        ["dequantize", src, out],
                    ][variant]
                )
            else:
                src = os.path.join(work, "imatrix" + (".dat" if kind == "imatrix_dat" else ".gguf"))
                cmds = [
                    ["quantize", "--json", "--imatrix", src, model, os.path.join(work, "out.gguf"), "Q4_K_M"]
                ]
            with open(src, "wb") as f:
                f.write(data)
            for cmd in cmds:
                p = subprocess.run(
                    exe + cmd, capture_output=True, text=True, timeout=args.timeout, errors="surrogateescape"
                )
                stats["commands"] += 1
                name = " ".join(
                    c for c in cmd if c.startswith("-") or c in ("inspect", "quantize", "dequantize")
                )
                bc = stats["by_command"].setdefault(name, {"runs": 0, "failed": 0})
                bc["runs"] += 1
                stats["exit_codes"][str(p.returncode)] = stats["exit_codes"].get(str(p.returncode), 0) + 1
                problem = None
                if p.returncode not in (0, 1):
                    problem = f"exit code {p.returncode}"
                elif p.returncode == 1:
                    bc["failed"] += 1
                    lines = p.stderr.splitlines()
                    if len(lines) != 1:
                        problem = f"{len(lines)} stderr lines"
                    elif not all(ch.isprintable() for ch in lines[0]):
                        problem = "control characters on stderr"
                    elif p.stdout:
                        problem = "stdout output on failure"
                elif "--json" in cmd and not _strict(p.stdout):
                    problem = "--json output is not strict JSON"
                elif p.stderr.strip() and "warning" not in p.stderr:
                    problem = "stderr output on success"
                left = sorted(set(os.listdir(work)) - {os.path.basename(src), "out.gguf"})
                if p.returncode != 0 and os.path.exists(os.path.join(work, "out.gguf")):
                    left.append("out.gguf")
                if left:
                    problem = f"files left: {left}"
                if problem:
                    stats["problems"].append(
                        {
                            "case": i - 1,
                            "kind": kind,
                            "command": cmd[0:2],
                            "problem": problem,
                            "stderr": p.stderr[-300:],
                        }
                    )
                out_file = os.path.join(work, "out.gguf")
                if os.path.exists(out_file):
                    os.unlink(out_file)
            shutil.rmtree(work, ignore_errors=True)
            stats["files"] += 1
    finally:
        shutil.rmtree(base, ignore_errors=True)
    stats["seconds"] = round(time.perf_counter() - t0, 1)
    stats["machine"] = machine()
    stats["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with open(os.path.join(RESULTS, "fuzz_cli.json"), "w") as f:
        json.dump(stats, f, indent=1, sort_keys=True)
    md = [
        "# The command line on fuzzed files (`benchmarks/fuzz_cli.py`)",
        "",
        f"{stats['date']}, commit {stats['machine']['commit']}, {stats['machine']['cpu']}: "
        f"{stats['files']:,} files, {stats['commands']:,} commands in {stats['seconds']:.0f} s; exit codes "
        + ", ".join(f"{k}: {v:,}" for k, v in sorted(stats["exit_codes"].items()))
        + ".",
        "",
        "| command | runs | failed (exit 1) |",
        "|---|---|---|",
        *[f"| `{k}` | {v['runs']:,} | {v['failed']:,} |" for k, v in sorted(stats["by_command"].items())],
        "",
        "Problems (a failing command with other than one clean stderr line, non-strict `--json`, a file "
        f"left behind, an exit code other than 0/1): **{len(stats['problems'])}**.",
        "",
    ]
    for pr in stats["problems"][:20]:
        md.append(f"- case {pr['case']} ({pr['kind']}, `{' '.join(pr['command'])}`): {pr['problem']}")
    with open(os.path.join(RESULTS, "fuzz_cli.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print(f"{stats['files']} files, {stats['commands']} commands, {len(stats['problems'])} problems")
    return 0


if __name__ == "__main__":
    sys.exit(main())
