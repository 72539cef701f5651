"""After training: write the Hugging Face folder, evaluate on both held-out texts, plot, write the model card.

Perplexity here is transformers' (float32): the held-out text is cut into consecutive non-overlapping
windows of 512 tokens and every position but each window's first is scored. The unigram baseline scores
the same tokens with add-one-smoothed training-token frequencies.
"""

from __future__ import annotations

import json
import math
import os
import time

import corpus
import numpy as np
from train import SEQ, model_config, nll_windows, unigram_nll


def _load_log(out: str) -> list[dict]:
    path = os.path.join(out, "loss.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _plot(out: str, log: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["tokens"] / 1e6 for r in log], [r["loss"] for r in log], lw=0.8, label="training batch loss")
    ev = [r for r in log if "heldout_loss" in r]
    ax.plot(
        [r["tokens"] / 1e6 for r in ev],
        [r["heldout_loss"] for r in ev],
        "o-",
        ms=3,
        label="held-out code loss (16 windows)",
    )
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("edgequant reference LM (7.2M params) on the Python stdlib")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "loss.png"), dpi=110)


def _card(meta: dict, ev: dict, log: list[dict], args) -> str:
    last = log[-1] if log else {}
    rows = "\n".join(
        f"| {name} | {ev[name]['tokens']:,} | {ev[name]['ppl']:.3f} | {ev[name]['unigram_ppl']:.1f} | "
        f"{ev[name]['ppl'] / ev[name]['unigram_ppl']:.4f} |"
        for name in ("heldout_code", "heldout_prose")
    )
    return f"""# edgequant reference LM

A natively-float Llama trained from scratch on this project's kind of machine (2 CPU cores, no GPU), the
yardstick for edgequant's quality claims: no weight lies on a quantization grid, and every weight matrix's
rows and columns are multiples of 256, so every ggml type (K-quants included) applies as designed.

| | |
|---|---|
| architecture | LlamaForCausalLM: hidden 256, FFN 768, 6 layers, 4 heads x 64 (no GQA), RoPE 10000, RMSNorm 1e-5, tied embeddings |
| parameters | {ev["parameters"]:,} (F32 safetensors) |
| vocabulary | 8,192: byte-level BPE (GPT-2 pre-tokenizer regex; llama.cpp pre-tokenizer `gpt-2`), trained on the training text; `<|endoftext|>` (id 0) separates files |
| training text | Python {meta["python"]} standard library `.py` files (`sysconfig.get_paths()["stdlib"]`, site-packages excluded): {meta["train_files"]:,} files, {meta["train_tokens"]:,} tokens; sha256 of the text `{meta["corpus_sha256"][:16]}...` |
| held out | packages `email`, `json`, `http` (evaluation); their tests `test/test_email/`, `test/test_json/`, `test/test_http*` excluded from everything; prose: `/usr/share/common-licenses/*` |
| training | {last.get("step", 0)} steps x {args.batch} x {SEQ} tokens = {last.get("tokens", 0):,} tokens (~{last.get("tokens", 0) / max(meta["train_tokens"], 1):.2f} epochs); AdamW (0.9, 0.95), wd 0.1, peak lr {args.lr}, {args.warmup} warmup steps, cosine to 10 %; clip 1.0; seed 1234 |
| wall time | {last.get("seconds", 0) / 60:.1f} min on 2 shared cores (other jobs ran beside it: see the session notes) |
| final training loss | {last.get("loss", float("nan")):.3f} nats/token |

## Held-out perplexity (transformers, float32, windows of {SEQ} tokens)

| text | scored tokens | PPL | unigram PPL | ratio |
|---|---|---|---|---|
{rows}

The unigram baseline scores the same tokens with add-one-smoothed training-token frequencies.
Reproduce: `python benchmarks/reference_lm/train.py --out DIR` (about {last.get("seconds", 0) / 60:.0f} min here).
![loss](loss.png)
"""  # noqa: E501


def finish(args, tok, ids: np.ndarray, heldout: np.ndarray, meta: dict) -> None:
    import torch
    from transformers import LlamaForCausalLM

    out = args.out
    state = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    model = LlamaForCausalLM(model_config())
    model.load_state_dict(state["model"])
    model.eval()
    hf = os.path.join(out, "hf")
    model.save_pretrained(hf, safe_serialization=True)
    tok.save_pretrained(hf)

    t = time.time()
    prose = np.asarray(
        tok._tokenizer.encode(corpus.heldout_prose_text(), add_special_tokens=False).ids, dtype=np.uint16
    )
    ev = {"parameters": sum(p.numel() for p in model.parameters())}
    for name, arr in (("heldout_code", heldout), ("heldout_prose", prose)):
        nll, n = nll_windows(model, arr, windows=10**9)
        uni = unigram_nll(ids, arr, n_tokens=len(arr))
        ev[name] = {
            "tokens": n,
            "nll": nll,
            "ppl": math.exp(nll),
            "unigram_nll": uni,
            "unigram_ppl": math.exp(uni),
        }
        print(f"{name}: {n:,} tokens, PPL {math.exp(nll):.3f}, unigram PPL {math.exp(uni):.1f}", flush=True)
    ev["eval_seconds"] = round(time.time() - t, 1)
    log = _load_log(out)
    with open(os.path.join(out, "eval.json"), "w") as f:
        json.dump({"corpus": meta, "eval": ev}, f, indent=1)
    with open(os.path.join(out, "heldout_code.txt"), "w") as f:
        f.write(corpus.heldout_code_text())
    _plot(hf, log)
    with open(os.path.join(hf, "README.md"), "w") as f:
        f.write(_card(meta, ev, log, args))
