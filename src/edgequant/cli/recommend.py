"""Pick the best GGUF file of a model that fits a device's memory at a context length.

Candidates: a .gguf file, a folder of .gguf files, or a results JSON listing files with their mean KLD
({"format": "edgequant-candidates", "version": 1, "candidates": [{"file": "m-q4_k_m.gguf", "kld": 0.012},
...]}, paths relative to the JSON). Without a KLD for every file they are ranked by bits per weight, and the
answer says so. Each candidate needs weights (its tensor bytes) + KV cache (n_ctx x layers x KV heads x
head dim x 2 x the KV type's bytes, from the GGUF metadata) + llama.cpp's compute and output buffers,
measured by loading the file in llama.cpp at that context (llama-cpp-python). The first candidate in rank
order that fits is chosen; --threads-probe then times generation at each thread count, and --check-rss
measures the RSS growth of loading the choice and decoding a ubatch. The book's rule of
thumb (under 4 GB Q4_0/Q4_K_S, 4-8 GB Q5_K_M/Q4_K_M, over 8 GB Q5_K_L/Q6_K) is shown beside the answer: it
is for 7B-class models, and Q5_K_L does not exist in llama.cpp.
"""

from __future__ import annotations

from edgequant.cli.parsers import add_command
from edgequant.core.text import dumps

EXAMPLES = """examples:
  edgequant recommend --memory 4GiB ./smollm2-quants/
  edgequant recommend --memory 600m --ctx 8192 results.json --json
  edgequant recommend --memory 2g --threads-probe model-q4_k_m.gguf

Sizes: N[b|k|kib|m|mib|g|gib] (k, m, g decimal; kib, mib, gib binary).
"""


def register(sub) -> None:
    p = add_command(sub, "recommend", __doc__, EXAMPLES)
    p.add_argument("source", metavar="MODEL_OR_DIR_OR_RESULTS", help=".gguf, folder or results JSON")
    p.add_argument("--memory", required=True, metavar="SIZE", help="memory available to llama.cpp, e.g. 4GiB")
    p.add_argument("--ctx", type=int, default=4096, help="context length in tokens (default 4096)")
    p.add_argument("--cache-type", default="F16", metavar="TYPE", help="KV cache type (default F16)")
    p.add_argument("--threads-probe", action="store_true", help="time generation at 1..N threads")
    p.add_argument("--check-rss", action="store_true", help="load the choice, decode a ubatch, report RSS")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def run(args) -> int:
    from edgequant.cli.flags import flag_names
    from edgequant.cli.tables import console, safe
    from edgequant.workflows.recommend import parse_memory, recommend, recommendation_dict
    from edgequant.workflows.recommend_measure import measure_rss, probe_threads

    overrides = {"memory": "--memory", "n_ctx": "--ctx", "kv_type": "--cache-type"}
    with flag_names(**overrides):
        memory = parse_memory(args.memory)
        r = recommend(args.source, memory, n_ctx=args.ctx, kv_type=args.cache_type)
        if args.threads_probe:
            r.threads.extend(probe_threads(r.choice.candidate.path, args.ctx, r.kv_type))
        rss = (
            measure_rss(r.choice.candidate.path, args.ctx, r.kv_type, min(512, args.ctx))
            if args.check_rss
            else None
        )
    if args.json:
        out = recommendation_dict(r)
        if rss is not None:
            out["rss_growth_bytes"] = rss["decoded"]
            out["rss_tokens_decoded"] = rss["tokens"]
        print(dumps(out))
        return 0
    c = r.choice
    console.print(
        f"{safe(c.candidate.path)}: fits in {memory / 2**30:.2f} GiB at n_ctx {r.n_ctx}: needs "
        f"{c.total / 2**30:.3f} GiB (weights {_mib(c.weights)} MiB + KV {_mib(c.kv)} MiB + compute "
        f"{_mib(c.compute)} MiB + output {_mib(c.output)} MiB, measured in llama.cpp); {r.note}"
    )
    for f in r.fits:
        mark = "*" if f is c else " "
        kld = "-" if f.candidate.kld is None else f"{f.candidate.kld:.5f}"
        console.print(
            f" {mark} {safe(f.candidate.label)}: {f.candidate.bpw:.3f} bpw, KLD {kld}, total "
            f"{_mib(f.total)} MiB (weights {_mib(f.weights)} + KV {_mib(f.kv)})"
        )
    if r.threads:
        t, s = r.threads[0]
        console.print(f"fastest generation: {t} threads, {s:.1f} tokens/s")
    if rss is not None:
        console.print(
            f"measured: RSS grew by {_mib(rss['decoded'])} MiB loading it and decoding {rss['tokens']} tokens"
        )
    console.print(
        f"the book's rule of thumb for {memory / 1e9:.1f} GB: {' or '.join(r.rule_of_thumb)} "
        "(for 7B-class models; Q5_K_L does not exist in llama.cpp)"
    )
    return 0
