"""PTQ against QAT on SmolLM2-135M (the packaged GGUF, loaded with ``edgequant.models.load_causal_lm``).

Weights of every linear layer in the 30 blocks (q/k/v/o, gate/up/down) at 4 and 3 bits, groups of 32 along
each row; embeddings (tied with the LM head) and norms stay float; activations float.

* 4 bits: the deployable ggml Q4_0 grid. PTQ = ggml's own Q4_0 rule (the bytes llama-quantize writes);
  QAT = Q4_0 with learned fp16 block scales (``QuantSpec(method="ggml", format="Q4_0", learn_scale=True)``),
  initialized from ggml's rule, exportable to GGUF bit for bit.
* 3 bits: symmetric [−4, 3] grid, one step per 32 weights (no legacy ggml 3-bit type exists, and K-quants
  need rows of 256 while SmolLM2's width is 576). PTQ = round-to-nearest, step max|w|/3 (``method="ste"``);
  QAT = LSQ initialized at that same step (``init="minmax"``).

QAT: ``edgequant.qat.lm_training.distill_lm``, KL(float ‖ QAT) on the logits only (task weight 0, α 1 → 0.5
cosine), AdamW at ``--lr`` (weights) and ``--scale-lr`` (scales) (warm-up 3 steps, cosine), embeddings frozen,
``--steps`` steps of ``--batch`` random windows of ``--seq-len`` tokens from the training text (default
/usr/share/common-licenses/GPL-3). The float teacher's logits per window are cached (fp16) and shared by both
bit widths. Evaluation on a different text (default /usr/share/common-licenses/Apache-2.0): perplexity
over non-overlapping 256-token windows with the second half scored (llama-perplexity's method), and
mean KL(float ‖ model) per scored token.

Goals (issue 5): QAT ppl within 1% of float at 4 bits; QAT closes ≥ half of PTQ's ppl gap at 3 bits.
Writes ``benchmarks/results/qat_smollm2.{json,md}`` and ``qat_smollm2_loss.png``. Resumable: finished cells
are cached in ``--cache`` and skipped on a rerun; ``--cells`` computes a subset (e.g. in a parallel
process with its own ``--cache``) and ``--merge OTHER_CACHE`` takes the cells another run computed.
``--quick``: 3 steps, 2 eval windows (a smoke test).

Usage: ``python benchmarks/bench_qat_smollm2.py [--steps 12] [--seq-len 64] [--scale-lr 5e-4] [--quick]``
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS, machine_info, write_results

from edgequant.qat import QATConfig, QuantSpec, prepare
from edgequant.qat.lm_training import LMTrainConfig, distill_lm, evaluate_lm

SPECS = {
    "ptq4": QuantSpec(method="ggml", format="Q4_0"),
    "qat4": QuantSpec(method="ggml", format="Q4_0", learn_scale=True),
    "ptq3": QuantSpec(bits=3, method="ste", granularity="group", group_size=32),
    "qat3": QuantSpec(bits=3, method="lsq", granularity="group", group_size=32, init="minmax"),
}
ORDER = ["float", "ptq3", "qat3", "ptq4", "qat4"]


class CachedTeacher(torch.nn.Module):
    """The float model, its logits for each distinct input cached in fp16 (training windows repeat across
    the two bit widths; evaluation windows across all cells)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.cache: dict[bytes, torch.Tensor] = {}

    def forward(self, x):
        key = x.numpy().tobytes()
        if key not in self.cache:
            with torch.no_grad():
                self.cache[key] = self.model(x).logits.to(torch.float16)
        return type("Out", (), {"logits": self.cache[key].float()})()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--eval-windows", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-5, help="weight learning rate")
    ap.add_argument("--scale-lr", type=float, default=5e-4, help="quantizer-scale learning rate")
    ap.add_argument("--train-text", default="/usr/share/common-licenses/GPL-3")
    ap.add_argument("--eval-text", default="/usr/share/common-licenses/Apache-2.0")
    ap.add_argument("--cache", default="/tmp/edgequant_qat_smollm2_cache.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cells", default=",".join(ORDER), help="cells to compute here (default all)")
    ap.add_argument(
        "--merge", default=None, help="cache file of another run (same settings) to take cells from"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.steps, args.eval_windows, args.cache = 3, 2, args.cache + ".quick"
    from edgequant.models import load_causal_lm
    from edgequant.models.packaged import smollm2_gguf_path

    t_start = time.perf_counter()
    model, tok = load_causal_lm(smollm2_gguf_path())
    teacher = CachedTeacher(model)
    train_ids = torch.tensor(tok(open(args.train_text).read())["input_ids"])
    eval_ids = torch.tensor(tok(open(args.eval_text).read())["input_ids"])
    eval_keys = ("eval_windows", "eval_text")
    train_keys = ("steps", "seq_len", "batch", "lr", "scale_lr", "train_text")
    settings = {k: getattr(args, k) for k in eval_keys + train_keys}
    cache = json.load(open(args.cache)) if os.path.exists(args.cache) else {}
    old = cache.get("settings", {})
    if any(old.get(k) != settings[k] for k in eval_keys):  # every cell is evaluated with these
        cache = {"cells": {}}
    elif any(old.get(k) != settings[k] for k in train_keys):  # only the QAT cells are trained with these
        cache["cells"] = {k: v for k, v in cache["cells"].items() if not k.startswith("qat")}
    cache["settings"] = settings
    cells = cache["cells"]
    if args.merge and os.path.exists(args.merge):  # cells computed by a parallel run with the same settings
        other = json.load(open(args.merge))  # the same evaluation; QAT cells carry their own train settings
        if all(other.get("settings", {}).get(k) == settings[k] for k in eval_keys):
            for k, v in other["cells"].items():
                if k not in cells:
                    v.setdefault("train", {t: other["settings"][t] for t in train_keys})
                    cells[k] = v
    for name in ORDER:
        if name in cells or name not in args.cells.split(","):
            continue
        t0 = time.perf_counter()
        log = []
        if name == "float":
            m = model
        else:
            m = copy.deepcopy(model)
            prepare(m, QATConfig(weight=SPECS[name]))
            if name.startswith("qat"):
                cfg = LMTrainConfig(
                    steps=args.steps,
                    seq_len=args.seq_len,
                    batch_size=args.batch,
                    lr=args.lr,
                    scale_lr=args.scale_lr,
                    warmup=min(3, args.steps - 1),
                )
                log = distill_lm(m, teacher, train_ids, cfg, on_step=lambda r, n=name: _progress(n, r))
        res = evaluate_lm(
            m, eval_ids, 256, teacher=teacher if name != "float" else None, max_windows=args.eval_windows
        )
        res.update({"seconds": time.perf_counter() - t0, "log": log})
        if name.startswith("qat"):
            res["train"] = {k: settings[k] for k in train_keys}
        cells[name] = res
        print(
            f"{name}: ppl {res['ppl']:.3f} kl {res.get('kl', 0):.4f} ({res['seconds']:.0f} s)",
            file=sys.stderr,
        )
        with open(args.cache, "w") as f:
            json.dump(cache, f)
        if m is not model:
            del m
    if all(name in cells for name in ORDER):
        _report(cells, settings, len(train_ids), len(eval_ids), time.perf_counter() - t_start, args.quick)
    return 0


def _progress(name, rec):
    if rec["step"] % 5 == 0 or rec["step"] == 1:
        print(
            f"  {name} step {rec['step']}: kd {rec['kd']:.4f} ({rec['seconds']:.1f} s/step)", file=sys.stderr
        )


def _report(cells, settings, n_train, n_eval, wall, quick):
    f = cells["float"]["ppl"]
    rows = []
    for bits in (4, 3):
        p, q = cells[f"ptq{bits}"], cells[f"qat{bits}"]
        rows.append(
            {
                "bits": bits,
                "float_ppl": f,
                "ptq_ppl": p["ppl"],
                "qat_ppl": q["ppl"],
                "ptq_kl": p["kl"],
                "qat_kl": q["kl"],
                "ptq_gap_pct": 100 * (p["ppl"] / f - 1),
                "qat_gap_pct": 100 * (q["ppl"] / f - 1),
                "gap_closed": (p["ppl"] - q["ppl"]) / (p["ppl"] - f) if p["ppl"] != f else float("nan"),
                "train_seconds": q["seconds"],
                "qat_train": q.get(
                    "train", {k: settings[k] for k in ("steps", "seq_len", "batch", "lr", "scale_lr")}
                ),
            }
        )
    r4, r3 = rows
    goals = {
        "qat4_within_1pct_of_float": {"met": r4["qat_gap_pct"] <= 1.0, "value_pct": r4["qat_gap_pct"]},
        "qat3_closes_half_of_ptq_gap": {"met": r3["gap_closed"] >= 0.5, "value": r3["gap_closed"]},
    }
    s = settings
    md = [
        "# QAT vs PTQ on SmolLM2-135M (weights, groups of 32)",
        "",
        f"Train text `{s['train_text']}` ({n_train} tokens): QAT steps × window(s) of seq-len tokens per the "
        f"table, distillation from the float model. Held-out text `{s['eval_text']}` "
        f"({n_eval} tokens): {s['eval_windows']} windows of 256, second half scored. Float = the packaged "
        "Q4_1 GGUF dequantized to float32. 4 bits: ggml Q4_0 grid (PTQ = ggml's rule; QAT = learned fp16 "
        "block scales, exportable bit-exactly). 3 bits: symmetric [−4, 3], step per 32 (PTQ = RTN max/3; "
        "QAT = LSQ from that step).",
        "",
        "| bits | float ppl | PTQ ppl | QAT ppl | PTQ gap | QAT gap | gap closed | PTQ KL | QAT KL "
        "| QAT training |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        md.append(
            f"| {r['bits']} | {r['float_ppl']:.3f} | {r['ptq_ppl']:.3f} | {r['qat_ppl']:.3f} | "
            f"{r['ptq_gap_pct']:+.2f}% | {r['qat_gap_pct']:+.2f}% | {100 * r['gap_closed']:.0f}% | "
            f"{r['ptq_kl']:.4f} | {r['qat_kl']:.4f} | {_train_text(r)} |"
        )
    g4, g3 = goals["qat4_within_1pct_of_float"], goals["qat3_closes_half_of_ptq_gap"]
    md += [
        "",
        f"Goal 4 bits, QAT within 1% of float ppl: **{'met' if g4['met'] else 'not met'}** "
        f"(QAT {g4['value_pct']:+.2f}%).",
        f"Goal 3 bits, QAT closes ≥ half of PTQ's gap: **{'met' if g3['met'] else 'not met'}** "
        f"({100 * g3['value']:.0f}% closed).",
        "",
        f"Wall time {wall:.0f} s for this invocation (cells cached from earlier runs not re-run), "
        "2 shared CPU cores. Loss curves: `qat_smollm2_loss.png`.",
    ]
    name = "qat_smollm2_quick" if quick else "qat_smollm2"
    data = {"machine": machine_info(), "settings": settings, "rows": rows, "goals": goals, "cells": cells}
    write_results(name, data, "\n".join(md) + "\n")
    _plot(cells, os.path.join(RESULTS, f"{name}_loss.png"))


def _train_text(r) -> str:
    t = r["qat_train"]
    return (
        f"{t['steps']} steps × {t['batch']}×{t['seq_len']} tokens, lr {t['lr']:g}, "
        f"scale lr {t['scale_lr']:g}, {r['train_seconds']:.0f} s"
    )


def _plot(cells, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in ("qat4", "qat3"):
        log = cells[name]["log"]
        ax.plot([r["step"] for r in log], [r["kd"] for r in log], label=f"{name}: KL(float ‖ QAT), train")
    ax.set_xlabel("step")
    ax.set_ylabel("KL per token")
    ax.set_title("SmolLM2-135M QAT (distillation)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
