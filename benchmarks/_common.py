"""What every benchmark records beside its numbers (machine, commit, date, versions); saving results."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def host_info() -> dict:
    """CPU model, cores, Python and commit: what every result records (no heavy imports)."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(RESULTS),
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "commit": commit}


def machine_info() -> dict:
    """``host_info`` plus the date and the versions of the numeric packages (imports them, torch included)."""
    versions = {}
    for mod in ("numpy", "numba", "llama_cpp", "gguf", "torch", "bitsandbytes"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            pass
    return {
        **host_info(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": versions,
    }


def write_results(name: str, data: dict, markdown: str) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as f:
        json.dump(data, f, indent=1)
    with open(os.path.join(RESULTS, f"{name}.md"), "w") as f:
        f.write(markdown)
    print(markdown)
