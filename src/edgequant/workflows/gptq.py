"""The model-level half of GPTQ rounding (``edgequant quantize --rounding gptq``).

* ``collect_hessians``: load the GGUF in PyTorch (its dequantized weights, as ``edgequant imatrix`` does),
  run the calibration text through it in chunks of ``n_ctx`` and keep every collected weight's
  ``H = XᵀX`` (:mod:`edgequant.eval.hessian_collect`).
* ``encode_gptq``: one tensor's bytes by :func:`edgequant.analysis.gptq.gptq_quantize`, with llama.cpp's
  scale search fed the same importance vector plain rounding would use (the ``--imatrix`` entry; without one,
  ``diag(H) / count``, which is what llama-imatrix would collect on the same text), the fp16-scale check of
  plain encoding, and a finite-decode check of what is written.

Bad input: no calibration text is a ConfigError (GPTQ needs activations); a text shorter than two contexts
is split_chunks' ConfigError; fewer collected rows than a weight's input width would make H singular by
construction, so that is a ConfigError naming the counts too. A dead input channel (``H_jj = 0``) is not an
error: it is dampened (``analysis.gptq``), since no calibration token can tell its weights apart.
"""

from __future__ import annotations

import os
import time

import numpy as np

from edgequant.analysis.ggml_codes import supported_types
from edgequant.analysis.gptq import GptqResult, gptq_quantize
from edgequant.errors import ConfigError, NonFiniteError
from edgequant.eval.hessian_collect import HessianCollector
from edgequant.eval.text import Chunking, hf_tokenize, read_text, split_chunks
from edgequant.gguf.codecs import dequantize, get_codec, nonfinite_scale_rows


class Hessians:
    """Hessians of one model on one text: ``get(name)`` -> (H, rows) or None; ``info`` a summary dict."""

    def __init__(self, collector: HessianCollector, info: dict) -> None:
        self._c = collector
        self.info = info

    def get(self, name: str) -> tuple[np.ndarray, int] | None:
        return self._c.hessian(name)

    def names(self) -> list[str]:
        return self._c.names()


def collect_hessians(
    model_path: str | os.PathLike,
    text_path: str | os.PathLike | None,
    *,
    n_ctx: int = 512,
    n_chunks: int | None = None,
    threads: int | None = None,
) -> Hessians:
    """Run the model on the text's chunks with the Hessian hooks (module docstring)."""
    import torch

    from edgequant.models import load_causal_lm

    if text_path is None:
        raise ConfigError("--rounding gptq needs calibration text: give it with -f FILE", option="calib_text")
    text, text_path = read_text(text_path)
    if threads:
        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    model, tokenizer = load_causal_lm(os.fspath(model_path), dtype=torch.float32)
    tokens, bos = hf_tokenize(tokenizer, text)
    chunks = split_chunks(tokens, Chunking(n_ctx, n_chunks), bos, source=text_path)
    collector = HessianCollector(model)
    widest = max(int(m.in_features) for _, m in collector.weights.values())
    rows = len(chunks) * n_ctx
    if rows < widest:
        raise ConfigError(
            f"{text_path}: {len(chunks)} chunks of {n_ctx} give {rows} activation rows, fewer than the "
            f"widest layer input ({widest}); GPTQ needs at least that many: give a longer text "
            "(or more --chunks)",
            option="calib_text",
        )
    collector.run(chunks)
    info = {
        "text": text_path,
        "n_ctx": n_ctx,
        "n_chunks": len(chunks),
        "rows": rows,
        "seconds": time.perf_counter() - t0,
    }
    del model
    return Hessians(collector, info)


def can_gptq(new_type: str, shape_ne: tuple[int, ...]) -> bool:
    """GPTQ applies to 2-D weights of a type whose codes can be rewritten."""
    return len(shape_ne) == 2 and get_codec(new_type).name in supported_types()


def encode_gptq(
    x: np.ndarray, new_type: str, qw: np.ndarray | None, hessian: tuple[np.ndarray, int], name: str
) -> GptqResult:
    """One tensor's GPTQ bytes (module docstring); raises NonFiniteError as plain encoding does."""
    h, count = hessian
    imatrix = qw if qw is not None else (np.diagonal(h) / max(count, 1)).astype(np.float32)
    res = gptq_quantize(x, new_type, h, imatrix)
    codec = get_codec(new_type)
    if codec.fp16_scale_fields and nonfinite_scale_rows(res.raw, codec).size:
        raise NonFiniteError(
            f"tensor '{name}': a row overflows the fp16 scale of {new_type} (|w| too large); give this "
            f"tensor another type with a tensor_types override such as '{name}=f16' (or q8_0)",
            option="tensor_types",
        )
    if not np.isfinite(dequantize(res.raw, new_type, x.shape)).all():
        raise NonFiniteError(f"tensor '{name}': a {new_type} block decodes to NaN/Inf; please report this")
    return res
