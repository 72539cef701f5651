"""``collect_sensitivities``: for every quantizable tensor of a float GGUF model and every candidate type, the
bytes it would take and the mean KL divergence it is predicted to add (the input of the allocator).

Steps: read the file (mmap); pick the tensors llama-quantize may quantize (``is_eligible``) and, per tensor,
the candidate types whose block divides its rows (others are skipped with the reason); load the model into
PyTorch (:func:`edgequant.models.load.load_causal_lm`); quantize every tensor to every candidate with
edgequant's llama.cpp-identical codecs (with the imatrix where the type uses it, as the final file will be
written) and keep the error ``ε`` in the PyTorch layout; tokenize the calibration text into chunks; estimate
the KL each ``ε`` adds by :func:`edgequant.analysis.sensitivity.fisher_sensitivity` (default, the block
second-order term) or measure it by a forward pass per (tensor, type) (``method="measured"``).

The table is saved as JSON (``state``) and reused when the same inputs and settings are asked again, so one
collection serves any number of budgets. Bytes are each tensor's data size in the output file, aligned as
llama.cpp aligns it (``general.alignment``, 32 by default).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from edgequant.core.atomic import atomic_write_bytes
from edgequant.errors import ConfigError
from edgequant.gguf.codecs import codec_names, dequantize, get_codec, quantize
from edgequant.gguf.ftypes import QuantizeOptions
from edgequant.gguf.imatrix import Imatrix
from edgequant.gguf.reader import GGUFFile
from edgequant.gguf.tensor_encode import imatrix_for_tensor
from edgequant.gguf.type_rules import is_eligible

# Candidate types by default: the K-quants and IQ4_XS for rows divisible by 256, the 32-block types for the
# rest (llama.cpp's fallbacks), Q8_0 for everything. No type that needs an imatrix to be usable (IQ1-IQ3).
DEFAULT_TYPES = ("Q2_K", "Q3_K", "IQ4_XS", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q4_0", "Q5_0", "Q5_1", "IQ4_NL")
_FLOAT_SOURCES = ("F32", "F16", "BF16")
_NEEDS_IMATRIX = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S")
METHODS = ("fisher", "measured")


@dataclass
class TensorCandidates:
    """One tensor: ``bytes[type]`` (aligned data bytes), ``nbytes[type]`` (unaligned, for bits/weight),
    ``loss[type]`` (predicted mean KL added), ``skipped[type]`` (why a requested type cannot be used)."""

    name: str
    shape: list[int]
    n_params: int
    source_type: str
    bytes: dict[str, int] = field(default_factory=dict)
    nbytes: dict[str, int] = field(default_factory=dict)
    loss: dict[str, float] = field(default_factory=dict)
    spread: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    # the other proxies of edgequant.analysis.sensitivity, for comparison: {"imatrix_mse"|"trace"|
    # "first_order": {type: value}} (method "fisher" only)
    proxies: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class SensitivityTable:
    """What :func:`collect_sensitivities` measured, enough to plan any budget without the model."""

    model: str
    settings: dict
    tensors: list[TensorCandidates]
    fixed_bytes: int  # aligned bytes of the tensors the plan does not choose (norms...), kept as they are
    fixed_nbytes: int
    fixed_params: int
    header_bytes: int  # upper bound of the output file's header (metadata + tensor infos), aligned
    alignment: int
    seconds: float = 0.0

    @property
    def n_params(self) -> int:
        return self.fixed_params + sum(t.n_params for t in self.tensors)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> SensitivityTable:
        d = json.loads(text)
        d["tensors"] = [TensorCandidates(**t) for t in d["tensors"]]
        return cls(**d)


def parse_types(items: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Candidate type names, upper-cased and checked against the codecs (ConfigError names an unknown one)."""
    if items is None:
        return DEFAULT_TYPES
    if isinstance(items, str):
        items = [s for s in items.replace(" ", "").split(",") if s]
    known = {n for n in codec_names() if get_codec(n).quantize_rows is not None}
    out = []
    for s in items:
        name = s.upper()
        if name not in known:
            raise ConfigError(
                f"unknown or non-quantizable tensor type '{s}'; known: {', '.join(sorted(known))}",
                option="types",
            )
        if name not in out:
            out.append(name)
    if not out:
        raise ConfigError("no candidate types given", option="types")
    return tuple(out)


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def candidate_table(reader: GGUFFile, types: tuple[str, ...], has_imatrix: bool) -> SensitivityTable:
    """Byte costs and skip reasons for every tensor (no model run); ``loss`` is filled later."""
    a = reader.alignment
    tensors, fixed, fixed_n, fixed_p = [], 0, 0, 0
    opts = QuantizeOptions()
    for t in reader.tensors:
        if not is_eligible(t.name, len(t.shape_ne), opts):
            fixed, fixed_n, fixed_p = fixed + _align(t.nbytes, a), fixed_n + t.nbytes, fixed_p + t.n_elements
            continue
        if t.type_name not in _FLOAT_SOURCES:
            raise ConfigError(
                f"{reader.path}: tensor '{t.name}' is {t.type_name}; allocation needs a float model "
                f"(F32/F16/BF16): expand it first with `edgequant dequantize IN OUT --outtype f32`"
            )
        tc = TensorCandidates(t.name, list(t.shape_ne), t.n_elements, t.type_name)
        rows = t.n_elements // t.shape_ne[0]
        for ty in types:
            c = get_codec(ty)
            if t.shape_ne[0] % c.block_size:
                tc.skipped[ty] = (
                    f"row length {t.shape_ne[0]} is not a multiple of {ty}'s block of {c.block_size}"
                )
            elif ty in _NEEDS_IMATRIX and not has_imatrix:
                tc.skipped[ty] = f"{ty} needs an imatrix"
            else:
                tc.nbytes[ty] = rows * c.row_bytes(t.shape_ne[0])
                tc.bytes[ty] = _align(tc.nbytes[ty], a)
        if not tc.bytes:
            raise ConfigError(
                f"tensor '{t.name}' (rows of {t.shape_ne[0]}) fits none of the candidate types "
                f"{', '.join(types)}; add one with a 32-element block such as Q8_0",
                option="types",
            )
        tensors.append(tc)
    # header: the input's own header plus the keys quantization adds (file type, version, imatrix provenance:
    # four keys, strings capped at 127 bytes) -> 1 KiB is a safe upper bound of the growth.
    header = _align(reader.data_offset + 1024, a)
    return SensitivityTable(reader.path, {}, tensors, fixed, fixed_n, fixed_p, header, a)


def _errors_for(reader, tc: TensorCandidates, imatrix: Imatrix | None, to_torch_layout) -> dict:
    """{type: ε} in the PyTorch layout for one tensor (quantize, dequantize, subtract); records proxy (b)."""
    import torch

    from edgequant.analysis.sensitivity import imatrix_weighted_error

    t = reader.tensor(tc.name)
    x = dequantize(reader.tensor_data(t), t.type_name, t.np_shape).reshape(-1, t.shape_ne[0])
    qw = imatrix_for_tensor(imatrix.entries, t) if imatrix is not None else None
    out = {}
    tc.proxies["imatrix_mse"] = {}
    for ty in tc.bytes:
        e = dequantize(quantize(x, ty, qw if get_codec(ty).uses_imatrix else None), ty, x.shape) - x
        tc.proxies["imatrix_mse"][ty] = imatrix_weighted_error(e, qw)
        out[ty] = torch.from_numpy(np.ascontiguousarray(to_torch_layout(tc.name, e)))
    reader.release(t)
    return out


def collect_sensitivities(
    src: str | os.PathLike,
    calib_text: str,
    *,
    imatrix: Imatrix | None = None,
    types: tuple[str, ...] | None = None,
    n_ctx: int = 512,
    n_chunks: int = 8,
    draws: int = 4,
    seed: int = 0,
    method: str = "fisher",
    threads: int | None = None,
    state: str | os.PathLike | None = None,
    subset: list[tuple[str, str]] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> SensitivityTable:
    """The sensitivity table of a float GGUF model; see the module docstring. ``calib_text``: the text itself.

    ``subset``: (tensor, type) pairs to measure (method "measured" only; the others get no loss entry).
    ``state``: a JSON file; when it holds a table collected with the same settings it is returned as is,
    otherwise the new table is written there (atomically). ``on_progress(stage, i, n)``: progress callback.
    """
    src = os.fspath(src)
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got '{method}'", option="method")
    types = parse_types(types)
    settings = {
        "model_size": os.path.getsize(src),
        "model_mtime": int(os.path.getmtime(src)),
        "text_chars": len(calib_text),
        "text_hash": hash_text(calib_text),
        "imatrix": imatrix.path if imatrix is not None else None,
        "types": list(types),
        "n_ctx": n_ctx,
        "n_chunks": n_chunks,
        "draws": draws,
        "seed": seed,
        "method": method,
    }
    if subset:
        if method != "measured":
            raise ConfigError("subset restricts method='measured' only", option="subset")
        settings["subset"] = sorted([list(p) for p in subset])
    if state is not None and os.path.exists(state):
        with open(state, encoding="utf-8") as f:
            old = SensitivityTable.from_json(f.read())
        kept = {k: v for k, v in old.settings.items() if k != "tokens"}  # "tokens" is recorded, not asked
        if kept == settings and old.model == src:
            return old
    t0 = time.perf_counter()
    with GGUFFile(src) as reader:
        table = candidate_table(reader, types, imatrix is not None)
        table.settings = settings
        _run_model(reader, table, calib_text, imatrix, settings, threads, on_progress or (lambda *a: None))
    table.seconds = time.perf_counter() - t0
    if state is not None:
        atomic_write_bytes(os.fspath(state), table.to_json().encode())
    return table


def _run_model(reader, table, calib_text, imatrix, s, threads, progress) -> None:
    """Load the model, quantize every candidate, fill ``loss``/``spread`` by the chosen method."""
    import torch

    from edgequant.analysis.sensitivity import base_log_probs, fisher_sensitivity, measured_kld
    from edgequant.eval.text import Chunking, hf_tokenize, split_chunks
    from edgequant.models.gguf_model import gguf_to_hf_names, hf_config_dict, hf_layout
    from edgequant.models.load import load_causal_lm

    if threads:
        torch.set_num_threads(int(threads))
    model, tokenizer = load_causal_lm(reader.path)
    spec, cfg = hf_config_dict(reader)
    to_hf = gguf_to_hf_names(spec, cfg["num_hidden_layers"])
    ids, bos = hf_tokenize(tokenizer, calib_text)
    chunks = split_chunks(ids, Chunking(s["n_ctx"], s["n_chunks"]), bos, "the calibration text")
    batches = [torch.as_tensor(c.astype(np.int64)).reshape(1, -1) for c in chunks]
    s["tokens"] = sum(int(b.shape[1]) for b in batches)
    errors = {}
    for i, tc in enumerate(table.tensors):
        errors[to_hf[tc.name]] = _errors_for(reader, tc, imatrix, lambda n, e: hf_layout(n, e, spec, cfg))
        progress("quantize", i + 1, len(table.tensors))
    if s["method"] == "fisher":
        est = fisher_sensitivity(
            model,
            batches,
            errors,
            draws=s["draws"],
            seed=s["seed"],
            on_sequence=lambda i, n: progress("fisher", i, n),
        )
        for tc in table.tensors:
            hf = to_hf[tc.name]
            tc.loss, tc.spread = dict(est.taylor[hf]), dict(est.spread[hf])
            tc.proxies.update(trace=dict(est.trace[hf]), first_order=dict(est.first_order[hf]))
        return
    base = base_log_probs(model, batches)
    params = dict(model.named_parameters())
    done, total = 0, len(s["subset"]) if s.get("subset") else sum(len(tc.bytes) for tc in table.tensors)
    subset = {tuple(p) for p in s["subset"]} if s.get("subset") else None
    for tc in table.tensors:
        hf = to_hf[tc.name]
        for ty, e in errors[hf].items():
            if subset is not None and (tc.name, ty) not in subset:
                continue
            tc.loss[ty] = measured_kld(model, batches, base, hf, params[hf].detach() + e)
            done += 1
            progress("measure", done, total)


def hash_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
