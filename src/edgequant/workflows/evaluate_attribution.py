"""Per-layer error attribution of one quantized GGUF candidate against its float base (``edgequant evaluate
--attribution``): the glue between the files and :func:`edgequant.analysis.attribution.attribute_layers`.

The base GGUF is loaded into PyTorch in float32 (its own values, no activation rounding: a float base runs
in F32 in llama.cpp). Every tensor whose type in the candidate differs from the base's is a quantized
tensor: its ggml-dequantized values (rope permutation undone, :func:`edgequant.models.gguf_model.hf_layout`)
and the rounding llama.cpp's CPU backend applies to that matmul's input for its type
(:func:`edgequant.eval.ggml_activations.rounding_for`; none for the embedding lookup). With tied embeddings
the candidate's ``token_embd`` is both the input embedding (unit ``token_embd``) and the output head (unit
``output``), as in llama.cpp. The windows are llama-perplexity's chunks of the evaluation text (``n_ctx``
tokens, the second half scored, at most ``n_chunks``), so the total is the PyTorch path's mean KLD of the
candidate on those chunks; it differs from the llama.cpp-measured KLD of the sweep by the chunking and by
the runtime (:mod:`edgequant.eval.ggml_activations` says how much).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from edgequant.errors import ConfigError


def quantized_tensors(base_path: str, candidate_path: str, model) -> dict:
    """{module name: QuantizedTensor} of every tensor the candidate stores in another type than the base."""
    import torch

    from edgequant.analysis.attribution import QuantizedTensor
    from edgequant.eval.ggml_activations import rounding_for
    from edgequant.gguf.codecs import dequantize
    from edgequant.gguf.reader import GGUFFile
    from edgequant.models.gguf_model import gguf_to_hf_names, hf_config_dict, hf_layout

    with GGUFFile(base_path) as b:
        base_types = {t.name: t.type_name for t in b.tensors}
    out = {}
    with GGUFFile(candidate_path) as r:
        spec, cfg = hf_config_dict(r)
        to_hf = gguf_to_hf_names(spec, cfg["num_hidden_layers"])
        tied = "output.weight" not in base_types
        for t in r.tensors:
            if t.name not in base_types:
                raise ConfigError(f"{candidate_path}: tensor {t.name} is not in the base {base_path}")
            if t.type_name == base_types[t.name] or t.name not in to_hf:
                continue
            x = hf_layout(t.name, dequantize(r.tensor_data(t), t.type_name, t.np_shape), spec, cfg)
            r.release(t)
            w = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            module = to_hf[t.name].rsplit(".", 1)[0]
            if t.name == "token_embd.weight":
                out[module] = QuantizedTensor(w)
                if not tied:
                    continue
                module = "lm_head"
            out[module] = QuantizedTensor(w, rounding_for(t.type_name, int(w.shape[-1])))
    names = dict(model.named_modules())
    missing = [m for m in out if m not in names]
    if missing:
        raise ConfigError(f"{candidate_path}: no module {missing[0]} in the PyTorch model of {base_path}")
    return out


def attribute_candidate(
    base_path: str | os.PathLike,
    candidate_path: str | os.PathLike,
    text: str,
    *,
    n_ctx: int = 256,
    n_chunks: int = 2,
    share: float = 0.8,
    kind_layers: int = 3,
    threads: int | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """The attribution of ``candidate_path`` against ``base_path`` on ``text`` (the text itself), as JSON."""
    import torch

    from edgequant.analysis.attribution import attribute_layers
    from edgequant.eval.text import Chunking, hf_tokenize, split_chunks
    from edgequant.models.load import load_causal_lm, quiet_transformers

    base_path, candidate_path = os.fspath(base_path), os.fspath(candidate_path)
    if threads:
        torch.set_num_threads(int(threads))
    chunking = Chunking(n_ctx, n_chunks)
    with quiet_transformers():
        model, tokenizer = load_causal_lm(base_path, dtype=torch.float32)
    tokens, bos = hf_tokenize(tokenizer, text)
    chunks = split_chunks(tokens, chunking, bos, source="the evaluation text")
    quantized = quantized_tensors(base_path, candidate_path, model)
    res = attribute_layers(
        model,
        [c.astype(np.int64) for c in chunks],
        quantized,
        positions=slice(chunking.first_scored, n_ctx - 1),
        share=share,
        kind_layers=kind_layers,
        on_progress=on_progress,
    )
    return {**res.to_json(), "n_ctx": n_ctx, "n_chunks": len(chunks), "backend": "torch+ggml-rounding"}


VERSION = 1  # of the results file's "attribution" entry
SHARE, KIND_LAYERS = 0.8, 2
DEFAULT_FTYPE = "Q4_K_M"


def attribution_labels(asked: tuple[str, ...], labels: list[str]) -> list[str]:
    """The candidate labels to attribute: ``"auto"`` is Q4_K_M when swept, else the middle ftype of the sweep;
    ConfigError for a label that is not a candidate of this sweep."""
    out = []
    plain = [lbl for lbl in labels if "+" not in lbl]
    for a in asked:
        if a.lower() == "auto":
            label = DEFAULT_FTYPE if DEFAULT_FTYPE in labels else plain[len(plain) // 2] if plain else None
        else:
            label = next((lbl for lbl in labels if lbl.upper() == a.upper()), None)
            if label is None:
                raise ConfigError(
                    f"attribution candidate '{a}' is not swept (candidates: {', '.join(labels)}); "
                    "add its ftype to the ftypes",
                    option="attribution",
                )
        if label is not None and label not in out:
            out.append(label)
    return out


def attribution_settings(opts, candidate_settings: dict) -> dict:
    """What an attribution depends on: the candidate's texts (by hash), the windows, the path share."""
    if not isinstance(opts.attribution_ctx, int) or opts.attribution_ctx < 8:
        raise ConfigError(
            f"attribution_ctx must be an integer >= 8, got {opts.attribution_ctx!r}", option="attribution_ctx"
        )
    if not isinstance(opts.attribution_chunks, int) or opts.attribution_chunks < 1:
        raise ConfigError(
            f"attribution_chunks must be a positive integer, got {opts.attribution_chunks!r}",
            option="attribution_chunks",
        )
    return {
        "version": VERSION,
        "texts": candidate_settings["texts"],
        "n_ctx": opts.attribution_ctx,
        "n_chunks": opts.attribution_chunks,
        "share": SHARE,
        "kind_layers": KIND_LAYERS,
    }


def run_attribution(job, c, settings: dict) -> None:
    """Attribute candidate ``c`` of an evaluation job (its file kept from scoring, or quantized again) and put
    the result in ``job.doc["attribution"]``; the file is removed unless the job keeps files."""
    from edgequant.eval.text import read_text
    from edgequant.workflows.quantize import quantize_model

    dst = os.path.join(job.work, f"model-{c.label.replace('+', '-')}.gguf")
    if not os.path.exists(dst):
        with job.progress(f"quantize {c.label} (attribution)") as advance:
            quantize_model(
                job.base,
                dst,
                c.ftype,
                imatrix=job.imatrix() if c.imatrix else None,
                threads=job.threads,
                on_tensor=lambda i, n, r: advance(i, n, r.name),
            )
    text, _ = read_text(job.texts["eval"])
    with job.progress(f"attribution {c.label}") as advance:
        res = attribute_candidate(
            job.base,
            dst,
            text,
            n_ctx=settings["n_ctx"],
            n_chunks=settings["n_chunks"],
            share=settings["share"],
            kind_layers=settings["kind_layers"],
            threads=job.threads,
            on_progress=lambda stage, i, n: advance(i, n, stage),
        )
    if not job.opts.keep_files:
        os.remove(dst)
    entry = job.doc.get("attribution")
    if not isinstance(entry, dict) or entry.get("version") != VERSION:
        entry = job.doc["attribution"] = {"version": VERSION, "candidates": {}}
    entry["candidates"][c.label] = {"settings": settings, **res}
