"""SmolLM2 QAT files scored by llama.cpp on a second held-out text, from another domain (issue 14, item 3).

``bench_qat_lm.py --model smollm2`` trains on license texts and scores on GPL-3, a license too. This scores
the exported Q4_0 files of its cells (and of its learning-rate sweep: one ``--workdir`` per setting) on text
that is neither: the long descriptions in the installed packages' ``*.dist-info/METADATA`` (English prose,
markdown and code snippets; license-named packages left out), ctx 512 × 16 chunks against the F32 file, as
``bench_qat_lm`` scores GPL-3. It answers two questions: does the learning rate chosen on GPL-3 also rank
first elsewhere, and how much of QAT's gain holds outside the training domain.

    python benchmarks/bench_qat_other_text.py PTQ=/tmp/eq-qat-smollm2/ptq4.gguf \\
        "lr 1e-5=/tmp/eq-qat-smollm2-C/qat4a.gguf" ...

Writes ``benchmarks/results/qat_smollm2_other_text.{json,md}``. Resumable: each file's scores are kept in
``--cache`` under its path, size and mtime (and the text's token count), so a rerun with more files scores
only the new ones.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import sysconfig

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine_info, write_results
from bench_quality import load_rows

from edgequant.eval import CachedLogits, Chunking, evaluate_chunks, split_chunks
from edgequant.eval.llamacpp_backend import LlamaCppBackend


def metadata_text(min_chars: int = 2000) -> tuple[str, list[str]]:
    """The long descriptions of this environment's installed distributions, in name order."""
    site = sysconfig.get_paths()["purelib"]
    parts, names = [], []
    for path in sorted(glob.glob(os.path.join(site, "*.dist-info", "METADATA"))):
        name = os.path.basename(os.path.dirname(path))
        if "license" in name.lower():
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            body = f.read().split("\n\n", 1)[-1]
        if len(body) > min_chars:
            parts.append(body)
            names.append(name.removesuffix(".dist-info"))
    return "\n\n".join(parts), names


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="LABEL=PATH of a GGUF to score")
    ap.add_argument("--f32", default=None, help="the F32 file (default: bench_qat_lm's, in $TMPDIR)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default=os.path.join("/tmp", "eq-qat-other-text.json"), help="scores kept")
    args = ap.parse_args()
    f32 = args.f32 or os.path.join("/tmp", "eq-qat-smollm2", "SmolLM2-135M-F32.gguf")
    files = dict(item.split("=", 1) for item in args.files)
    text, names = metadata_text()
    chunking = Chunking(512, 16)
    base = LlamaCppBackend(f32, 512, args.threads)
    toks, bos = base.tokenize(text)
    chunks = split_chunks(toks, chunking, bos, "METADATA text")
    base = CachedLogits(base)
    ref = evaluate_chunks(base, chunks, chunking)
    rows, cache = [], load_rows(args.cache)
    for label, path in files.items():
        st = os.stat(path)
        key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{len(toks)}"
        if key not in cache:
            m = LlamaCppBackend(path, 512, args.threads)
            try:
                r = evaluate_chunks(m, chunks, chunking, base=base)
            finally:
                m.close()
            cache[key] = {"ppl": r["ppl"], "mean_kld": r["mean_kld"], "same_top": r["same_top_fraction"]}
            with open(args.cache + ".tmp", "w") as f:
                json.dump(cache, f)
            os.replace(args.cache + ".tmp", args.cache)
        r = cache[key]
        gap = 100 * (r["ppl"] / ref["ppl"] - 1)
        rows.append({"label": label, "path": path, "gap_pct": gap, **r})
        print(rows[-1], file=sys.stderr, flush=True)
    data = {"machine": machine_info(), "f32": f32, "float_ppl": ref["ppl"], "text_packages": names,
            "text_tokens": len(toks), "rows": rows}  # fmt: skip
    m = data["machine"]
    md = [
        "# SmolLM2 QAT files on a second held-out text (issue 14, item 3)",
        "",
        f"commit {m.get('commit')}, {m.get('date')}; `python benchmarks/bench_qat_other_text.py`. Text: the "
        f"long descriptions of {len(names)} installed packages' METADATA ({len(toks)} tokens; the first 16 "
        f"chunks of 512 scored, second halves), never trained on. Float (F32 file) ppl {ref['ppl']:.3f}.",
        "",
        "| file | ppl | gap to float | mean KLD | same top token |",
        "|---|---:|---:|---:|---:|",
    ]
    md += [f"| {r['label']} | {r['ppl']:.3f} | {r['gap_pct']:+.2f}% | {r['mean_kld']:.4f} | "
           f"{r['same_top']:.3f} |" for r in rows]  # fmt: skip
    write_results("qat_smollm2_other_text", data, "\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
