"""A summary of a GGUF file for ``edgequant inspect``: metadata, tensors, types, bits per weight,
fallbacks."""

from __future__ import annotations

import os

import numpy as np

from edgequant.gguf.ftypes import FTYPE_NAMES_BY_ID, FTYPES
from edgequant.gguf.reader import Array, GGUFFile

_K_BLOCK_TYPES = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"}
_FALLBACK_TARGETS = {"Q4_0", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "F16"}


def _short(value, limit: int = 8):
    if isinstance(value, Array):
        value = value.items
    if isinstance(value, (list, tuple, np.ndarray)):
        value = list(value)
        if len(value) > limit:
            return {"array_len": len(value), "head": [_short(v) for v in value[:limit]]}
        return [_short(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, str) and len(value) > 200:
        return value[:200] + f"... ({len(value)} chars)"
    return value


def _full(value):
    if isinstance(value, Array):
        return _full(value.items)
    return [_full(v) for v in value] if isinstance(value, list) else value


def summarize(path: str | os.PathLike, full_arrays: bool = False) -> dict:
    """Everything ``inspect`` shows, as a JSON-ready dict.

    A tensor is flagged as a fallback when the file's ftype defaults to a 256-block type (K-quant,
    IQ4_XS), the tensor's row length is not a multiple of 256, and its type is one llama.cpp falls back
    to (Q4_0, Q5_0, Q5_1, Q8_0, IQ4_NL, F16): the rule of llama-quantize's ``tensor_type_fallback``.

    Well-known keys are read through the typed getters: ``general.file_type`` that is not an integer
    (a string, NaN, an array...) or ``general.architecture`` / ``general.name`` that is not a string raise a
    FormatError naming the key. Other values may hold non-finite floats: print with
    ``edgequant.core.text.dumps`` for strict JSON.
    """
    path = os.fspath(path)
    with GGUFFile(path) as r:
        kv = {k: v.value for k, v in r.kvs.items()}
        ftype_id = r.meta.get_int("general.file_type", None, min=0, max=2**32 - 1)
        ftype = FTYPE_NAMES_BY_ID.get(ftype_id) if ftype_id is not None else None
        default = FTYPES[ftype][1] if ftype else None
        architecture = r.meta.get_str("general.architecture", None)
        name = r.meta.get_str("general.name", None)
        tensors, counts, n_params, n_bytes, n_fallback = [], {}, 0, 0, 0
        for t in r.tensors:
            fb = bool(
                default in _K_BLOCK_TYPES
                and t.shape_ne[0] % 256
                and t.type_name in _FALLBACK_TARGETS
                and len(t.shape_ne) > 1
                and t.name.endswith("weight")
                and "_norm" not in t.name
            )
            n_fallback += fb
            counts[t.type_name] = counts.get(t.type_name, 0) + 1
            n_params += t.n_elements
            n_bytes += t.nbytes
            tensors.append(
                {
                    "name": t.name,
                    "shape": list(t.shape_ne),
                    "type": t.type_name,
                    "bytes": t.nbytes,
                    "bits_per_weight": round(8 * t.nbytes / max(1, t.n_elements), 4),
                    "offset": t.offset,
                    "fallback": fb,
                }
            )
        return {
            "file": path,
            "file_bytes": os.path.getsize(path),
            "version": r.version,
            "alignment": r.alignment,
            "architecture": architecture,
            "name": name,
            "ftype": ftype or (f"id {ftype_id}" if ftype_id is not None else None),
            "n_kv": len(r.kvs),
            "n_tensors": len(tensors),
            "n_params": n_params,
            "tensor_bytes": n_bytes,
            "bits_per_weight": round(8 * n_bytes / max(1, n_params), 4),
            "type_counts": counts,
            "n_fallback": n_fallback,
            "metadata": {k: (_full(v) if full_arrays else _short(v)) for k, v in kv.items()},
            "tensors": tensors,
        }
