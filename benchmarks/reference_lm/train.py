"""Train edgequant's reference language model: a natively-float Llama on the Python standard library.

Why this model exists: both real LLMs installable offline (SmolLM2-135M, Gemma 3 270M) are dequantized
quantized checkpoints whose widths (576, 640) are not multiples of 256, so every comparison of
quantizers, allocations, compensation or QAT on them is distorted. This model is float from the start
and every weight matrix's rows and columns are multiples of 256, so each ggml type applies as designed.

Shape (why): hidden 256, FFN 768, 6 layers, 4 heads of 64 (no GQA), vocabulary 8,192 (a byte-level BPE
trained here: SmolLM2's 49,152 entries would make the tied embedding/output layer 6x larger and the
training ~4x slower), tied embeddings, context 512. About 7.2M parameters: on 2 CPU cores an
optimizer step of 8 x 512 tokens takes 15 s or more, so about a million tokens fit in the time budget; a
wider (512) model would see 4x fewer tokens in the same time and end up worse.

Budget (why 300 steps of 8 x 512 tokens, 1.2M tokens, ~0.15 epoch): on this project's machine (2 cores,
shared with the rest of a working session) a step took 15-50 s, so this is what fits in the ~100 minutes
the issue allows. The model reaches its goal: held-out code perplexity 238.2 against the unigram baseline's
1,073.5 (0.22; the goal is at most 1/3). Both held-out losses were still falling at the end (loss.png), so
more steps on a quiet machine would give a better model.

One command, reproducible (fixed seeds; the batch of each step is a function of the step alone; resumable:
rerun the same command after an interruption and it continues from ``ckpt.pt``):

    python benchmarks/reference_lm/train.py --out /tmp/reflm            # train, evaluate, write the folder
    python benchmarks/reference_lm/train.py --out /tmp/reflm --steps 20  # a smoke run

Writes into ``--out``: ``tokenizer.json``, ``tokens.npz`` (token cache), ``corpus.json``, ``ckpt.pt``
(resume state, loaded with ``weights_only=True``), ``loss.jsonl``, and at the end ``hf/`` (config.json,
model.safetensors in F32, tokenizer files, README.md model card, loss.png), ``eval.json`` and
``heldout_code.txt``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import corpus

VOCAB = 8192
SEQ = 512
SEED = 1234


def build_tokenizer(out: str, texts: list[str]):
    """Byte-level BPE (GPT-2 pre-tokenizer regex, which llama.cpp implements as pre-tokenizer ``gpt-2``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    path = os.path.join(out, "tokenizer.json")
    if not os.path.exists(path):
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=VOCAB,
            special_tokens=[corpus.EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        tok.save(path + ".tmp")
        os.replace(path + ".tmp", path)
    fast = PreTrainedTokenizerFast(
        tokenizer_file=path, eos_token=corpus.EOT, bos_token=corpus.EOT, unk_token=None, model_max_length=SEQ
    )
    return fast


def tokenize_corpus(out: str, tok, texts: list[str]) -> np.ndarray:
    path = os.path.join(out, "tokens.npz")
    if os.path.exists(path):
        return np.load(path)["ids"]
    eot = tok.convert_tokens_to_ids(corpus.EOT)
    ids: list[int] = []
    for enc in tok._tokenizer.encode_batch(texts, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(eot)
    arr = np.asarray(ids, dtype=np.uint16)
    np.savez(path + ".tmp.npz", ids=arr)
    os.replace(path + ".tmp.npz", path)
    return arr


def model_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=64,
        max_position_embeddings=SEQ,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        hidden_act="silu",
        bos_token_id=0,
        eos_token_id=0,
        attention_bias=False,
        mlp_bias=False,
    )


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def batch(ids: np.ndarray, step: int, bsz: int):
    import torch

    rng = np.random.default_rng(SEED + step)  # a function of the step alone: resuming replays the same data
    starts = rng.integers(0, len(ids) - SEQ - 1, size=bsz)
    x = np.stack([ids[s : s + SEQ + 1] for s in starts]).astype(np.int64)
    return torch.from_numpy(x[:, :-1]), torch.from_numpy(x[:, 1:])


def nll_windows(model, ids: np.ndarray, windows: int) -> tuple[float, int]:
    """Mean NLL (nats) over up to ``windows`` consecutive non-overlapping windows of SEQ tokens.

    Every position except each window's first is scored (the first has no context)."""
    import torch

    total, count = 0.0, 0
    n = min(windows, len(ids) // SEQ)
    with torch.no_grad():
        for w in range(n):
            x = torch.from_numpy(ids[w * SEQ : (w + 1) * SEQ].astype(np.int64))[None]
            logits = model(x).logits[0, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum")
            total += float(nll)
            count += SEQ - 1
    return total / max(count, 1), count


def unigram_nll(train_ids: np.ndarray, ids: np.ndarray, n_tokens: int) -> float:
    """Unigram baseline on the same scored tokens: add-one smoothed training frequencies."""
    counts = np.bincount(train_ids, minlength=VOCAB).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    n = (min(n_tokens, len(ids) // SEQ * SEQ) // SEQ) * SEQ
    scored = ids[:n].reshape(-1, SEQ)[:, 1:].reshape(-1)
    return float(-logp[scored].mean())


def train(args, out: str, ids: np.ndarray, heldout_ids: np.ndarray) -> None:
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(SEED)
    torch.set_num_threads(args.threads)
    model = LlamaForCausalLM(model_config())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    ckpt = os.path.join(out, "ckpt.pt")
    log_path = os.path.join(out, "loss.jsonl")
    start, elapsed0 = 0, 0.0
    if os.path.exists(ckpt):
        state = torch.load(
            ckpt, weights_only=True
        )  # plain tensors and numbers only: no unpickling of objects
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, elapsed0 = int(state["step"]), float(state["elapsed"])
    t0 = time.time() - elapsed0
    try:
        from tqdm import tqdm

        bar = tqdm(total=args.steps, initial=start, desc="train", unit="step", mininterval=5)
    except ImportError:
        bar = None
    model.train()
    for step in range(start, args.steps):
        lr = lr_at(step, args.steps, args.lr, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = batch(ids, step, args.batch)
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        rec = {
            "step": step + 1,
            "loss": round(loss.item(), 5),
            "lr": lr,
            "tokens": (step + 1) * args.batch * SEQ,
            "seconds": round(time.time() - t0, 1),
        }
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            model.eval()
            rec["heldout_loss"] = round(nll_windows(model, heldout_ids, args.eval_windows)[0], 5)
            model.train()
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.3f}")
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps:
            torch.save(
                {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "step": step + 1,
                    "elapsed": time.time() - t0,
                },
                ckpt + ".tmp",
            )
            os.replace(ckpt + ".tmp", ckpt)
    if bar is not None:
        bar.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--ckpt-every", type=int, default=25)
    ap.add_argument("--finish-only", action="store_true", help="skip training; write the folder from ckpt.pt")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    t = time.time()
    texts, skipped = corpus.training_texts()
    tok = build_tokenizer(args.out, texts)
    ids = tokenize_corpus(args.out, tok, texts)
    heldout = np.asarray(
        tok._tokenizer.encode(corpus.heldout_code_text(), add_special_tokens=False).ids, dtype=np.uint16
    )
    print(
        f"corpus: {len(texts)} files ({skipped} skipped), {len(ids):,} training tokens, "
        f"{len(heldout):,} held-out code tokens ({time.time() - t:.0f} s)",
        flush=True,
    )
    meta = {
        "train_files": len(texts),
        "skipped_files": skipped,
        "train_tokens": len(ids),
        "heldout_code_tokens": len(heldout),
        "corpus_sha256": corpus.corpus_sha256(texts),
        "python": sys.version.split()[0],
    }
    with open(os.path.join(args.out, "corpus.json"), "w") as f:
        json.dump(meta, f, indent=1)
    if not args.finish_only:
        train(args, args.out, ids, heldout)
    from finish import finish

    finish(args, tok, ids, heldout, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
