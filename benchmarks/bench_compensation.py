"""Error compensation before/after (issue 12 item 4): MiniLM-L6 embeddings and the digits CNN.

1. MiniLM-L6 (loaded as in bench_bnb_models.py; embedding = masked mean of the last hidden states, L2
   normalised). Sentences from the license texts (bench_bnb_models.license_sentences): the first
   ``--cal`` are the calibration set, the next ``--sentences`` the evaluation set (disjoint). Calibration
   batches: 8 sentences sorted by length (little padding; padded positions are included in the bias means).
   Formats: NF4 (blocksize 64, double quantization), LLM.int8 (threshold 6.0), Int8Dynamic (per-token
   activations, 99.9 percentile). Variants: plain; ``scale_search`` (grid α = 0.50..1.00 step 0.01);
   ``bias_correct`` (E[(Ŵ−W)x]); scale search then bias correction; for Int8Dynamic also
   ``include_activation_error=True`` (E[q(x) − f(x)]). Reported: mean and min cosine to the float32
   embedding, and the relative weight error ‖W−Ŵ‖/‖W‖ over all quantized layers.
2. Digits CNN (bench_qat_digits.py's model, data split and float training, 40 epochs): per seed and weight
   width (activations 8-bit unsigned per tensor, weights symmetric per channel):
   * PTQ (min-max weights, activation ranges from the training set) without / with ``bn_calibrate`` (20
     training batches of 64);
   * fine-tuning for ``--epochs`` from the float model at 0.1× the float lr, plain CE: plain QAT
     (``method="ste"`` weights, min-max + STE) and noise injection (``method="noise"``, η = 0, 0.5, 1;
     η = 0 is float fine-tuning evaluated hard-quantized), each evaluated without / with ``bn_calibrate``.
   Test accuracy (600 images), mean over ``--seeds``.

Writes benchmarks/results/compensation.{json,md}. Usage: ``python benchmarks/bench_compensation.py
[--quick] [--seeds 3] [--sentences 200] [--cal 64] [--skip-minilm] [--skip-digits]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS, machine_info, write_results

import edgequant
from edgequant.analysis.compensation import bias_correct, bn_calibrate, scale_search
from edgequant.nn import Int8Config, Int8DynamicConfig, NF4Config
from edgequant.qat import QATConfig, QuantSpec, prepare, qat_learning_rate, quantizers

FORMATS = {
    "nf4": lambda: NF4Config(blocksize=64, compress_statistics=True),
    "int8 (LLM.int8)": lambda: Int8Config(threshold=6.0),
    "int8 dynamic": lambda: Int8DynamicConfig(),
}
VARIANTS = ("plain", "scale search", "bias correction", "scale search + bias correction")


def _weight_rel_error(fm, qm) -> float:
    num = den = 0.0
    for name, m in qm.named_modules():
        if hasattr(m, "dequantize") and name:
            w = fm.get_submodule(name).weight.detach().float()
            num += float((m.dequantize().float() - w).pow(2).sum())
            den += float(w.pow(2).sum())
    return (num / den) ** 0.5


def run_minilm(n_eval: int, n_cal: int) -> dict:
    from bench_bnb_models import license_sentences, minilm_dir, minilm_embeddings
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir()
    tok = AutoTokenizer.from_pretrained(path)
    base = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    sents = license_sentences(n_cal + n_eval)
    cal, ev = sorted(sents[:n_cal], key=len), sents[n_cal:]
    cal_batches = [
        dict(tok(cal[i : i + 8], padding=True, truncation=True, max_length=256, return_tensors="pt"))
        for i in range(0, len(cal), 8)
    ]
    ref = minilm_embeddings(base, tok, ev)
    rows = []
    for fmt, make in FORMATS.items():
        extra = ("bias correction incl. activation error",) if fmt == "int8 dynamic" else ()
        for variant in VARIANTS + extra:
            t0 = time.perf_counter()
            q = copy.deepcopy(base)
            edgequant.quantize_(q, make())
            q.eval()
            if "scale" in variant:
                scale_search(base, q)
            if "bias" in variant:
                bias_correct(base, q, cal_batches, include_activation_error="activation" in variant)
            comp_s = time.perf_counter() - t0
            cos = (minilm_embeddings(q, tok, ev) * ref).sum(-1)
            rows.append(
                {
                    "format": fmt,
                    "variant": variant,
                    "mean_cos": cos.mean().item(),
                    "min_cos": cos.min().item(),
                    "weight_rel_error": _weight_rel_error(base, q),
                    "compensation_s": comp_s,
                }
            )
            print(f"minilm {fmt} {variant}: {rows[-1]}", file=sys.stderr)
    return {"eval_sentences": len(ev), "cal_sentences": len(cal), "rows": rows}


def _qcfg(wb: int, method: str, eta: float = 1.0) -> QATConfig:
    return QATConfig(
        weight=QuantSpec(bits=wb, method=method, symmetric=True, granularity="channel", noise_eta=eta),
        activation=QuantSpec(bits=8, method="ste", symmetric=False, granularity="tensor"),
        skip=(),
    )


def _with_bn(fm, m, cal):
    m2 = copy.deepcopy(m).eval()
    bn_calibrate(fm, m2, cal)
    return m2


def run_digits(seeds: int, epochs_float: int, epochs_ft: int, widths) -> dict:
    import bench_qat_digits as bq

    xtr, ytr, xte, yte = bq.load_digits_split()
    per = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        fm = bq.make_net()
        bq.train(fm, xtr, ytr, epochs_float, bq.FLOAT_LR, seed)
        fm.eval()
        gen = torch.Generator().manual_seed(seed + 2)
        cal = [xtr[b] for b in bq.batches(len(ytr), 64, gen)[:20]]
        res = {"float": bq.accuracy(fm, xte, yte)}
        for wb in widths:
            m = copy.deepcopy(fm).eval()
            prepare(m, _qcfg(wb, "ste"))
            for _, q in quantizers(m, "activation"):
                q.train()
            with torch.no_grad():
                m(xtr)
            m.eval()
            cell = {"ptq": bq.accuracy(m, xte, yte), "ptq+bn": bq.accuracy(_with_bn(fm, m, cal), xte, yte)}
            for label, method, eta in (
                ("qat ste", "ste", 1.0),
                *((f"noise η={e}", "noise", e) for e in (0.0, 0.5, 1.0)),
            ):
                torch.manual_seed(seed)
                t = copy.deepcopy(fm).train()
                prepare(t, _qcfg(wb, method, eta), example_inputs=xtr[:256])
                bq.train(t, xtr, ytr, epochs_ft, qat_learning_rate(bq.FLOAT_LR), seed + 1)
                t.eval()
                cell[label] = bq.accuracy(t, xte, yte)
                cell[label + " +bn"] = bq.accuracy(_with_bn(fm, t, cal), xte, yte)
            res[f"W{wb}A8"] = cell
            print(f"digits seed {seed} W{wb}A8: {cell}", file=sys.stderr)
        per.append(res)
    table = {}
    for key in per[0]:
        if key == "float":
            continue
        table[key] = {k: float(np.mean([r[key][k] for r in per])) for k in per[0][key]}
    return {
        "seeds": seeds,
        "epochs_float": epochs_float,
        "epochs_finetune": epochs_ft,
        "float": float(np.mean([r["float"] for r in per])),
        "mean": table,
        "per_seed": per,
    }


def markdown(data: dict) -> str:
    lines = ["# Error compensation (issue 12 item 4)", ""]

    def made_by(sec):
        m = sec["machine"]
        return (
            f"commit {m['commit']}, {m['date']}, {m['cpu']} ({m['cores']} cores, shared), torch "
            f"{m['versions'].get('torch')}; `benchmarks/bench_compensation.py {sec['args']}`."
        )

    if "minilm" in data:
        mm = data["minilm"]
        lines += [
            f"## MiniLM-L6: cosine of sentence embeddings to float32 ({mm['eval_sentences']} evaluation "
            f"sentences; {mm['cal_sentences']} other sentences calibrate the bias)",
            "",
            made_by(mm),
            "",
            "| format | variant | mean cos | min cos | ‖W−Ŵ‖/‖W‖ | compensation (s) |",
            "|---|---|---|---|---|---|",
        ]
        for r in mm["rows"]:
            lines.append(
                f"| {r['format']} | {r['variant']} | {r['mean_cos']:.6f} | {r['min_cos']:.6f} | "
                f"{r['weight_rel_error']:.5f} | {r['compensation_s']:.1f} |"
            )
        lines.append("")
    if "digits" in data:
        d = data["digits"]
        cols = list(next(iter(d["mean"].values())))
        lines += [
            f"## Digits CNN: test accuracy (%), mean of {d['seeds']} seeds (float {d['float']:.2f}; "
            f"fine-tuning {d['epochs_finetune']} epochs)",
            "",
            made_by(d),
            "",
            "| config | " + " | ".join(cols) + " |",
            "|---|" + "---|" * len(cols),
        ]
        for k, v in d["mean"].items():
            lines.append(f"| {k} | " + " | ".join(f"{v[c]:.2f}" for c in cols) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sentences", type=int, default=200)
    ap.add_argument("--cal", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--skip-digits", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = os.path.join(RESULTS, "compensation.json")
    data: dict = {"machine": machine_info()}  # a skipped section keeps its own machine/args from its run
    args_line = " ".join(sys.argv[1:]) or "(defaults)"
    if not args.skip_minilm:
        n, c = (32, 16) if args.quick else (args.sentences, args.cal)
        data["minilm"] = {**run_minilm(n, c), "machine": data["machine"], "args": args_line}
    if not args.skip_digits:
        s, ef, eq = (1, 10, 3) if args.quick else (args.seeds, 40, args.epochs)
        data["digits"] = {**run_digits(s, ef, eq, (4, 3, 2)), "machine": data["machine"], "args": args_line}
    if os.path.exists(path) and not args.quick:  # keep the sections this run skipped (read at the end)
        with open(path) as f:
            data = {**json.load(f), **data}
    write_results("compensation", data, markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
