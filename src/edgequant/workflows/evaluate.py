"""The evaluation sweep behind ``edgequant evaluate``: quantize one model to many candidates, measure each in
llama.cpp, keep everything in one versioned, resumable results file (the input of ``edgequant report``).

Candidates: every ftype of ``EvalOptions.ftypes`` as llama-quantize writes it (method ``ftype``), and with an
imatrix collected on the calibration text (method ``ftype+imatrix``; not for F32/F16/BF16/Q8_0, which do not
use one). The base is the model itself when its matrices are float, else its F32 expansion (as
``edgequant demo`` does); candidates are quantized from it and compared with it.

Per candidate (:mod:`edgequant.workflows.evaluate_measure`): file bytes, bits per weight, types; PPL, mean /
99 % / 99.9 % KLD, same top token, Δp on the evaluation text (and the shifted-domain text when given), all
in llama.cpp's runtime; prompt and generation tokens/s and time to first token at ``threads``; RSS growth;
llama.cpp's buffers at ``fit_ctx`` (for ``recommend``'s fit rule). With ``sensitivity``, the per-tensor
table of :func:`edgequant.workflows.sensitivity.collect_sensitivities` (predicted KLD per tensor and type).
With ``attribution`` (candidate labels; ``"auto"``: Q4_K_M when swept, else the middle ftype), the per-layer
error attribution of those candidates (:mod:`edgequant.workflows.evaluate_attribution`) under the key
``"attribution"``: ``{"version": 1, "candidates": {label: {"settings": ..., "units": [...], ...}}}``.
With ``torch_sweep``, the PyTorch candidates of :mod:`edgequant.workflows.evaluate_torch` (the book's bits x
{sym, asym} scan, NF4/FP4/int8 layers, a per-layer time and memory profile) under the key ``"torch"``.

Results file (JSON, written atomically after every candidate)::

    {"format": "edgequant-evaluation", "version": 1, "model": {identity}, "shape": {...}, "base": {...},
     "candidates": [{"label": "Q4_K_M+imatrix", "method": ..., "settings": {...}, ...}], "sensitivity": ...}

``model`` identifies the input file (SHA-256, architecture, layers, width, vocabulary): a results file of
another model, or of another format version, is refused with one line. A candidate (or the base, or the
sensitivity table) already present with the same settings is skipped; with other settings it is measured
again and replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from edgequant.core.atomic import atomic_write_bytes, check_writable
from edgequant.core.hashing import file_sha256
from edgequant.core.text import dumps
from edgequant.errors import ConfigError
from edgequant.eval.text import DEFAULT_CALIBRATION_TEXT, DEFAULT_TEXT, Chunking, read_text
from edgequant.gguf.ftypes import parse_ftype
from edgequant.gguf.reader import GGUFFile
from edgequant.workflows.demo import Progress, _no_progress
from edgequant.workflows.recommend import model_shape
from edgequant.workflows.sensitivity import hash_text

FORMAT = "edgequant-evaluation"
VERSION = 1
DEFAULT_FTYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K")
NO_IMATRIX = ("F32", "F16", "BF16", "Q8_0")  # llama-quantize ignores an imatrix for these
SENSITIVITY_TYPES = ("Q4_0", "Q5_0", "Q8_0", "Q4_K", "Q6_K")
_FLOAT = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class EvalOptions:
    """What to sweep and how to measure it (texts: paths, None for the defaults)."""

    ftypes: tuple[str, ...] = DEFAULT_FTYPES
    imatrix: bool = True
    eval_text: str | None = None
    calibration_text: str | None = None
    shifted_text: str | None = None
    n_ctx: int = 512
    n_chunks: int = 4
    threads: int | None = None
    n_prompt: int = 512
    n_gen: int = 32
    fit_ctx: int = 4096
    sensitivity: bool = False
    sensitivity_types: tuple[str, ...] = SENSITIVITY_TYPES
    workdir: str | None = None
    keep_files: bool = False
    attribution: tuple[str, ...] = ()
    attribution_ctx: int = 256
    attribution_chunks: int = 2
    torch_sweep: bool = False


@dataclass(frozen=True)
class Candidate:
    label: str
    ftype: str
    imatrix: bool

    @property
    def method(self) -> str:
        return "ftype+imatrix" if self.imatrix else "ftype"


def candidates(opts: EvalOptions) -> list[Candidate]:
    names = [parse_ftype(f)[0] for f in opts.ftypes]
    out = [Candidate(n, n, False) for n in names]
    if opts.imatrix:
        out += [Candidate(f"{n}+imatrix", n, True) for n in names if n not in NO_IMATRIX]
    return out


def model_identity(path: str) -> tuple[dict, dict, bool]:
    """(identity, shape, matrices are float) of a GGUF file."""
    if not os.path.isfile(path):
        raise ConfigError(f"model {path} does not exist (give a GGUF file)")
    with GGUFFile(path) as g:
        shape = model_shape(g)
        name = g.meta.get_str("general.name", "")
        n_params = sum(t.n_elements for t in g.tensors)
        is_float = all(t.type_name in _FLOAT for t in g.tensors)
    ident = {
        "file": os.path.basename(path),
        "name": name,
        "sha256": file_sha256(path),
        "arch": shape.arch,
        "n_layer": shape.n_layer,
        "n_embd": shape.n_embd,
        "n_vocab": shape.n_vocab,
        "n_params": n_params,
    }
    return ident, asdict(shape), is_float


def _describe(m: dict) -> str:
    return f"{m.get('file')} ({m.get('arch')}, {m.get('n_layer')} layers, sha256 {str(m.get('sha256'))[:12]})"


def read_results(path: str) -> dict:
    """A results file, checked for format and version (ConfigError in one line otherwise)."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"results file {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read it as an evaluation results JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ConfigError(f'{path}: not an edgequant evaluation results file (no "format": "{FORMAT}")')
    if doc.get("version") != VERSION:
        raise ConfigError(
            f"{path}: results format version {doc.get('version')!r}, this edgequant reads version {VERSION}; "
            "run edgequant evaluate again with another -o"
        )
    if not isinstance(doc.get("candidates"), list) or not isinstance(doc.get("model"), dict):
        raise ConfigError(f"{path}: malformed results file ('model' and 'candidates' missing)")
    return doc


def open_results(path: str, identity: dict, shape: dict) -> dict:
    """The results file at ``path`` for this model (new when absent); ConfigError for another model's."""
    if not os.path.exists(path):
        return {"format": FORMAT, "version": VERSION, "model": identity, "shape": shape, "candidates": []}
    doc = read_results(path)
    if doc["model"].get("sha256") != identity["sha256"]:
        raise ConfigError(
            f"{path} holds results of another model, {_describe(doc['model'])}, not {_describe(identity)}; "
            "give another -o file"
        )
    return doc


def _settings(opts: EvalOptions, texts: dict[str, str], threads: int) -> dict:
    """What a measurement depends on (texts by content hash); compared to decide what to skip."""
    hashes = {}
    for name, path in texts.items():
        text, _ = read_text(path)  # a missing or empty text: one-line ConfigError, before any work
        hashes[name] = {"path": path, "sha256": hash_text(text)}
    return {
        "texts": hashes,
        "n_ctx": opts.n_ctx,
        "n_chunks": opts.n_chunks,
        "threads": threads,
        "n_prompt": opts.n_prompt,
        "n_gen": opts.n_gen,
        "fit_ctx": opts.fit_ctx,
    }


def _candidate_settings(s: dict, c: Candidate) -> dict:
    """The sweep's settings minus the calibration text for candidates that do not use it."""
    if c.imatrix:
        return s
    return {**s, "texts": {k: v for k, v in s["texts"].items() if k != "calibration"}}


def _done(doc: dict, label: str, settings: dict) -> bool:
    return any(r.get("label") == label and r.get("settings") == settings for r in doc["candidates"])


def _save(path: str, doc: dict, order: list[str]) -> None:
    rank = {lbl: i for i, lbl in enumerate(order)}
    doc["candidates"].sort(key=lambda r: rank.get(r["label"], len(rank)))
    atomic_write_bytes(path, dumps(doc).encode())


def _put(doc: dict, record: dict) -> None:
    doc["candidates"] = [r for r in doc["candidates"] if r.get("label") != record["label"]] + [record]


def run_evaluate(
    model: str,
    out: str,
    opts: EvalOptions = EvalOptions(),
    progress: Progress = _no_progress,
) -> dict:
    """Run the sweep (module docstring); returns the results document with ``"skipped"`` labels added."""
    model, out = os.fspath(model), os.fspath(out)
    identity, shape, is_float = model_identity(model)
    doc = open_results(out, identity, shape)
    check_writable(out)
    threads = opts.threads or os.cpu_count() or 1
    texts = {"eval": opts.eval_text or DEFAULT_TEXT}
    if opts.shifted_text:
        texts["shifted"] = opts.shifted_text
    texts["calibration"] = opts.calibration_text or DEFAULT_CALIBRATION_TEXT
    settings = _settings(opts, texts, threads)
    cands = candidates(opts)
    todo = [c for c in cands if not _done(doc, c.label, _candidate_settings(settings, c))]
    sens_settings = {**settings, "imatrix": opts.imatrix, "types": list(opts.sensitivity_types)}
    want_sens = opts.sensitivity and (doc.get("sensitivity") or {}).get("settings") != sens_settings
    base_settings = _candidate_settings(settings, Candidate("base", "F32", False))
    want_base = (doc.get("base") or {}).get("settings") != base_settings
    skipped = [c.label for c in cands if c not in todo]
    attr = _attribution_todo(doc, opts, cands, settings)
    torch_todo = _torch_todo(doc, opts, settings)
    if todo or want_sens or want_base or attr or torch_todo:
        with _workdir(opts) as work:
            job = _Job(model, out, doc, opts, threads, work, progress, [c.label for c in cands])
            job.prepare(is_float, texts, base_settings if want_base else None)
            job.keep = {c.label for c, _ in attr}
            for c in todo:
                job.candidate(c, _candidate_settings(settings, c))
            for c, s in attr:
                job.attribution(c, s)
            if torch_todo:
                job.torch_sweep(*torch_todo)
            if want_sens:
                job.sensitivity(texts["calibration"], sens_settings)
    doc["skipped"] = skipped
    return doc


@contextlib.contextmanager
def _workdir(opts: EvalOptions) -> Iterator[str]:
    if opts.workdir:
        os.makedirs(opts.workdir, exist_ok=True)
        yield opts.workdir
        return
    work = tempfile.mkdtemp(prefix="edgequant-evaluate-")
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


class _Job:
    """One run of the sweep: the base, the scorer, the imatrix (collected when first needed)."""

    def __init__(self, model, out, doc, opts, threads, work, progress, order) -> None:
        self.model, self.out, self.doc, self.opts = model, out, doc, opts
        self.threads, self.work, self.progress, self.order = threads, work, progress, order
        self._imatrix = None
        self.keep: set[str] = set()  # candidates whose file the attribution needs after scoring

    def prepare(self, is_float: bool, texts: dict[str, str], base_settings: dict | None) -> None:
        from edgequant.workflows.dequantize import dequantize_model
        from edgequant.workflows.evaluate_measure import LlamaCppScorer, measure_runtime

        self.texts = texts
        self.base = self.model
        if not is_float:
            self.base = os.path.join(self.work, "base-F32.gguf")
            if not os.path.exists(self.base):
                with self.progress("expand to F32") as advance:
                    dequantize_model(self.model, self.base, "f32", on_tensor=advance)
        scored = {k: v for k, v in texts.items() if k != "calibration"}
        with self.progress("score the base in llama.cpp") as advance:
            advance(0, 2, "base logits")
            chunking = Chunking(self.opts.n_ctx, self.opts.n_chunks)
            self.scorer = LlamaCppScorer(self.base, scored, chunking, self.threads)
            if base_settings is not None:
                rt = self._runtime(measure_runtime, self.base)
                advance(1, 2, "base speed")
                self.doc["base"] = {
                    "label": "F32" if not is_float else "base",
                    "expanded_from_quantized": not is_float,
                    "settings": base_settings,
                    **_file_info(self.base),
                    "quality": {
                        k: {"ppl": v["ppl"], "n_scored_tokens": v["n_scored_tokens"]}
                        for k, v in self.scorer.base.items()
                    },
                    "runtime": rt,
                }
                _save(self.out, self.doc, self.order)

    def _runtime(self, measure, path: str) -> dict:
        o = self.opts
        return measure(path, threads=self.threads, n_prompt=o.n_prompt, n_gen=o.n_gen, fit_ctx=o.fit_ctx)

    def imatrix(self):
        if self._imatrix is None:
            from edgequant.gguf.imatrix import load_imatrix
            from edgequant.workflows.imatrix import make_imatrix

            path = os.path.join(self.work, "imatrix.gguf")
            with self.progress("collect imatrix") as advance:
                make_imatrix(
                    self.base,
                    path,
                    self.texts["calibration"],
                    n_ctx=self.opts.n_ctx,
                    threads=self.threads,
                    on_chunk=lambda i, n: advance(i, n, f"chunk {i + 1}/{n}"),
                )
            self._imatrix = load_imatrix(path)
        return self._imatrix

    def candidate(self, c: Candidate, settings: dict) -> None:
        from edgequant.workflows.evaluate_measure import measure_runtime
        from edgequant.workflows.quantize import quantize_model

        t0 = time.perf_counter()
        imx = self.imatrix() if c.imatrix else None
        dst = os.path.join(self.work, f"model-{c.label.replace('+', '-')}.gguf")
        with self.progress(f"quantize {c.label}") as advance:
            rep = quantize_model(
                self.base,
                dst,
                c.ftype,
                imatrix=imx,
                threads=self.threads,
                on_tensor=lambda i, n, r: advance(i, n, r.name),
            )
        with self.progress(f"evaluate {c.label}") as advance:
            quality = self.scorer.score(dst, on_chunk=lambda i, n: advance(i, n, f"chunk {i + 1}/{n}"))
        with self.progress(f"speed and memory {c.label}") as advance:
            advance(0, 1, f"{self.threads} threads")
            runtime = self._runtime(measure_runtime, dst)
        record = {
            "label": c.label,
            "method": c.method,
            "ftype": c.ftype,
            "imatrix": c.imatrix,
            "settings": settings,
            **_file_info(dst),
            "type_counts": rep.type_counts(),
            "quantize_seconds": rep.seconds,
            "quality": quality,
            "runtime": runtime,
            "seconds": time.perf_counter() - t0,
        }
        if not self.opts.keep_files and c.label not in self.keep:
            os.remove(dst)
        _put(self.doc, record)
        _save(self.out, self.doc, self.order)

    def attribution(self, c: Candidate, settings: dict) -> None:
        from edgequant.workflows.evaluate_attribution import run_attribution

        self.scorer = None  # the base's cached logits are not needed any more
        run_attribution(self, c, settings)
        _save(self.out, self.doc, self.order)

    def torch_sweep(self, settings: dict, labels: list[str]) -> None:
        from edgequant.workflows.evaluate_torch import run_into_results

        self.scorer = None
        texts = {k: v for k, v in self.texts.items() if k != "calibration"}
        chunking = Chunking(self.opts.n_ctx, self.opts.n_chunks)
        save = lambda: _save(self.out, self.doc, self.order)  # noqa: E731
        run_into_results(
            self.doc, self.base, texts, chunking, self.threads, settings, labels, self.progress, save
        )

    def sensitivity(self, calibration: str, settings: dict) -> None:
        from edgequant.workflows.sensitivity import collect_sensitivities

        self.scorer = None  # the base's cached logits are not needed any more
        text, _ = read_text(calibration)
        with self.progress("sensitivity") as advance:
            table = collect_sensitivities(
                self.base,
                text,
                imatrix=self.imatrix() if self.opts.imatrix else None,
                types=self.opts.sensitivity_types,
                n_ctx=self.opts.n_ctx,
                n_chunks=self.opts.n_chunks,
                threads=self.threads,
                on_progress=lambda stage, i, n: advance(i - 1, n, stage),
            )
        self.doc["sensitivity"] = {
            "settings": settings,
            "method": table.settings["method"],
            "types": list(self.opts.sensitivity_types),
            "seconds": table.seconds,
            "tensors": {
                t.name: {"n_params": t.n_params, "loss": t.loss, "skipped": t.skipped} for t in table.tensors
            },
        }
        _save(self.out, self.doc, self.order)


def _attribution_todo(doc: dict, opts: EvalOptions, cands: list[Candidate], settings: dict) -> list:
    """[(candidate, settings)] whose attribution is asked and not in ``doc`` with the same settings."""
    from edgequant.workflows.evaluate_attribution import attribution_labels, attribution_settings

    by = {c.label: c for c in cands}
    done = (doc.get("attribution") or {}).get("candidates", {})
    out = []
    for label in attribution_labels(opts.attribution, [c.label for c in cands]):
        s = attribution_settings(opts, _candidate_settings(settings, by[label]))
        if (done.get(label) or {}).get("settings") != s:
            out.append((by[label], s))
    return out


def _torch_todo(doc: dict, opts: EvalOptions, settings: dict) -> tuple[dict, list[str]] | None:
    """(settings, labels) of the PyTorch sweep still to run, or None."""
    if not opts.torch_sweep:
        return None
    from edgequant.workflows.evaluate_torch import pending

    return pending(doc, settings)


def _file_info(path: str) -> dict:
    """File bytes, tensor data bytes, parameters and bits per weight of a GGUF file."""
    with GGUFFile(path) as g:
        data = sum(t.nbytes for t in g.tensors)
        n = sum(t.n_elements for t in g.tensors)
    return {"file_bytes": os.path.getsize(path), "tensor_bytes": data, "n_params": n, "bpw": 8.0 * data / n}
