"""Budgeted allocation vs llama.cpp's fixed mixtures, measured by llama.cpp itself (issue 11's goals).

For one model (``--model reference-lm``, the natively-float reference LM, or ``smollm2``):

1. imatrix: ``make_imatrix`` on the F32 file with the calibration text (training-domain code for the
   reference LM, ``/usr/share/common-licenses/Apache-2.0`` for SmolLM2), 16 chunks of 512.
2. Sensitivity table: ``collect_sensitivities`` on the same calibration text (Fisher block second-order
   term, 8 chunks of 512, 4 label draws each), with that imatrix. Its time is the "collection" figure.
3. llama.cpp's mixtures: every ftype of ``--ftypes`` written with the imatrix (edgequant's quantizer, whose
   files are byte-identical to llama-quantize's: ``tests/reference/test_model_quantize_vs_llamacpp.py``),
   and without it for reference.
4. edgequant's plans: one at the exact file size of each mixture (``target_size``), and the curve at
   ``--bpw`` budgets (``target_bpw``); each written with the same imatrix.
5. Every file is scored by llama.cpp (llama-cpp-python): mean KL divergence against the F32 file on the
   held-out evaluation text (not the calibration text), ctx 512, 16 chunks, second half of each chunk scored.

``--proxies`` also measures every (tensor, type)'s KL directly (one forward pass each; slow) and reports
the Spearman correlation of each proxy with it.
Writes ``benchmarks/results/allocation_<model>.{json,md,png}``.
Resumable: the imatrix, the table and finished rows are kept in ``--workdir``.
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

FTYPES = "Q2_K,Q3_K_S,Q3_K_M,Q4_K_S,Q4_K_M,Q5_K_S,Q5_K_M,Q6_K,Q8_0,IQ4_XS,Q4_0"
BPW = "3.0,3.5,4.0,4.5,5.0,5.5,6.5,8.0"
# SmolLM2: the types llama.cpp's own mixtures give its tensors, without Q4_1 (its F32 source is a dequantized
# Q4_1 checkpoint, so Q4_1 would reproduce it exactly: a lossless option no natively-float model has).
SMOLLM2_TYPES = "Q2_K,Q3_K,Q4_K,Q5_K,Q6_K,Q8_0,Q4_0,Q5_0,Q5_1"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("reference-lm", "smollm2"), default="reference-lm")
    ap.add_argument("--ftypes", default=FTYPES)
    ap.add_argument("--bpw", default=BPW)
    ap.add_argument(
        "--types", default=None, help="candidate types (default: the workflow's; SmolLM2: see code)"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--proxies", action="store_true", help="also measure (tensor, type) KLs directly")
    ap.add_argument("--proxies-sample", type=int, default=0, help="measure only this many random pairs")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    import torch

    from edgequant.gguf.ftypes import QuantizeOptions
    from edgequant.gguf.reader import GGUFFile
    from edgequant.workflows.allocate import plan_budget, plan_patterns
    from edgequant.workflows.quantize import quantize_model
    from edgequant.workflows.sensitivity import collect_sensitivities

    torch.set_num_threads(args.threads)
    work = args.workdir or os.path.join(tempfile.gettempdir(), f"eq-allocation-{args.model}")
    os.makedirs(work, exist_ok=True)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    t_start = time.perf_counter()
    scorer = HeldOutScorer(args.model, work, args.threads)
    subject, f32, imatrix = scorer.subject, scorer.f32, scorer.imatrix
    with open(subject["calib_text"], encoding="utf-8") as f:
        calib = f.read()
    types = args.types or (SMOLLM2_TYPES if args.model == "smollm2" else None)
    state_path = os.path.join(work, "rows.json")
    rows = load_rows(state_path)

    table_path = os.path.join(work, "table.json")
    fresh_table = not os.path.exists(table_path)
    t0 = time.perf_counter()
    table = collect_sensitivities(
        f32,
        calib,
        imatrix=imatrix,
        types=types,
        state=table_path,
        threads=args.threads,
        on_progress=lambda s, i, n: log(f"{s} {i}/{n} {time.perf_counter() - t0:.0f}s") if i == n else None,
    )
    collect_s = table.seconds
    log(f"sensitivity table: {collect_s:.0f} s (fresh: {fresh_table})")

    names = [t.name for t in GGUFFile(f32).tensors]

    def score(key: str, ftype: str, opts=None, use_imatrix=True, plan=None) -> dict:
        if key in rows:
            return rows[key]
        out = os.path.join(work, "out.gguf")
        t1 = time.perf_counter()
        rep = quantize_model(
            f32, out, ftype, imatrix=imatrix if use_imatrix else None, options=opts, threads=args.threads
        )
        r = scorer.score(out)
        rows[key] = {
            "bytes": rep.bytes_out,
            "bits_per_weight": rep.bits_per_weight,
            "mean_kld": r["mean_kld"],
            "kld_99": r.get("kld_99"),
            "same_top": r["same_top_fraction"],
            "ppl": r["ppl"],
            "type_counts": rep.type_counts(),
            "seconds": time.perf_counter() - t1,
        }
        if plan is not None:
            rows[key].update(
                {
                    "predicted_kld": plan.predicted_kld,
                    "target": plan.target,
                    "file_bytes_bound": plan.file_bytes,
                }
            )
        os.remove(out)
        with open(state_path + ".tmp", "w") as f:
            json.dump(rows, f)
        os.replace(state_path + ".tmp", state_path)
        log(key, {k: rows[key][k] for k in ("bytes", "bits_per_weight", "mean_kld")})
        return rows[key]

    def plan_row(key, ftype, **target):
        t1 = time.perf_counter()
        plan = plan_budget(table, **target)
        solve_s = time.perf_counter() - t1
        opts = QuantizeOptions(tensor_types=tuple(plan_patterns(plan, names)))
        row = score(key, ftype, opts, plan=plan)
        row["solve_seconds"] = solve_s
        return row

    ftypes = [f for f in args.ftypes.split(",") if f]
    compare = []
    for ft in ftypes:
        ref = score(f"llama:{ft}+imatrix", ft)
        noim = score(f"llama:{ft}", ft, use_imatrix=False)
        try:
            ours = plan_row(f"plan:size-of-{ft}", ft, target_size=ref["bytes"])
        except Exception as e:  # an infeasible budget is reported, not fatal
            compare.append({"ftype": ft, "llama_imatrix": ref, "llama_no_imatrix": noim, "error": str(e)})
            continue
        compare.append(
            {
                "ftype": ft,
                "llama_imatrix": ref,
                "llama_no_imatrix": noim,
                "edgequant_plan": ours,
                "ratio_vs_imatrix": ours["mean_kld"] / ref["mean_kld"],
                "ratio_vs_best_llama": ours["mean_kld"] / min(ref["mean_kld"], noim["mean_kld"]),
            }
        )
    curve = []
    for b in [float(x) for x in args.bpw.split(",") if x]:
        try:
            curve.append({"target_bpw": b, **plan_row(f"plan:bpw-{b}", "Q4_K_M", target_bpw=b)})
        except Exception as e:  # an infeasible budget is reported, not fatal
            curve.append({"target_bpw": b, "error": str(e)})
    proxies = None
    if args.proxies:
        proxies = measure_proxies(work, f32, calib, imatrix, types, table, args.threads, args.proxies_sample)
    data = {
        "machine": machine_info(),
        "model": args.model,
        "source": subject["source"],
        "eval_text": subject.get("eval_label", subject["eval_text"]),
        "calib_text": subject.get("calib_label", subject["calib_text"]),
        "candidate_types": table.settings["types"],
        "sensitivity_seconds": collect_s,
        "sensitivity_settings": table.settings,
        "compare": compare,
        "curve": curve,
        "proxies": proxies,
        "total_seconds": time.perf_counter() - t_start,
    }
    name = f"allocation_{args.model.replace('-', '_')}"
    plot(data, os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", name + ".png"))
    write_results(name, data, markdown(data, name))
    return 0


def measure_proxies(work, f32, calib, imatrix, types, table, threads, sample) -> dict:
    """Measured KL per (tensor, type) (all, or ``sample`` random pairs) beside every proxy: Spearman of each
    proxy with the measurement, the Taylor term's median ratio to it, and the median dynamic spread."""
    import random

    import numpy as np

    from edgequant.analysis.metrics import spearman
    from edgequant.workflows.sensitivity import collect_sensitivities

    pairs = sorted((t.name, ty) for t in table.tensors for ty in t.loss)
    subset = sorted(random.Random(0).sample(pairs, sample)) if sample and sample < len(pairs) else None
    measured = collect_sensitivities(
        f32,
        calib,
        imatrix=imatrix,
        types=types,
        method="measured",
        threads=threads,
        subset=subset,
        state=os.path.join(work, "table_measured.json"),
    )
    m = {(t.name, ty): v for t in measured.tensors for ty, v in t.loss.items()}
    keys = sorted(m)
    a = [m[k] for k in keys]
    by = {t.name: t for t in table.tensors}
    proxies = {"taylor (e, default)": lambda n, ty: by[n].loss[ty]}
    for p in ("trace", "first_order", "imatrix_mse"):
        proxies[p] = lambda n, ty, p=p: by[n].proxies[p][ty]
    out = {"pairs_measured": len(keys), "measured_seconds": round(measured.seconds, 1)}
    for label, f in proxies.items():
        out[f"spearman {label}"] = round(spearman(a, [f(*k) for k in keys]), 4)
    e = np.array([by[n].loss[ty] for n, ty in keys])
    out["median ratio taylor / measured"] = round(float(np.median(e / np.maximum(np.array(a), 1e-12))), 3)
    spreads = [v for t in table.tensors for v in t.spread.values()]
    out["median dynamic spread (f): std/mean over calibration chunks"] = round(float(np.median(spreads)), 3)
    return out


def plot(d: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = [c for c in d["curve"] if "mean_kld" in c]
    ax.plot(
        [c["bits_per_weight"] for c in pts],
        [c["mean_kld"] for c in pts],
        "o-",
        label="edgequant plan (bpw budgets)",
    )
    sz = [c["edgequant_plan"] for c in d["compare"] if "edgequant_plan" in c]
    ax.plot(
        [c["bits_per_weight"] for c in sz],
        [c["mean_kld"] for c in sz],
        "s",
        mfc="none",
        label="edgequant plan at each ftype's size",
    )
    for key, mark, lab in (
        ("llama_imatrix", "x", "llama.cpp ftype + imatrix"),
        ("llama_no_imatrix", "+", "llama.cpp ftype"),
    ):
        r = [c[key] for c in d["compare"]]
        ax.plot([c["bits_per_weight"] for c in r], [c["mean_kld"] for c in r], mark, label=lab)
    for c in d["compare"]:
        ax.annotate(
            c["ftype"], (c["llama_imatrix"]["bits_per_weight"], c["llama_imatrix"]["mean_kld"]), fontsize=7
        )
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight")
    ax.set_ylabel("mean KLD vs F32 (llama.cpp, held-out text)")
    ax.set_title(f"{d['model']}: budgeted allocation vs llama.cpp mixtures")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(d: dict, name: str) -> str:
    m = d["machine"]
    lines = [
        f"# Budgeted allocation vs llama.cpp mixtures: {d['model']}",
        "",
        f"Commit {m.get('commit')}, {m.get('date')}, {m.get('cpu')}, 2 threads. Produced by "
        f"`python benchmarks/bench_allocation.py --model {d['model']}`. Other jobs shared the 2 cores during "
        "the run (timings are upper bounds).",
        "",
        f"* Source: {d['source']}.",
        f"* Calibration (imatrix and sensitivities): {d['calib_text']}. Evaluation: {d['eval_text']}, "
        "ctx 512, 16 chunks, by llama.cpp (llama-cpp-python) on the written files: mean KLD against the F32 "
        "file.",
        f"* Candidate types: {', '.join(d['candidate_types'])}. Sensitivity: Fisher block second-order term, "
        f"{d['sensitivity_settings']['n_chunks']} chunks of {d['sensitivity_settings']['n_ctx']}, "
        f"{d['sensitivity_settings']['draws']} label draws each; "
        f"collection {d['sensitivity_seconds']:.0f} s.",
        "* Every file uses the same imatrix; the plan's file is never larger than the llama.cpp file it is "
        "compared with.",
        "",
        "| ftype | llama.cpp bytes | bpw | KLD llama.cpp (+imatrix) | KLD llama.cpp (no imatrix) | "
        "plan bytes | "
        "plan bpw | KLD plan | plan / llama.cpp+imatrix | plan / best llama.cpp |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in d["compare"]:
        if "error" in c:
            lines.append(f"| {c['ftype']} | - | - | - | - | - | - | - | - | {c['error']} |")
            continue
        r, n, p = c["llama_imatrix"], c["llama_no_imatrix"], c["edgequant_plan"]
        lines.append(
            f"| {c['ftype']} | {r['bytes']} | {r['bits_per_weight']:.3f} | {r['mean_kld']:.5f} | "
            f"{n['mean_kld']:.5f} | {p['bytes']} | {p['bits_per_weight']:.3f} | {p['mean_kld']:.5f} | "
            f"{c['ratio_vs_imatrix']:.3f} | {c['ratio_vs_best_llama']:.3f} |"
        )
    lines += [
        "",
        "## The curve (plans at bits-per-weight budgets)",
        "",
        "| target bpw | bpw | bytes | KLD | predicted KLD (calibration text) | type counts |",
        "| ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for c in d["curve"]:
        if "error" in c:
            lines.append(f"| {c['target_bpw']} | - | - | - | - | {c['error']} |")
            continue
        counts = ", ".join(f"{k} {v}" for k, v in sorted(c["type_counts"].items()))
        lines.append(
            f"| {c['target_bpw']} | {c['bits_per_weight']:.3f} | {c['bytes']} | {c['mean_kld']:.5f} | "
            f"{c['predicted_kld']:.5f} | {counts} |"
        )
    if d.get("proxies"):
        lines += [
            "",
            "## Sensitivity proxies against the measured KL",
            "",
            "```",
            json.dumps(d["proxies"], indent=1),
            "```",
        ]
    lines += ["", f"![KLD vs bpw]({name}.png)", "", f"Whole benchmark: {d['total_seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
