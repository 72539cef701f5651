"""The PyTorch half of ``edgequant evaluate --torch``: the book's precision scan and bitsandbytes-style
layers, measured in PyTorch against the float model, and a per-layer time and memory profile.

Candidates (every ``nn.Linear`` inside the transformer blocks; token embeddings, norms and the output head
stay float, as bitsandbytes' ``load_in_4bit`` leaves ``lm_head``):

* ``rtn-w{b}-{sym,asym}`` for b in :data:`SCAN_BITS`: the book's scan (8.4.5, ``for bit in [2, 4, 6, 8]: for
  method in [symmetric, asymmetric]``) as weight-only round-to-nearest fake quantization with one scale per
  :data:`GROUP` consecutive weights of a row (``qat.QuantSpec(method="ste")``, evaluated without training).
  sym: grid [−2^(b−1), 2^(b−1)−1], step max|w|/(2^(b−1)−1); asym: grid [0, 2^b−1], step (max−min)/(2^b−1) over
  the group's range widened to contain 0, integer zero point. The book's formula
  ``round(W × scale) / scale`` is the sym case with scale = 1/step.
* ``nf4``, ``nf4+dq``, ``fp4``, ``int8``: ``edgequant.nn.quantize_`` with bitsandbytes' layers (blocks of 64;
  ``+dq`` double-quantizes the absmax values; ``int8`` is LLM.int8 with outlier threshold 6.0).

Quality: the chunks of each text (llama-perplexity's method, as the llama.cpp candidates) scored in PyTorch
against the float model in PyTorch, :func:`edgequant.workflows.evaluate_measure.quality_row`. The float
model's logits are computed once per text.

Bytes, as a file would store the model: each quantized linear at its packed size (rtn: b bits per weight
plus an fp16 step per group, and a one-byte zero point per group when asym; bitsandbytes layers: the bytes
of the layer's quantized state, i.e. its packed weight, absmax and code tables), every other tensor at 16
bits. ``bpw = 8 · bytes / parameters``.

Profile (``torch.profiler``, one chunk's forward, ``profile_memory=True``): each decoder layer and each of
its linear layers wrapped in a ``record_function`` label by forward hooks; per label the CPU time
(inclusive) and the memory allocated inside it (inclusive). Run for the float model and for each
bitsandbytes candidate.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable

from edgequant.errors import ConfigError

SCAN_BITS = (2, 4, 6, 8)
GROUP = 32
BNB_CANDIDATES = ("nf4", "nf4+dq", "fp4", "int8")
TORCH_KEY = "torch"
TORCH_VERSION = 1


def torch_labels(scan_bits=SCAN_BITS, bnb=BNB_CANDIDATES) -> list[str]:
    """Candidate labels in sweep order."""
    return [f"rtn-w{b}-{s}" for b in scan_bits for s in ("sym", "asym")] + list(bnb)


def _decoder_layers(model):
    for name, mod in model.named_modules():
        if name.endswith(".layers") and hasattr(mod, "__len__") and len(mod) > 0:
            return [(f"{name}.{i}", m) for i, m in enumerate(mod)]
    raise ConfigError(f"{type(model).__name__}: no decoder layers (a '.layers' module list) to quantize")


def quantized_linears(model):
    """(qualified name, module) of the layers a candidate quantized: QAT fake-quantized linears or
    bitsandbytes-style layers."""
    from edgequant.nn.quantized_linear import QuantizedLinear
    from edgequant.qat.modules import QATLinear

    return [(n, m) for n, m in model.named_modules() if isinstance(m, (QATLinear, QuantizedLinear))]


def apply_candidate(model, label: str) -> None:
    """Quantize ``model``'s linear layers but the output head, in place, as candidate ``label``."""
    if label.startswith("rtn-"):
        from edgequant.qat import QATConfig, QuantSpec, prepare

        _, wb, kind = label.split("-")
        spec = QuantSpec(bits=int(wb[1:]), method="ste", symmetric=kind == "sym", group_size=GROUP)
        prepare(model, QATConfig(weight=spec))  # every nn.Linear but lm_head
        model.eval()
        return
    from edgequant import nn as eqnn

    configs = {
        "nf4": lambda: eqnn.NF4Config(compress_statistics=False),
        "nf4+dq": lambda: eqnn.NF4Config(compress_statistics=True),
        "fp4": lambda: eqnn.FP4Config(compress_statistics=False),
        "int8": lambda: eqnn.Int8Config(threshold=6.0),
    }
    if label not in configs:
        raise ConfigError(f"PyTorch candidate '{label}' is unknown; choose from {', '.join(torch_labels())}")
    eqnn.quantize_(model, configs[label]())  # skips lm_head by default


def candidate_bytes(model, label: str) -> tuple[int, int]:
    """(bytes, parameters) of the quantized ``model`` as a file would store it (module docstring)."""
    n_params, total, seen = 0, 0, set()
    for _, mod in quantized_linears(model):
        n = mod.in_features * mod.out_features
        n_params += n
        if label.startswith("rtn-"):
            bits = int(label.split("-")[1][1:])
            groups = -(-mod.in_features // GROUP) * mod.out_features
            total += (n * bits + 7) // 8 + groups * (3 if label.endswith("asym") else 2)
        else:
            total += sum(t.numel() * t.element_size() for t in _state_tensors(mod))
        seen.update(id(t) for t in mod.state_dict(keep_vars=True).values())
        seen.update(id(p) for p in mod.parameters())
        if getattr(mod, "bias", None) is not None:
            total += 2 * mod.bias.numel()
            n_params += mod.bias.numel()
    for p in model.parameters():
        if id(p) not in seen and p.dtype.is_floating_point:
            seen.add(id(p))
            n_params += p.numel()
            total += 2 * p.numel()
    return total, n_params


def _state_tensors(mod):
    """The tensors a bitsandbytes-style layer stores: its state dict (packed weight, absmax, code, ...)."""
    import torch

    return [t for k, t in mod.state_dict().items() if isinstance(t, torch.Tensor) and not k.endswith("bias")]


def layer_profile(model, chunk) -> list[dict]:
    """Per decoder layer and per linear of it: inclusive CPU ms and allocated bytes of one forward."""
    import torch
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    labels, handles, open_ctx = [], [], {}
    linears = quantized_linears(model) or [
        (n, m) for n, m in model.named_modules() if type(m) is torch.nn.Linear and "lm_head" not in n
    ]
    targets = list(_decoder_layers(model)) + linears
    for name, mod in targets:
        labels.append(name)

        def pre(_m, _a, name=name):
            ctx = record_function(name)
            ctx.__enter__()
            open_ctx[name] = ctx

        def post(_m, _a, _o, name=name):
            open_ctx.pop(name).__exit__(None, None, None)

        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    ids = torch.as_tensor(chunk, dtype=torch.int64).unsqueeze(0)
    try:
        with _c_stderr_muted(), torch.inference_mode():
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    stats = {e.key: e for e in prof.key_averages()}
    out = []
    for name in labels:
        e = stats.get(name)
        if e is not None:
            out.append(
                {
                    "module": name,
                    "ms": e.cpu_time_total / 1000.0,
                    "alloc_bytes": int(max(e.cpu_memory_usage, 0)),
                }
            )
    return out


@contextlib.contextmanager
def _c_stderr_muted():
    """File descriptor 2 to /dev/null: the profiler's C++ side (Kineto, c10) logs start/stop lines and
    allocator warnings there, below Python's reach, on every profile."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def run_torch_sweep(
    base_path: str,
    texts: dict[str, str],
    chunking,
    threads: int,
    labels: list[str],
    done: Callable[[str], bool],
    save: Callable[[dict], None],
    progress,
) -> None:
    """Measure each label of ``labels`` not ``done``; ``save(record)`` after each (records: module docstring).

    ``base_path``: the float model (GGUF file or Hugging Face folder) loaded in PyTorch in float32.
    """
    import torch

    from edgequant.eval.scoring import CachedLogits, evaluate_chunks
    from edgequant.eval.text import hf_tokenize, read_text, split_chunks
    from edgequant.eval.torch_backend import TorchBackend
    from edgequant.models import load_causal_lm
    from edgequant.workflows.evaluate_measure import quality_row

    todo = [lbl for lbl in labels if not done(lbl)]
    if not todo and done("float-profile"):
        return
    torch.set_num_threads(threads)
    with progress("PyTorch: load the float model") as advance:
        advance(0, 1, base_path)
        model, tok = load_causal_lm(base_path)
    base = CachedLogits(TorchBackend(model))
    chunks = {}
    for name, path in texts.items():
        text, path = read_text(path)
        tokens, bos = hf_tokenize(tok, text)
        chunks[name] = split_chunks(tokens, chunking, bos, source=path)
    first_chunk = next(iter(chunks.values()))[0]
    if not done("float-profile"):
        save({"label": "float-profile", "profile": layer_profile(model, first_chunk)})
    for label in todo:
        t0 = time.perf_counter()
        m = copy.deepcopy(model)
        apply_candidate(m, label)
        nbytes, n_params = candidate_bytes(m, label)
        backend = TorchBackend(m)
        quality = {}
        with progress(f"PyTorch {label}") as advance:
            for name, ch in chunks.items():
                summary = evaluate_chunks(backend, ch, chunking, base, lambda i, n, t=name: advance(i, n, t))
                quality[name] = quality_row(summary)
        record = {
            "label": label,
            "method": "torch:rtn" if label.startswith("rtn-") else "torch:bnb",
            "bytes": nbytes,
            "n_params": n_params,
            "bpw": 8.0 * nbytes / n_params,
            "quality": quality,
        }
        if not label.startswith("rtn-"):
            record["profile"] = layer_profile(m, first_chunk)
        record["seconds"] = time.perf_counter() - t0
        save(record)
        del m, backend


def torch_settings(settings: dict) -> dict:
    """What the PyTorch sweep's numbers depend on: the scored texts (by hash) and the chunking."""
    texts = {k: v for k, v in settings["texts"].items() if k != "calibration"}
    return {"texts": texts, "n_ctx": settings["n_ctx"], "n_chunks": settings["n_chunks"], "group": GROUP}


def pending(doc: dict, settings: dict, labels: list[str] | None = None) -> tuple[dict, list[str]] | None:
    """(settings, labels) still to measure for ``doc`` (a results document), or None when all are there."""
    s = torch_settings(settings)
    section = doc.get(TORCH_KEY) or {}
    labels = labels or torch_labels()
    if section.get("version") != TORCH_VERSION or section.get("settings") != s:
        return s, [*labels, "float-profile"]
    have = {r["label"] for r in section.get("candidates", [])} | set(section.get("profiles", {}))
    todo = [lbl for lbl in labels if lbl not in have]
    if "float" not in section.get("profiles", {}):
        todo.append("float-profile")
    return (s, todo) if todo else None


def run_into_results(doc, base_path, texts, chunking, threads, settings, labels, progress, save) -> None:
    """Run the sweep for ``labels`` and keep each record in ``doc["torch"]`` (``save()`` after each):
    ``{"version": 1, "settings": ..., "candidates": [records], "profiles": {"float" | label: [...]}}``."""
    section = doc.get(TORCH_KEY) or {}
    if section.get("version") != TORCH_VERSION or section.get("settings") != settings:
        section = {"version": TORCH_VERSION, "settings": settings, "candidates": [], "profiles": {}}
        doc[TORCH_KEY] = section
    want = [lbl for lbl in labels if lbl != "float-profile"]
    done = {r["label"] for r in section["candidates"]}

    def is_done(label: str) -> bool:
        if label == "float-profile":
            return "float" in section["profiles"] and "float-profile" not in labels
        return label in done

    def keep(record: dict) -> None:
        profile = record.pop("profile", None)
        label = record["label"]
        if label == "float-profile":
            section["profiles"]["float"] = profile
        else:
            if profile is not None:
                section["profiles"][label] = profile
            section["candidates"] = [r for r in section["candidates"] if r["label"] != label] + [record]
        save()

    run_torch_sweep(base_path, texts, chunking, threads, want, is_done, keep, progress)
