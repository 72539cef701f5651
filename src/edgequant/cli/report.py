"""Write one self-contained HTML report from an evaluation results file (edgequant evaluate).

The page holds the precision-compression curve (mean KLD and PPL against bits per weight, one series per
method, the Pareto front marked), the candidates' table, the per-tensor sensitivity heatmap (layers x tensor
kinds, when the results have it), llama.cpp speed and memory against bits per weight, the device table (which
candidate fits 1, 2, 4, 8, 16 GB by edgequant recommend's rule) and written advice. Figures are inline SVG;
the file has no script and loads nothing from the network, so it opens offline.
"""

from __future__ import annotations

from edgequant.cli.parsers import add_command
from edgequant.core.text import dumps

EXAMPLES = """examples:
  edgequant report results.json -o report.html
  edgequant report results.json -o report.html --json
"""


def register(sub) -> None:
    p = add_command(sub, "report", __doc__, EXAMPLES)
    p.add_argument("results", metavar="RESULTS.json", help="results of edgequant evaluate")
    p.add_argument("-o", "--output", required=True, metavar="REPORT.html", help="the HTML file to write")
    p.add_argument("--json", action="store_true", help="print a summary as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgequant.cli.tables import console, safe
    from edgequant.workflows.report import MAX_BYTES, write_report

    s = write_report(args.results, args.output)
    if args.json:
        print(dumps(s))
        return 0
    console.print(
        f"{safe(s['output'])}: {s['candidates']} candidates, {s['figures']} figures, "
        f"{s['bytes'] / 1024:.0f} KiB"
        + (f" (over the {MAX_BYTES // 2**20} MiB aim)" if s["over_limit"] else "")
    )
    return 0
