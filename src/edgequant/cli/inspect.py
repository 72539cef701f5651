"""Show a GGUF file's metadata, tensors, types and bits per weight.

Also the tensors that fell back to another type (a row length that is not a multiple of the type's block).
"""

from __future__ import annotations

from edgequant.cli.parsers import add_command

EXAMPLES = """examples:
  edgequant inspect model.gguf
  edgequant inspect model.gguf --json | jq '.type_counts'
  edgequant inspect model.gguf --no-tensors
"""


def register(sub) -> None:
    p = add_command(sub, "inspect", __doc__, EXAMPLES)
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.add_argument("--no-tensors", action="store_true", help="leave out the per-tensor table")
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.table import Table

    from edgequant.cli.tables import console, mib, safe
    from edgequant.core.text import dumps
    from edgequant.gguf.summary import summarize

    s = summarize(args.file)
    if args.json:
        print(dumps(s))
        return 0
    console.print(
        f"[bold]{safe(s['file'])}[/bold]: GGUF v{s['version']}, {mib(s['file_bytes'])}, "
        f"{safe(s['architecture'])} '{safe(s['name'])}', ftype {safe(s['ftype'])}"
    )
    console.print(
        f"{s['n_tensors']} tensors, {s['n_params']:,} parameters, {s['bits_per_weight']:.3f} bits/weight; "
        "types: " + ", ".join(f"{k} {v}" for k, v in sorted(s["type_counts"].items()))
    )

    if s["n_fallback"]:
        console.print(
            f"[yellow]{s['n_fallback']} tensors fell back[/yellow] (row length not a multiple of 256)"
        )
    meta = Table(title=f"metadata ({s['n_kv']} keys)")
    meta.add_column("key")
    meta.add_column("value", overflow="fold")
    for k, v in s["metadata"].items():
        if isinstance(v, dict) and "array_len" in v:
            v = f"[{v['array_len']} items] {v['head']}..."
        meta.add_row(safe(k), safe(v, 2000))
    console.print(meta)
    if not args.no_tensors:
        table = Table(title="tensors")
        for col in ("tensor", "shape", "type", "bpw", "size", "note"):
            table.add_column(col)
        for t in s["tensors"]:
            table.add_row(
                safe(t["name"]),
                "x".join(map(str, t["shape"])),
                t["type"],
                f"{t['bits_per_weight']:.3f}",
                mib(t["bytes"]),
                "fallback" if t["fallback"] else "",
            )
        console.print(table)
    return 0
