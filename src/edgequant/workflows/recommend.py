"""Device advisor: the best GGUF file of one model that fits a memory size at a context length.

**Candidates** (``load_candidates``): one ``.gguf`` file, every ``*.gguf`` of a folder (not recursive), or a
results file, JSON of this schema (file paths relative to the JSON's folder):

    {"format": "edgequant-candidates", "version": 1, "model": "SmolLM2-135M (optional, shown)",
     "candidates": [{"file": "smollm2-q4_k_m.gguf", "kld": 0.0123, "label": "Q4_K_M (optional)"}, ...]}

``kld`` is the mean KL divergence of the file's next-token distribution from the float model's on a text of
the user's choice (``edgequant perplexity FILE --base F32 --json`` prints it as ``mean_kld``, also accepted
here). All candidates must be the same model: same architecture, layers, width and vocabulary, else
ConfigError naming the odd file (a results file of another model). When every candidate has a KLD they are
ranked by it (lowest first); otherwise by bits per weight (highest first, a proxy for quality), and the
recommendation says so.

**Fit** (bytes), for each candidate at context ``n_ctx``:

* weights: the file's tensor data bytes (sum of its tensors' sizes; llama.cpp maps or copies exactly these);
* KV cache: ``n_kv x sum_layers n_head_kv[l] x (key_length + value_length) x bytes(kv_type)``, which is the
  usual ``n_ctx x n_layer x n_head_kv x head_dim x 2 x bytes`` when every layer has the same KV heads and
  ``key_length = value_length = head_dim = n_embd / n_head`` (GGUF keys ``{arch}.block_count``,
  ``.attention.head_count_kv`` (a number or one per layer), ``.attention.key_length``/``value_length``,
  defaults ``embedding_length / head_count``); bytes(F16) = 2, bytes(Q8_0) = 34/32. ``n_kv`` is ``n_ctx``
  rounded up to a multiple of 256, as llama.cpp (llama-cpp-python 0.3.36) sizes its cache: n_ctx 1100 gives
  1280 cells. Sliding-window layers (Gemma, ...) are counted at full context, an upper bound;
* llama.cpp's compute and output buffers: **measured** by loading the file in llama.cpp at ``n_ctx``
  (``recommend_measure.measure_buffers``), only for candidates whose weights and KV cache fit.

Not counted: the llama.cpp library, the tokenizer's tables and the calling process (tens of MiB; the
reference test measures the RSS growth of loading the chosen file and decoding a ubatch and checks it is
within the memory given). The choice is the first candidate in rank order whose fit is at most the memory;
when none fits, ConfigError names the smallest candidate and what it needs.

**The book's rule of thumb** (section 8.2.5) is ``rule_of_thumb``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from edgequant.errors import ConfigError
from edgequant.gguf.codecs import get_codec
from edgequant.gguf.ftypes import FTYPE_NAMES_BY_ID
from edgequant.gguf.reader import GGUFFile
from edgequant.workflows.allocate import parse_size
from edgequant.workflows.recommend_measure import Buffers, measure_buffers

FORMAT = "edgequant-candidates"
VERSION = 1
KV_CTX_PAD = 256
KV_TYPES = ("F16", "F32", "BF16", "Q8_0", "Q4_0")
GB = 10**9

# The book's table (section 8.2.5), for 7B-class models: (upper bound in bytes, suggested ftypes).
RULE_OF_THUMB = ((4 * GB, ("Q4_0", "Q4_K_S")), (8 * GB, ("Q5_K_M", "Q4_K_M")), (math.inf, ("Q5_K_L", "Q6_K")))


def rule_of_thumb(memory: int) -> tuple[str, ...]:
    """The book's choice of ftype by device memory: under 4 GB Q4_0 or Q4_K_S; 4-8 GB Q5_K_M or Q4_K_M; over
    8 GB Q5_K_L or Q6_K (GB = 10^9 bytes; 8 GB itself is in the 4-8 row).

    It is a rule for **7B-class models** only: Llama 2 7B's 6.74e9 weights at Q4_0 (4.5 bits/weight) are
    3.79 GB, at Q6_K (6.5625) 5.53 GB, before the KV cache (1 GiB at n_ctx 2048: 2048 x 32 layers x 32 KV
    heads x 128 x 2 x 2 bytes). For another size the same memory allows other types, which is why
    ``recommend`` measures instead. **Q5_K_L does not exist in llama.cpp** (llama-quantize has Q5_K_S and
    Q5_K_M); the name is used by some model uploaders for Q5_K_M with Q8_0 embedding and output tensors."""
    for bound, ftypes in RULE_OF_THUMB:
        if memory < bound or (bound == 8 * GB and memory == bound):
            return ftypes
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class ModelShape:
    """What the KV cache size depends on, and what identifies one model among files."""

    arch: str
    n_layer: int
    n_embd: int
    n_vocab: int
    n_head_kv: tuple[int, ...]  # one per layer
    key_length: int
    value_length: int

    def kv_bytes(self, n_ctx: int, kv_type: str = "F16") -> int:
        """KV cache bytes at ``n_ctx`` (module docstring), ``n_ctx`` padded as llama.cpp pads it."""
        c = get_codec(kv_type)
        n_kv = -(-int(n_ctx) // KV_CTX_PAD) * KV_CTX_PAD
        per_cell = sum(
            h * (c.row_bytes(self.key_length) + c.row_bytes(self.value_length)) for h in self.n_head_kv
        )
        return n_kv * per_cell


@dataclass(frozen=True)
class Candidate:
    path: str
    label: str
    ftype: str
    weight_bytes: int
    n_weights: int
    kld: float | None
    shape: ModelShape

    @property
    def bpw(self) -> float:
        return 8.0 * self.weight_bytes / self.n_weights


@dataclass(frozen=True)
class Fit:
    candidate: Candidate
    weights: int
    kv: int
    compute: int | None = None  # measured; None when weights + KV already exceed the memory, or not reached
    output: int | None = None
    llama_kv: int | None = None  # the KV buffer llama.cpp logged (checks ``kv``)

    @property
    def total(self) -> int | None:
        return None if self.compute is None else self.weights + self.kv + self.compute + (self.output or 0)


@dataclass(frozen=True)
class Recommendation:
    memory: int
    n_ctx: int
    kv_type: str
    ranked_by: str  # "kld" or "bpw"
    choice: Fit
    fits: tuple[Fit, ...]  # every candidate in rank order
    rule_of_thumb: tuple[str, ...]
    note: str
    threads: list[tuple[int, float]] = field(default_factory=list)  # (threads, gen tokens/s), fastest first
    model: str | None = None


def parse_memory(text: str) -> int:
    try:
        return parse_size(text)
    except ConfigError:
        raise ConfigError(
            f"memory {text!r}: expected a size such as 4GiB, 3.5g, 800m "
            "(k, m, g decimal; kib, mib, gib binary)",
            option="memory",
        ) from None


def model_shape(g: GGUFFile) -> ModelShape:
    m = g.meta
    arch = m.get_str("general.architecture")
    n_layer = m.get_int(f"{arch}.block_count", min=1)
    n_embd = m.get_int(f"{arch}.embedding_length", min=1)
    n_head = m.get_int(f"{arch}.attention.head_count", min=1, first_of_array=True)
    kv = g.kvs.get(f"{arch}.attention.head_count_kv")
    if kv is not None and kv.array_type is not None:
        heads = tuple(int(h) for h in m.get_array(f"{arch}.attention.head_count_kv", etype="int"))
    else:
        heads = (m.get_int(f"{arch}.attention.head_count_kv", n_head, min=0),) * n_layer
    if len(heads) != n_layer:
        raise ConfigError(f"{g.path}: {len(heads)} head_count_kv values for {n_layer} layers")
    head_dim = n_embd // n_head
    vocab = next((t.shape_ne[1] for t in g.tensors if t.name == "token_embd.weight"), 0)
    return ModelShape(
        arch,
        n_layer,
        n_embd,
        int(vocab),
        heads,
        m.get_int(f"{arch}.attention.key_length", head_dim, min=1),
        m.get_int(f"{arch}.attention.value_length", head_dim, min=1),
    )


def read_candidate(path: str, kld: float | None = None, label: str | None = None) -> Candidate:
    with GGUFFile(path) as g:
        shape = model_shape(g)
        ftype_id = g.meta.get_int("general.file_type", -1)
        weights = sum(t.nbytes for t in g.tensors)
        n = sum(t.n_elements for t in g.tensors)
    ftype = FTYPE_NAMES_BY_ID.get(ftype_id, "?")
    return Candidate(path, label or os.path.basename(path), ftype, weights, n, kld, shape)


def _results_entries(path: str) -> tuple[list[tuple[str, float | None, str | None]], str | None]:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read it as a results JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ConfigError(
            f"{path}: not an edgequant candidates file of version {VERSION} "
            f'(expected {{"format": "{FORMAT}", "version": {VERSION}, "candidates": [...]}})'
        )
    items = doc.get("candidates")
    if not isinstance(items, list) or not items:
        raise ConfigError(f'{path}: \'candidates\' must be a non-empty list of {{"file": ..., "kld": ...}}')
    base = os.path.dirname(os.path.abspath(path))
    out = []
    for i, it in enumerate(items):
        file = it.get("file") if isinstance(it, dict) else None
        kld = it.get("kld", it.get("mean_kld")) if isinstance(it, dict) else None
        if not isinstance(file, str) or (kld is not None and not isinstance(kld, int | float)):
            raise ConfigError(f"{path}: candidate {i} needs a 'file' string and a numeric 'kld' (or none)")
        out.append((os.path.join(base, file), None if kld is None else float(kld), it.get("label")))
    model = doc.get("model")
    return out, model if isinstance(model, str) else None


def load_candidates(source: str) -> tuple[list[Candidate], str | None]:
    """Candidates of ``source`` (a .gguf file, a folder of them, or a results JSON) and the model's name."""
    model = None
    if os.path.isdir(source):
        files = sorted(f for f in os.listdir(source) if f.lower().endswith(".gguf"))
        if not files:
            raise ConfigError(f"{source}: the folder holds no .gguf file")
        entries = [(os.path.join(source, f), None, None) for f in files]
    elif source.lower().endswith(".json"):
        entries, model = _results_entries(source)
    elif os.path.isfile(source):
        entries = [(source, None, None)]
    else:
        raise ConfigError(
            f"{source}: no such file or folder; give a .gguf file, a folder of them or a results JSON"
        )
    for p, _, _ in entries:
        if not os.path.isfile(p):
            raise ConfigError(f"{source}: candidate {p} does not exist")
    cands = [read_candidate(p, k, lbl) for p, k, lbl in entries]
    first = cands[0]
    for c in cands[1:]:
        a, b = first.shape, c.shape
        if (a.arch, a.n_layer, a.n_embd, a.n_vocab) != (b.arch, b.n_layer, b.n_embd, b.n_vocab):
            raise ConfigError(
                f"{c.path} is another model than {first.path} "
                f"({b.arch}, {b.n_layer} layers, width {b.n_embd}, "
                f"vocabulary {b.n_vocab} vs {a.arch}, {a.n_layer}, {a.n_embd}, {a.n_vocab}); "
                "list the files of one model only"
            )
    return cands, model


def rank(cands: list[Candidate]) -> tuple[list[Candidate], str]:
    if all(c.kld is not None for c in cands):
        return sorted(cands, key=lambda c: (c.kld, c.weight_bytes)), "kld"
    return sorted(cands, key=lambda c: (-c.bpw, c.weight_bytes)), "bpw"


def _measured(fit: Fit, b: Buffers) -> Fit:
    return Fit(fit.candidate, fit.weights, fit.kv, b.compute, b.output, b.kv)


def _too_small(memory: int, n_ctx: int, fit: Fit) -> ConfigError:
    c = fit.candidate
    if fit.total is None:  # weights + KV alone exceed the memory: no need to load it
        need = fit.weights + fit.kv
        parts = f"at least {need} bytes ({need / 2**30:.2f} GiB): weights {fit.weights} + KV {fit.kv}"
        parts += ", before llama.cpp's compute buffer"
    else:
        parts = (
            f"{fit.total} bytes ({fit.total / 2**30:.2f} GiB): weights {fit.weights} + KV {fit.kv} + compute "
            f"{fit.compute} + output {fit.output}"
        )
    return ConfigError(
        f"memory {memory} bytes ({memory / 2**30:.2f} GiB) is too small for every candidate at "
        f"n_ctx {n_ctx}: the smallest, {c.label}, needs {parts}; give more memory or a smaller n_ctx",
        option="memory",
    )


def _note(ranked_by: str, cands: list[Candidate]) -> str:
    if ranked_by == "kld":
        return "ranked by mean KLD (lowest first)"
    missing = sum(c.kld is None for c in cands)
    return (
        f"no KLD known for {missing} of {len(cands)} candidates: ranked by bits per weight (highest first), "
        "a proxy for quality; give a results JSON with each file's mean KLD to rank by quality"
    )


def recommend(
    source: str,
    memory: int,
    *,
    n_ctx: int = 4096,
    kv_type: str = "F16",
    measure: Callable[[str, int, str], Buffers] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> Recommendation:
    """The lowest-KLD (or highest-bpw) candidate of ``source`` whose fit is at most ``memory`` bytes.

    ``measure(path, n_ctx, kv_type)`` gives llama.cpp's buffers (default ``measure_buffers``: load the file in
    llama.cpp).
    ConfigError when no candidate fits, naming the smallest one (least weights + KV) and what it needs: the
    measured total when its weights and KV cache fit, else at least weights + KV (it is not loaded)."""
    if n_ctx < 1:
        raise ConfigError(f"n_ctx {n_ctx}: must be at least 1", option="n_ctx")
    measure = measure or measure_buffers
    kv_type = kv_type.upper()
    if kv_type not in KV_TYPES:
        raise ConfigError(f"KV cache type {kv_type}: use one of {', '.join(KV_TYPES)}", option="kv_type")
    cands, model = load_candidates(source)
    ordered, ranked_by = rank(cands)
    fits = {c.path: Fit(c, c.weight_bytes, c.shape.kv_bytes(n_ctx, kv_type)) for c in ordered}
    choice = None
    for c in ordered:
        f = fits[c.path]
        if f.weights + f.kv > memory:
            continue
        if on_progress:
            on_progress(c.label)
        fits[c.path] = f = _measured(f, measure(c.path, n_ctx, kv_type))
        if f.total <= memory:
            choice = f
            break
    if choice is None:
        smallest = min(ordered, key=lambda c: fits[c.path].weights + fits[c.path].kv)
        raise _too_small(memory, n_ctx, fits[smallest.path])
    return Recommendation(
        memory,
        n_ctx,
        kv_type,
        ranked_by,
        choice,
        tuple(fits[c.path] for c in ordered),
        rule_of_thumb(memory),
        _note(ranked_by, cands),
        model=model,
    )


def _fit_dict(f: Fit) -> dict:
    c = f.candidate
    return {
        "file": c.path,
        "label": c.label,
        "ftype": c.ftype,
        "bpw": round(c.bpw, 4),
        "kld": c.kld,
        "weights_bytes": f.weights,
        "kv_bytes": f.kv,
        "llama_cpp_kv_bytes": f.llama_kv,
        "compute_bytes": f.compute,
        "output_bytes": f.output,
        "total_bytes": f.total,
    }


def recommendation_dict(r: Recommendation) -> dict:
    """JSON-ready form (``edgequant recommend --json``)."""
    out = {k: v for k, v in asdict(r).items() if k not in ("choice", "fits", "threads")}
    out["rule_of_thumb"] = list(r.rule_of_thumb)
    out["rule_of_thumb_note"] = "the book's rule for 7B-class models; Q5_K_L does not exist in llama.cpp"
    out["choice"] = _fit_dict(r.choice)
    out["candidates"] = [_fit_dict(f) for f in r.fits]
    out["threads"] = [{"threads": t, "gen_tokens_per_s": round(s, 2)} for t, s in r.threads]
    return out
