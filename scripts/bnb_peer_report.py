"""Table of the bitsandbytes peer suite (issue 16) from the runs of scripts/bnb_peer_suite.sh.

    .venv/bin/python scripts/bnb_peer_report.py --mode bnb=SRC[,SRC...] --mode functional=SRC ... --out PATH

A SRC is a JUnit XML file from the suite, or ``LOG@COLLECT``: a ``pytest -q`` progress log read against the
``--collect-only -q`` list of the same run (for a run stopped before it wrote its XML). Later sources override
earlier ones per test. Writes benchmarks/results/bnb_peer_suite.{md,json} (with the commit and the date).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

CHAR = {".": "passed", "s": "skipped", "F": "failed", "E": "error", "x": "xfailed", "X": "xpassed"}


def _from_xml(path: str) -> dict[str, str]:
    out = {}
    for tc in ET.parse(path).getroot().iter("testcase"):
        parts = tc.attrib["classname"].split(".")
        mod = next(i for i, p in enumerate(parts) if p.startswith("test_"))
        node = "::".join([parts[mod] + ".py", *parts[mod + 1 :], tc.attrib["name"]])
        kinds = [c.tag for c in tc]
        if "failure" in kinds or "error" in kinds:
            out[node] = "failed"
        elif "skipped" in kinds:
            out[node] = "skipped"
        else:
            out[node] = "passed"
    return out


def _from_log(log: str, collect: str) -> dict[str, str]:
    text = Path(log).read_text()
    rows = [r.strip() for r in text.splitlines() if re.fullmatch(r"[.sFExX]+( +\[ *\d+%\])?", r.strip())]
    chars = "".join(re.sub(r"\s*\[.*", "", r) for r in rows)
    ids = [r.strip() for r in Path(collect).read_text().splitlines() if "::" in r and not r.startswith(" ")]
    return {node: CHAR[c] for node, c in zip(ids, chars, strict=False)}


def _mode(sources: str) -> dict[str, str]:
    merged: dict[str, str] = {}
    for src in sources.split(","):
        merged.update(_from_log(*src.split("@")) if "@" in src else _from_xml(src))
    return merged


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", action="append", required=True, help="NAME=SRC[,SRC...]")
    ap.add_argument("--out", default="benchmarks/results/bnb_peer_suite")
    ap.add_argument("--drop", default="", help="regex of test ids to leave out (e.g. tests outside a sample)")
    args = ap.parse_args()
    runs = {m.split("=", 1)[0]: _mode(m.split("=", 1)[1]) for m in args.mode}
    if args.drop:
        runs = {m: {k: v for k, v in o.items() if not re.search(args.drop, k)} for m, o in runs.items()}
    git = ["git", "rev-parse", "--short", "HEAD"]
    commit = subprocess.run(git, capture_output=True, text=True, check=False).stdout.strip()
    result = {
        "commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "modes": {},
    }
    for name, outcomes in runs.items():
        counts = {k: sum(1 for v in outcomes.values() if v == k) for k in ("passed", "failed", "skipped")}
        failed = sorted(n for n, v in outcomes.items() if v == "failed")
        result["modes"][name] = {**counts, "failed_tests": failed}
        by_file = {}
        for node, v in outcomes.items():
            part = (
                "::".join(node.split("::")[:-1])
                if node.startswith("test_functional")
                else node.split("::")[0]
            )
            row = by_file.setdefault(part, {"passed": 0, "failed": 0, "skipped": 0})
            row[v if v in row else "failed"] += 1
        result["modes"][name]["by_file"] = by_file
    Path(args.out + ".json").write_text(json.dumps(result, indent=1) + "\n")
    Path(args.out + ".md").write_text(_markdown(result))
    summary = {k: {c: v[c] for c in ("passed", "failed", "skipped")} for k, v in result["modes"].items()}
    print(json.dumps(summary))


def _markdown(result: dict) -> str:
    modes = result["modes"]
    lines = [
        "| run | passed | failed | skipped (CPU) |",
        "| --- | --- | --- | --- |",
        *(f"| {m} | {v['passed']} | {v['failed']} | {v['skipped']} |" for m, v in modes.items()),
        "",
        "| part | " + " | ".join(f"{m} passed/failed" for m in modes) + " |",
        "| --- |" + " --- |" * len(modes),
    ]
    parts = sorted({p for v in modes.values() for p in v["by_file"]})
    for part in parts:
        cells = []
        for v in modes.values():
            row = v["by_file"].get(part, {"passed": 0, "failed": 0})
            cells.append(f"{row['passed']}/{row['failed']}")
        lines.append(f"| `{part}` | " + " | ".join(cells) + " |")
    for m, v in modes.items():
        if v["failed_tests"]:
            lines += ["", f"Failed in {m}:", *(f"- `{t}`" for t in v["failed_tests"])]
    return f"commit {result['commit']}, {result['date']}\n\n" + "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
