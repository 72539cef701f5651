"""Quantization-aware fine-tuning of a causal LM, distilled from its float self: what ``edgequant qat`` runs.

Order of work: validate the options and the output paths, load the model (GGUF file or Hugging Face folder;
default the packaged SmolLM2-135M), keep a float copy as the teacher, ``qat.prepare`` the student, optionally
measure held-out perplexity and KL before, train with ``qat.lm_training.distill_lm`` (one JSON line per step
in the loss log, which appears complete or not at all), measure after, optionally export a GGUF that holds
exactly the trained weights (``qat.export.export_gguf``). Torch is imported only when the job runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from edgequant.core.atomic import AtomicFile, check_writable
from edgequant.errors import ConfigError

# Weight formats of the job: ggml types with learned fp16 block scales (Q4_0/Q4_1/Q8_0), ggml types run
# through the real codec (K-quants, Q5_x), and 'lsq' (a learned-step grid, not a GGUF type).
FORMATS = ("Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "Q5_0", "Q5_1", "lsq")
_LEARNED_SCALE = ("Q4_0", "Q4_1", "Q8_0")
_EVAL_TOKENS = 256


def qat_spec(fmt: str, *, bits: int = 4, group_size: int = 32):
    """The ``QuantSpec`` of a weight format of :data:`FORMATS` (``bits``/``group_size`` for 'lsq' only)."""
    from edgequant.qat import QuantSpec

    if fmt not in FORMATS:
        raise ConfigError(f"QAT weight format '{fmt}' is unknown; choose one of {', '.join(FORMATS)}")
    if fmt == "lsq":
        return QuantSpec(bits=bits, method="lsq", group_size=group_size, init="minmax")
    if fmt in _LEARNED_SCALE:
        return QuantSpec(method="ggml", format=fmt, learn_scale=True)
    return QuantSpec(method="codec", format=fmt)


def _read_text(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path}: not UTF-8 text") from None


def _evaluate(student, teacher, eval_ids) -> dict:
    from edgequant.qat.lm_training import evaluate_lm

    return evaluate_lm(student, eval_ids, min(_EVAL_TOKENS, eval_ids.numel()), teacher=teacher)


def _train(student, teacher, ids, train, log_path: str | None, on_step) -> list[dict]:
    """``distill_lm``; each step record is written to ``log_path`` (atomically) and passed to ``on_step``."""
    from edgequant.qat.lm_training import distill_lm

    if not log_path:
        return distill_lm(student, teacher, ids, train, on_step=on_step)
    with AtomicFile(log_path) as log_file:

        def step(rec: dict) -> None:
            log_file.write((json.dumps(rec) + "\n").encode())
            if on_step:
                on_step(rec)

        return distill_lm(student, teacher, ids, train, on_step=step)


def finetune_qat(
    model: str | os.PathLike | None,
    text: str | os.PathLike,
    train: Any,
    *,
    fmt: str = "Q4_0",
    bits: int = 4,
    group_size: int = 32,
    eval_text: str | os.PathLike | None = None,
    log_path: str | os.PathLike | None = None,
    out_path: str | os.PathLike | None = None,
    threads: int | None = None,
    init_gguf: str | os.PathLike | None = None,
    on_step: Callable[[dict], None] | None = None,
) -> dict:
    """Fine-tune ``model`` on ``text`` with its weights fake-quantized as ``fmt``; returns a report dict.

    ``train``: a ``qat.lm_training.LMTrainConfig``. ``on_step(record)`` after every step. Keys of the report:
    model, format, steps, train_tokens, final_kd, seconds; with ``eval_text`` also float/before/after
    (perplexity and KL on at most 256 held-out tokens); with ``out_path`` also export (dst, types, bytes,
    bitwise_checked, f32_fake); with ``init_gguf`` (a GGUF of the same model whose weights have the type
    ``fmt``, e.g. GPTQ-rounded) the student starts from its codes and scales (``qat.init_from_gguf``) and
    the report has init (path, tensors, weights, moved). Raises ConfigError for bad options or a missing
    model, OutputError for an output that cannot be written; nothing is left at ``log_path`` or ``out_path``
    on error.
    """
    import copy

    import torch

    from edgequant.models import load_causal_lm
    from edgequant.qat import QATConfig, prepare

    spec = qat_spec(fmt, bits=bits, group_size=group_size)  # validates the options before the slow parts
    log_path = os.fspath(log_path) if log_path else None
    out_path = os.fspath(out_path) if out_path else None
    for path in (out_path, log_path):
        if path:
            check_writable(path)
    if threads:
        torch.set_num_threads(threads)
    if model is None:
        from edgequant.models.packaged import smollm2_gguf_path

        model = smollm2_gguf_path()
    model = os.fspath(model)
    if not os.path.exists(model):
        raise ConfigError(f"model '{model}' does not exist (give a GGUF file or a Hugging Face folder)")
    if init_gguf is not None:
        init_gguf = os.fspath(init_gguf)
        if fmt not in _LEARNED_SCALE:
            raise ConfigError(
                f"init_gguf needs a format with learned block scales ({'/'.join(_LEARNED_SCALE)}), not {fmt}",
                option="init_gguf",
            )
        if not os.path.isfile(init_gguf):
            raise ConfigError(f"init_gguf file '{init_gguf}' does not exist", option="init_gguf")
    train_text = _read_text(os.fspath(text), "training text")
    held_out = _read_text(os.fspath(eval_text), "held-out text") if eval_text else None
    student, tok = load_causal_lm(model)
    teacher = copy.deepcopy(student).eval()
    ids = torch.tensor(tok(train_text)["input_ids"])
    eval_ids = torch.tensor(tok(held_out)["input_ids"]) if held_out is not None else None
    report: dict = {"model": model, "format": fmt, "steps": train.steps, "train_tokens": int(ids.numel())}
    prepare(student, QATConfig(weight=spec))
    if init_gguf is not None:
        from edgequant.qat.gguf_init import init_from_gguf

        report["init"] = {"path": init_gguf, **init_from_gguf(student, init_gguf)}
    if eval_ids is not None:
        report["before"] = _evaluate(student, teacher, eval_ids)
        report["float"] = _evaluate(teacher, None, eval_ids)
    log = _train(student, teacher, ids, train, log_path, on_step)
    report["final_kd"] = log[-1]["kd"]
    report["seconds"] = sum(r["seconds"] for r in log)
    if eval_ids is not None:
        report["after"] = _evaluate(student, teacher, eval_ids)
    if out_path:
        from edgequant.qat.export import export_gguf

        rep = export_gguf(student, tok, out_path)
        report["export"] = {k: rep[k] for k in ("dst", "types", "bytes", "bitwise_checked", "f32_fake")}
    return report
