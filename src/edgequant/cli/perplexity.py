"""Perplexity (llama-perplexity's method) and KL/top-token agreement against a base model.

The text is cut into chunks of --ctx tokens (at least two chunks' worth is needed); each chunk is
evaluated from an empty cache and only its second half is scored, as llama-perplexity does. With --base,
both models see the same chunks and are compared chunk by chunk (mean KL divergence, same top token,
Δppl, RMS Δp), with no logits file. A GGUF runs in PyTorch from its dequantized weights with llama.cpp's
activation rounding (turn off with --float-activations), or in llama.cpp itself with --backend llama.cpp,
which is also what the default (auto) picks, saying so, for an architecture edgequant cannot build in PyTorch.
"""

from __future__ import annotations

from edgequant.cli.parsers import add_command
from edgequant.core.text import dumps
from edgequant.eval.text import DEFAULT_TEXT

EXAMPLES = f"""examples:
  edgequant perplexity model-Q4_K_M.gguf                         (text: {DEFAULT_TEXT})
  edgequant perplexity model-Q4_K_M.gguf -f wiki.test.raw --ctx 512 --chunks 20
  edgequant perplexity model-Q4_K_M.gguf --base model-F32.gguf --json > quality.json
  edgequant perplexity model-Q4_K_M.gguf --backend llama.cpp      (the same measurement in llama.cpp)
  edgequant perplexity ./hf-model-folder --ctx 256

Without -f the text is {DEFAULT_TEXT} (the GNU GPL v3 shipped with Debian/Ubuntu; no download).
"""


def register(sub) -> None:
    p = add_command(sub, "perplexity", __doc__, EXAMPLES)
    p.add_argument("model", metavar="MODEL", help="a GGUF file or a Hugging Face model folder")
    p.add_argument("-f", "--file", metavar="TEXT", help=f"text file to evaluate on (default {DEFAULT_TEXT})")
    p.add_argument("--ctx", type=int, default=512, help="tokens per chunk (default 512)")
    p.add_argument("--chunks", type=int, default=None, help="evaluate at most this many chunks (default all)")
    p.add_argument("--base", metavar="BASE_MODEL", help="reference model: adds KL, top-token agreement, Δppl")
    p.add_argument(
        "--backend",
        choices=("auto", "torch", "llama.cpp"),
        default="auto",
        help="runtime (default auto: torch, or llama.cpp for an architecture with no PyTorch form here)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="threads (default: torch's default; llama.cpp 2)"
    )
    p.add_argument(
        "--float-activations",
        action="store_true",
        help="torch backend: plain float32 matmuls instead of llama.cpp's quantized-activation rounding",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgequant.cli.flags import flag_names
    from edgequant.cli.progress import tensor_progress
    from edgequant.cli.tables import console, safe
    from edgequant.eval.scoring import perplexity

    options = {"n_ctx": args.ctx, "n_chunks": args.chunks, "base_path": args.base, "threads": args.threads}
    options.update(backend=args.backend, ggml_rounding=not args.float_activations)
    with tensor_progress("evaluate", disable=False) as advance, flag_names():
        res = perplexity(
            args.model, args.file, on_chunk=lambda i, n: advance(i, n, f"chunk {i + 1}/{n}"), **options
        )
    if args.json:
        print(dumps(res))
        return 0
    if res.get("backend_note"):
        console.print(safe(res["backend_note"]))
    note = " (default text, no download)" if args.file is None else ""
    console.print(
        f"model: {safe(res['model'])}  backend: {res['backend']}\n"
        f"text: {safe(res['text'])}{note}: {res['text_tokens']} tokens; "
        f"{res['n_chunks']} chunks of {res['n_ctx']}, "
        f"{res['n_scored_tokens']} tokens scored (second half of each chunk)"
    )
    console.print(f"PPL = {res['ppl']:.4f} +/- {res['ppl_uncertainty']:.4f}")
    if res.get("base"):
        kp = res["kld_percentiles"]
        console.print(
            f"base: {safe(res['base'])}  PPL(base) = {res['ppl_base']:.4f}\n"
            f"Δppl = {res['delta_ppl']:+.4f} +/- {res['delta_ppl_uncertainty']:.4f}   "
            f"ln(PPL/PPL(base)) = {res['ln_ppl_ratio']:+.5f}\n"
            f"mean KLD = {res['mean_kld']:.6f} +/- {res['mean_kld_uncertainty']:.6f}   "
            f"99% KLD = {kp['99']:.6f}   max KLD = {kp['max']:.6f}\n"
            f"same top token = {100 * res['same_top_fraction']:.3f} % +/- "
            f"{100 * res['same_top_uncertainty']:.3f} %   RMS Δp = {100 * res['rms_delta_p']:.3f} %"
        )
    tps = res.get("model_tokens_per_second")
    console.print(
        f"evaluation: {res['model_eval_seconds']:.1f} s ({tps:.0f} tokens/s); "
        f"load {res['load_seconds']:.1f} s"
    )
    return 0
