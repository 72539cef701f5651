"""Perplexity by llama-perplexity's method, and quality against a base model, streamed chunk by chunk.

Method (``tools/perplexity/perplexity.cpp``, ``perplexity()``): the text is tokenized once (BOS first when
the vocabulary adds it), cut into non-overlapping chunks of ``n_ctx`` tokens (at least two chunks' worth of
text is required), each chunk is evaluated from an empty cache with its first token replaced by BOS when
the vocabulary adds BOS, and only the second half is scored: the logits at positions
``n_ctx/2 .. n_ctx-2`` predict tokens ``n_ctx/2+1 .. n_ctx-1`` (``n_ctx - 1 - n_ctx/2`` tokens per chunk).
``PPL = exp(mean nll)``.

Against a base model the same chunks are evaluated by both models and compared at once (KLD, same top
token, Δp, Δppl; :mod:`edgequant.eval.metrics`): no logits file is written, memory holds one chunk's
scored logits per model (``n_ctx/2 x n_vocab`` float32, 50 MB for SmolLM2 at ctx 512).

Backends: ``torch`` (a transformers model; a GGUF is loaded from its dequantized weights) and ``llama.cpp``
(llama-cpp-python, the GGUF itself). :class:`CachedLogits` keeps a base model's chunks in memory to score
several models against one base without re-running it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from edgequant.errors import ConfigError
from edgequant.eval.metrics import TokenStats
from edgequant.eval.text import Chunking, hf_tokenize, read_text, split_chunks

BACKENDS = ("torch", "llama.cpp")


def resolve_backend(backend: str, *paths) -> tuple[str, str | None]:
    """``auto`` -> torch, or llama.cpp (with a one-line note why) when a GGUF among ``paths`` has an
    architecture edgequant cannot build in PyTorch; any other name is returned as it is."""
    if backend != "auto":
        return backend, None
    from edgequant.models.architectures import arch_without_torch_form

    for p in paths:
        arch = arch_without_torch_form(os.fspath(p)) if p is not None else None
        if arch:
            return "llama.cpp", (
                f"{os.fspath(p)}: architecture '{arch}' has no PyTorch form in edgequant; "
                "evaluating in llama.cpp (as --backend llama.cpp)"
            )
    return "torch", None


class LogitsBackend(Protocol):
    name: str
    n_vocab: int

    def logits(self, chunk: np.ndarray, first: int, last: int) -> np.ndarray: ...


class CachedLogits:
    """A backend whose chunk logits are computed once and kept (for one base scored against many models)."""

    def __init__(self, backend: LogitsBackend) -> None:
        self.backend = backend
        self.name = backend.name
        self.n_vocab = backend.n_vocab
        self.label = getattr(backend, "label", "")
        self._cache: dict[tuple[bytes, int, int], np.ndarray] = {}
        self.seconds = 0.0

    def logits(self, chunk: np.ndarray, first: int, last: int) -> np.ndarray:
        key = (np.asarray(chunk, np.int32).tobytes(), first, last)
        if key not in self._cache:
            t0 = time.perf_counter()
            self._cache[key] = self.backend.logits(chunk, first, last)
            self.seconds += time.perf_counter() - t0
        return self._cache[key]


def evaluate_chunks(
    model: LogitsBackend,
    chunks: list[np.ndarray],
    chunking: Chunking,
    base: LogitsBackend | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
) -> dict:
    """Score ``chunks`` with ``model`` (and compare with ``base``); returns the summary dict with timings."""
    if base is not None and base.n_vocab != model.n_vocab:
        raise ConfigError(
            f"the base model has {base.n_vocab} vocabulary entries, the model {model.n_vocab}: "
            f"KL divergence needs the same vocabulary"
        )
    first, last = chunking.first_scored, chunking.n_ctx - 1
    stats = TokenStats()
    t_model = t_base = 0.0
    for i, c in enumerate(chunks):
        t0 = time.perf_counter()
        lq = model.logits(c, first, last)
        t1 = time.perf_counter()
        lb = base.logits(c, first, last) if base is not None else None
        t_base += time.perf_counter() - t1
        t_model += t1 - t0
        stats.add_chunk(lq, c[first + 1 : last + 1], lb)
        if on_chunk:
            on_chunk(i, len(chunks))
    out = stats.summary()
    out.update(
        {
            "n_ctx": chunking.n_ctx,
            "n_chunks": len(chunks),
            "n_evaluated_tokens": len(chunks) * chunking.n_ctx,
            "model_eval_seconds": t_model,
            "model_tokens_per_second": len(chunks) * chunking.n_ctx / t_model if t_model > 0 else None,
        }
    )
    if base is not None:
        out["base_eval_seconds"] = t_base
    return out


def load_torch_backend(path: str | os.PathLike, threads: int | None = None, ggml_rounding: bool = True):
    """(TorchBackend, tokenizer) for a GGUF file or an HF folder, in float32.

    ``ggml_rounding`` (GGUF only): round matmul inputs as llama.cpp's CPU backend does
    (:mod:`edgequant.eval.ggml_activations`), so the file is measured as llama.cpp runs it.
    """
    import torch

    from edgequant.eval import ggml_activations
    from edgequant.eval.torch_backend import TorchBackend
    from edgequant.models import load_causal_lm

    path = os.fspath(path)
    if threads:
        torch.set_num_threads(int(threads))
    model, tokenizer = load_causal_lm(path, dtype=torch.float32)
    if ggml_rounding and os.path.isfile(path):
        ggml_activations.install(model, path)
    return TorchBackend(model, threads=threads, label=path), tokenizer


def open_backend(
    path: str | os.PathLike, backend: str, n_ctx: int, threads: int | None, ggml_rounding: bool = True
):
    """(backend object, tokenize(text) -> (tokens, bos_id)) for ``path`` on ``backend``."""
    if backend == "torch":
        b, tok = load_torch_backend(path, threads, ggml_rounding)
        return b, (lambda text: hf_tokenize(tok, text))
    if backend == "llama.cpp":
        from edgequant.eval.llamacpp_backend import LlamaCppBackend

        if os.path.isdir(path):
            raise ConfigError(
                f"backend llama.cpp needs a GGUF file, {path} is a folder; convert it first", option="backend"
            )
        b = LlamaCppBackend(path, n_ctx, threads or 2)
        return b, b.tokenize
    raise ConfigError(f"unknown backend '{backend}' (choose one of {', '.join(BACKENDS)})")


def perplexity(
    model_path: str | os.PathLike,
    text_path: str | os.PathLike | None = None,
    *,
    n_ctx: int = 512,
    n_chunks: int | None = None,
    base_path: str | os.PathLike | None = None,
    backend: str = "torch",
    threads: int | None = None,
    ggml_rounding: bool = True,
    on_chunk: Callable[[int, int], None] | None = None,
) -> dict:
    """Perplexity of ``model_path`` on a text (default GPL-3), optionally KL etc. against ``base_path``.

    Returns a JSON-ready dict: ppl (+ uncertainty), and with a base ppl_base, delta_ppl, ln_ppl_ratio,
    mean_kld (+ percentiles), same_top_fraction, rms_delta_p, mean_delta_p; plus the setup (text, ctx,
    chunks, tokens, backend) and timings (load, evaluation, tokens/s). ``ggml_rounding``: see
    :func:`load_torch_backend`. ``backend="auto"``: see :func:`resolve_backend` (``backend_note`` says why).
    """
    chunking = Chunking(n_ctx, n_chunks)
    text, text_path = read_text(text_path)
    for p in (model_path, base_path):
        if p is not None and not os.path.exists(p):
            raise ConfigError(f"model {p} does not exist")
    backend, note = resolve_backend(backend, model_path, base_path)
    t0 = time.perf_counter()
    model, tokenize = open_backend(model_path, backend, n_ctx, threads, ggml_rounding)
    base = None
    if base_path is not None:
        base, _ = open_backend(base_path, backend, n_ctx, threads, ggml_rounding)
    load_s = time.perf_counter() - t0
    tokens, bos = tokenize(text)
    chunks = split_chunks(tokens, chunking, bos, source=text_path)
    out = {
        "model": os.fspath(model_path),
        "base": os.fspath(base_path) if base_path is not None else None,
        "backend": backend,
        "backend_note": note,
        "ggml_activation_rounding": backend == "torch" and ggml_rounding,
        "text": text_path,
        "text_tokens": int(tokens.size),
        "bos_per_chunk": bos is not None,
        "load_seconds": load_s,
    }
    out.update(evaluate_chunks(model, chunks, chunking, base, on_chunk))
    for b in (model, base):
        if b is not None and hasattr(b, "close"):
            b.close()
    return out
