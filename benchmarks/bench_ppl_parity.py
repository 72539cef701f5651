"""Does edgequant's PyTorch evaluation path read perplexity above llama.cpp's? (issue 13, item 7)

For each file, the same chunks (llama-perplexity's method: ctx ``--ctx``, ``--chunks`` chunks, second half
of each scored) are evaluated by llama.cpp (llama-cpp-python) and by edgequant's PyTorch path (the file's
dequantized weights, llama.cpp's activation rounding emulated, ``eval.scoring.load_torch_backend``). Per
scored token t: d_t = nll_torch(t) − nll_llama(t). The PPL ratio is exp(mean d) exactly, and because the
d_t are paired the standard error of mean d is sd(d)/√n (tokens treated as independent; the chunk-level
standard error, from the n_chunks chunk means, is reported beside it because neighbouring tokens are
correlated). A bias shows as |mean d| beyond ~2 standard errors; noise as a mean within them that shrinks
like 1/√n.

Files: the F32 base and ``--ftypes`` quantized from it by edgequant (byte-identical to llama-quantize, no
imatrix). Text: ``--text`` (default: license texts never used by this project's benchmarks, GPL-2 +
LGPL-2.1 + MPL-2.0 + GFDL-1.3, concatenated into the work folder).
Writes ``benchmarks/results/ppl_parity_<model>.{json,md}``.

Usage: ``python benchmarks/bench_ppl_parity.py --model smollm2 [--ctx 512 --chunks 16]``
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_info, write_results
from bench_quality import prepare_subject

LICENSES = ("GPL-2", "LGPL-2.1", "MPL-2.0", "GFDL-1.3")


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """−log softmax(logits)[target] per row, in float64."""
    x = logits.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=1))
    return lse - x[np.arange(len(targets)), targets]


def paired(nll_t: np.ndarray, nll_l: np.ndarray, per_chunk: int) -> dict:
    d = nll_t - nll_l
    n = d.size
    chunk_means = d.reshape(-1, per_chunk).mean(axis=1)
    se_tok = d.std(ddof=1) / math.sqrt(n)
    se_chunk = chunk_means.std(ddof=1) / math.sqrt(chunk_means.size) if chunk_means.size > 1 else float("nan")
    return {
        "n_tokens": int(n),
        "ppl_torch": math.exp(nll_t.mean()),
        "ppl_llamacpp": math.exp(nll_l.mean()),
        "rel_diff_pct": 100 * math.expm1(d.mean()),
        "mean_d": float(d.mean()),
        "sd_d": float(d.std(ddof=1)),
        "se_token_pct": 100 * se_tok,
        "se_chunk_pct": 100 * se_chunk,
        "z_chunk": float(d.mean() / se_chunk) if se_chunk > 0 else float("nan"),
        "chunks_positive": int((chunk_means > 0).sum()),
        "n_chunks": int(chunk_means.size),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("smollm2", "reference-lm"), default="smollm2")
    ap.add_argument("--ftypes", default="Q8_0,Q4_K_M,Q3_K_M")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--text", default=None)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    from edgequant.eval import Chunking, split_chunks
    from edgequant.eval.llamacpp_backend import LlamaCppBackend
    from edgequant.eval.scoring import load_torch_backend
    from edgequant.workflows.quantize import quantize_model

    work = args.workdir or os.path.join(tempfile.gettempdir(), f"eq-parity-{args.model}")
    os.makedirs(work, exist_ok=True)
    subject = prepare_subject(args.model, work)
    text_path = args.text or os.path.join(work, "parity_text.txt")
    if args.text is None:
        parts = [open(f"/usr/share/common-licenses/{n}", encoding="utf-8").read() for n in LICENSES]
        with open(text_path, "w", encoding="utf-8") as f:
            f.write("\n\n".join(parts))
    chunking = Chunking(args.ctx, args.chunks)
    first, last = chunking.first_scored, chunking.n_ctx - 1
    files = {"F32": subject["f32"]}
    for ft in [f for f in args.ftypes.split(",") if f]:
        files[ft] = os.path.join(work, f"{ft}.gguf")
        if not os.path.exists(files[ft]):
            quantize_model(subject["f32"], files[ft], ft, threads=args.threads)
    rows = {}
    t_start = time.perf_counter()
    for label, path in files.items():
        t0 = time.perf_counter()
        llama = LlamaCppBackend(path, args.ctx, args.threads)
        tokens, bos = llama.tokenize(open(text_path, encoding="utf-8").read())
        chunks = split_chunks(tokens, chunking, bos, source=text_path)
        nll_l = np.concatenate(
            [token_nll(llama.logits(c, first, last), c[first + 1 : last + 1]) for c in chunks]
        )
        llama.close()
        torch_b, _ = load_torch_backend(path, args.threads)
        nll_t = np.concatenate(
            [token_nll(torch_b.logits(c, first, last), c[first + 1 : last + 1]) for c in chunks]
        )
        del torch_b
        rows[label] = {**paired(nll_t, nll_l, last - first), "seconds": time.perf_counter() - t0}
        print(
            label, {k: rows[label][k] for k in ("rel_diff_pct", "se_chunk_pct", "z_chunk")}, file=sys.stderr
        )
    data = {
        "machine": machine_info(),
        "model": args.model,
        "source": subject["source"],
        "text": text_path if args.text else "+".join(LICENSES) + " (/usr/share/common-licenses)",
        "ctx": args.ctx,
        "chunks": args.chunks,
        "rows": rows,
        "seconds": time.perf_counter() - t_start,
    }
    write_results(f"ppl_parity_{args.model.replace('-', '_')}", data, markdown(data))
    return 0


def markdown(d: dict) -> str:
    m = d["machine"]
    md = [
        f"# Perplexity: edgequant's PyTorch path vs llama.cpp on the same chunks ({d['model']})",
        "",
        f"commit {m['commit']}, {m['date']}, {m['cpu']}; `python benchmarks/bench_ppl_parity.py --model "
        f"{d['model']}`. Text: {d['text']}, ctx {d['ctx']} × {d['chunks']} chunks (second half scored). "
        "d = per-token nll(PyTorch) − nll(llama.cpp); rel. diff = exp(mean d) − 1; SE from the chunk means.",
        "",
        "| file | tokens | PPL PyTorch | PPL llama.cpp | rel. diff | SE (chunks) | z | chunks with d > 0 "
        "| sd(d) nats |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in d["rows"].items():
        md.append(
            f"| {label} | {r['n_tokens']} | {r['ppl_torch']:.4f} | {r['ppl_llamacpp']:.4f} | "
            f"{r['rel_diff_pct']:+.3f} % | {r['se_chunk_pct']:.3f} % | {r['z_chunk']:+.2f} | "
            f"{r['chunks_positive']}/{r['n_chunks']} | {r['sd_d']:.4f} |"
        )
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    sys.exit(main())
