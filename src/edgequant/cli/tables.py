"""Human-readable tables printed by the CLI (rich)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgequant.core.text import clean

# Piped output (logs, READMEs) gets a fixed width wide enough that tables do not wrap.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)


def safe(value, limit: int | None = 300) -> str:
    """Text from a file or the user, ready for rich markup: one line, control characters escaped, cut to
    ``limit`` characters, and ``[...]`` escaped so that a token such as ``[/INST]`` is printed, not parsed."""
    return escape(clean(value, limit))


def mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def print_quantize_summary(report) -> None:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(report.type_counts().items()))
    console.print(
        f"[bold]{safe(report.dst)}[/bold]: {report.ftype} (ftype {report.ftype_id}), "
        f"{mib(report.bytes_out)}, {report.bits_per_weight:.3f} bits/weight, "
        f"{report.seconds:.2f} s"
    )
    console.print(f"tensor types: {counts}")
    if report.n_fallback:
        fb = {}
        for t in report.tensors:
            if t.fallback_from:
                fb[(t.fallback_from, t.new_type)] = fb.get((t.fallback_from, t.new_type), 0) + 1
        text = ", ".join(f"{n} x {a}→{b}" for (a, b), n in sorted(fb.items()))
        console.print(
            f"[yellow]{report.n_fallback} tensors fell back[/yellow] (row length not a multiple of "
            f"the type's block): {text}"
        )


def print_plan(plan: list[dict]) -> None:
    table = Table(title="quantization plan (dry run)")
    for col in ("#", "tensor", "shape", "from", "to", "fallback", "size"):
        table.add_column(col)
    total_in = total_out = 0
    for i, p in enumerate(plan):
        total_in += p["nbytes_in"]
        total_out += p["nbytes_out"]
        table.add_row(
            str(i),
            safe(p["name"]),
            "x".join(map(str, p["shape"])),
            p["old_type"],
            p["new_type"],
            p["fallback_from"] or "",
            mib(p["nbytes_out"]),
        )
    console.print(table)
    console.print(f"tensor data: {mib(total_in)} → {mib(total_out)}")
