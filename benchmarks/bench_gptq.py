"""GPTQ rounding into llama.cpp's bytes vs llama.cpp's own rounding, measured by llama.cpp (issue 12's goals).

For one model (``--model reference-lm``, the natively-float reference LM, or ``smollm2``):

1. imatrix: ``make_imatrix`` on the F32 file with the calibration text, 16 chunks of 512 (as
   ``bench_allocation.py``; an existing ``imatrix.gguf`` in ``--workdir`` is reused).
2. Hessians: ``collect_hessians`` on the same calibration text, 16 chunks of 512.
3. For every ftype of ``--ftypes``: llama.cpp's file (edgequant's quantizer, byte-identical to
   llama-quantize's) and the GPTQ file, both with the same imatrix and llama.cpp's tensor types; so the two
   files have the same bytes per tensor and the same scale fields, only the codes differ.
4. Both files are scored by llama.cpp (llama-cpp-python): mean KLD against the F32 file on the held-out
   evaluation text (not the calibration text), ctx 512, 16 chunks, second half of each chunk scored; also
   the 99.9% KLD quantile where the scorer gives it, PPL and top-token agreement.

Writes ``benchmarks/results/gptq_<model>.{json,md}``. Resumable: finished rows are kept in ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine_info, write_results
from bench_quality import HeldOutScorer, load_rows

GOALS = {"Q4_K_M": 0.70, "Q3_K_M": 0.65, "Q2_K": 0.60}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("reference-lm", "smollm2"), default="reference-lm")
    ap.add_argument("--ftypes", default="Q4_K_M,Q3_K_M,Q2_K")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--from-workdir", default=None, help="copy the F32 file and imatrix.gguf from here first")
    args = ap.parse_args()
    import torch

    from edgequant.workflows.gptq import collect_hessians
    from edgequant.workflows.quantize import quantize_model, report_dict

    torch.set_num_threads(args.threads)
    work = args.workdir or os.path.join(tempfile.gettempdir(), f"eq-gptq-{args.model}")
    os.makedirs(work, exist_ok=True)
    if args.from_workdir:  # e.g. bench_allocation's: the same F32 conversion and imatrix
        import shutil

        for f in os.listdir(args.from_workdir):
            if f.endswith("-F32.gguf") or f == "imatrix.gguf":
                if not os.path.exists(os.path.join(work, f)):
                    shutil.copy(os.path.join(args.from_workdir, f), work)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    t_start = time.perf_counter()
    scorer = HeldOutScorer(args.model, work, args.threads)
    subject, f32, imatrix = scorer.subject, scorer.f32, scorer.imatrix
    state_path = os.path.join(work, "rows.json")
    rows = load_rows(state_path)
    hessians = None
    hessian_s = None

    def score(key: str, ftype: str, gptq: bool) -> dict:
        nonlocal hessians, hessian_s
        if key in rows:
            return rows[key]
        if gptq and hessians is None:
            t1 = time.perf_counter()
            hessians = collect_hessians(
                f32, subject["calib_text"], n_ctx=512, n_chunks=16, threads=args.threads
            )
            hessian_s = time.perf_counter() - t1
            log(f"hessians: {hessian_s:.0f} s")
        out = os.path.join(work, "out.gguf")
        t1 = time.perf_counter()
        rep = quantize_model(
            f32, out, ftype, imatrix=imatrix, threads=args.threads, hessians=hessians if gptq else None
        )
        q_s = time.perf_counter() - t1
        r = scorer.score(out)
        rows[key] = {
            "bytes": rep.bytes_out,
            "bits_per_weight": rep.bits_per_weight,
            "mean_kld": r["mean_kld"],
            "kld_99_9": r["kld_percentiles"]["99.9"],
            "kld_99": r["kld_percentiles"]["99"],
            "same_top": r["same_top_fraction"],
            "ppl": r["ppl"],
            "type_counts": rep.type_counts(),
            "quantize_seconds": q_s,
            "gptq": report_dict(rep).get("gptq"),
        }
        os.remove(out)
        with open(state_path + ".tmp", "w") as f:
            json.dump(rows, f)
        os.replace(state_path + ".tmp", state_path)
        log(key, {k: rows[key][k] for k in ("bytes", "bits_per_weight", "mean_kld", "gptq")})
        return rows[key]

    compare = []
    for ft in [f for f in args.ftypes.split(",") if f]:
        plain = score(f"llama:{ft}+imatrix", ft, False)
        gptq = score(f"gptq:{ft}+imatrix", ft, True)
        compare.append(
            {
                "ftype": ft,
                "llama": plain,
                "gptq": gptq,
                "kld_ratio": gptq["mean_kld"] / plain["mean_kld"],
                "goal": GOALS.get(ft),
                "same_bytes": gptq["bytes"] == plain["bytes"],
            }
        )
    data = {
        "machine": machine_info(),
        "model": args.model,
        "source": subject["source"],
        "eval_text": subject.get("eval_label", subject["eval_text"]),
        "calib_text": subject.get("calib_label", subject["calib_text"]),
        "hessian_seconds": hessian_s,
        "compare": compare,
        "total_seconds": time.perf_counter() - t_start,
    }
    name = f"gptq_{args.model.replace('-', '_')}"
    write_results(name, data, markdown(data))
    return 0


def _f(v, fmt=".5f") -> str:
    return "-" if v is None else format(v, fmt)


def markdown(d: dict) -> str:
    m = d["machine"]
    lines = [
        f"# GPTQ rounding into llama.cpp's bytes vs llama.cpp's rounding: {d['model']}",
        "",
        f"Commit {m.get('commit')}, {m.get('date')}, {m.get('cpu')}, 2 threads. Produced by "
        f"`python benchmarks/bench_gptq.py --model {d['model']}`. Other jobs shared the 2 cores during the "
        "run (timings are upper bounds).",
        "",
        f"* Source: {d['source']}.",
        f"* Calibration (imatrix and Hessians, 16 chunks of 512): {d['calib_text']}. Evaluation: "
        f"{d['eval_text']}, ctx 512, 16 chunks, by llama.cpp (llama-cpp-python) on the written files: mean "
        "KLD against the F32 file.",
        "* Both files of a row use the same imatrix and llama.cpp's tensor types and scale fields; only the "
        "codes differ (GPTQ: column by column in act-order, decreasing H_jj, with error feedback through "
        "chol(H⁻¹), 1% dampening; a tensor keeps llama.cpp's codes where GPTQ's tr(ΔW H ΔWᵀ) on the "
        "calibration text is larger).",
        "",
        "| ftype | bytes | bpw | KLD llama.cpp | KLD GPTQ | ratio | goal | KLD 99.9% llama / GPTQ | "
        "PPL llama / GPTQ | same top llama / GPTQ | tensors GPTQ (kept plain) | Σtr(ΔWHΔWᵀ) GPTQ/plain |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in d["compare"]:
        p, g = c["llama"], c["gptq"]
        s = g.get("gptq") or {}
        err = s["out_err"] / s["plain_err"] if s else None
        lines.append(
            f"| {c['ftype']} | {g['bytes']}{'' if c['same_bytes'] else ' (differs!)'} | "
            f"{g['bits_per_weight']:.3f} | {p['mean_kld']:.5f} | {g['mean_kld']:.5f} | "
            f"{c['kld_ratio']:.3f} | {_f(c['goal'], '.2f')} | {_f(p['kld_99_9'])} / {_f(g['kld_99_9'])} | "
            f"{p['ppl']:.4f} / {g['ppl']:.4f} | {p['same_top']:.4f} / {g['same_top']:.4f} | "
            f"{s.get('tensors', '-')} ({s.get('kept_plain', '-')}) | {_f(err, '.3f')} |"
        )
    secs = ", ".join(
        f"{c['ftype']} {c['llama']['quantize_seconds']:.0f} s / {c['gptq']['quantize_seconds']:.0f} s"
        for c in d["compare"]
    )
    lines += [
        "",
        f"Quantization time llama.cpp rounding / GPTQ (Hessians excluded): {secs}. "
        f"Hessian collection: {_f(d['hessian_seconds'], '.0f')} s. "
        f"Whole benchmark: {d['total_seconds'] / 60:.1f} min.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
