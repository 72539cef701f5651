"""Per-tensor steps of writing a quantized GGUF tensor, shared by whole-file quantization and HF conversion.

- ``tensor_rows_f32``: a stored tensor widened to float32 rows (NaN/Inf refused);
- ``imatrix_for_tensor``: a tensor's importance vector, its length checked;
- ``encode_tensor``: rows quantized (one imatrix slice per expert of a 3-D tensor), fp16 scale overflow
  refused;
- ``add_imatrix_kvs``: llama-quantize's imatrix provenance keys.
"""

from __future__ import annotations

import numpy as np
from gguf.constants import GGUFValueType

from edgequant.core.text import quote
from edgequant.errors import NonFiniteError, ShapeError
from edgequant.gguf.codecs import dequantize, first_nonfinite, get_codec, nonfinite_scale_rows, quantize
from edgequant.gguf.imatrix import Imatrix
from edgequant.gguf.writer import GGUFStreamWriter


def imatrix_for_tensor(qmap: dict[str, np.ndarray], t) -> np.ndarray | None:
    qw = qmap.get(t.name)
    if qw is None:
        return None
    ne = t.shape_ne
    want = ne[0] * (ne[2] if len(ne) > 2 else 1)
    if qw.size != want:
        if "token_embd" in t.name:
            return None  # llama.cpp ignores a mis-sized token_embd entry
        raise ShapeError(
            f"imatrix entry for '{t.name}' has {qw.size} values, the tensor needs {want} "
            f"(ne[0]={ne[0]}); is the imatrix for another model?"
        )
    return qw


def tensor_rows_f32(raw: np.ndarray, t, check: bool = True) -> np.ndarray:
    """The tensor as float32 rows: a zero-copy view of the map for F32, decoded otherwise; NaN/Inf refused
    (``check=False``: the caller passes the rows to ``encode_tensor(..., check_finite=True)``, which refuses
    them with the same error, for the legacy types in the pass that quantizes them)."""
    rows = t.n_elements // t.shape_ne[0]
    if t.type_name == "F32":
        x = raw.view(np.float32).reshape(rows, t.shape_ne[0])  # read-only view; the kernels only read it
    else:
        x = dequantize(raw, t.type_name, (rows, t.shape_ne[0]))
    if check:
        _refuse_nonfinite(x, t)
    return x


def _refuse_nonfinite(x: np.ndarray, t) -> None:
    i = first_nonfinite(x)
    if i >= 0:
        row = i // t.shape_ne[0]
        raise NonFiniteError(f"tensor '{t.name}': row {row} holds NaN or Inf; fix the source weights")


def _quantize_matrices(x, new_type, qw, ne, n_mat, threads, check) -> np.ndarray:
    """Rows quantized; a 3-D (expert) tensor with an imatrix one expert at a time, each with its slice."""
    if qw is None or n_mat == 1:
        return quantize(x, new_type, qw, threads=threads, check_finite=check, warn_overflow=False)
    per = x.shape[0] // n_mat
    return np.concatenate(
        [
            quantize(
                x[e * per : (e + 1) * per],
                new_type,
                qw[e * ne[0] : (e + 1) * ne[0]],
                threads=threads,
                check_finite=check,
                warn_overflow=False,
            )
            for e in range(n_mat)
        ]
    )


def encode_tensor(
    x: np.ndarray, new_type: str, qw: np.ndarray | None, t, threads: int | None, check_finite: bool = False
) -> np.ndarray:
    """Quantize rows, splitting a 3-D (expert) tensor so each expert uses its own imatrix slice.
    ``check_finite``: refuse NaN/Inf rows as ``tensor_rows_f32`` does (for rows it did not check)."""
    ne = t.shape_ne
    n_mat = int(np.prod(ne[2:], dtype=np.int64)) if len(ne) > 2 else 1
    # no warning from quantize() about overflowed fp16 scales: they are checked below and refused with a
    # one-line error, so the warning would only add lines (issue 17: one stderr line per failure)
    try:
        out = _quantize_matrices(x, new_type, qw, ne, n_mat, threads, check_finite)
    except NonFiniteError:
        if check_finite:
            _refuse_nonfinite(x, t)  # the tensor's own message (its row in the whole tensor)
        raise
    codec = get_codec(new_type)
    if codec.fp16_scale_fields:
        bad = nonfinite_scale_rows(out, codec)
        if bad.size:
            raise NonFiniteError(
                f"tensor {quote(t.name)}: {bad.size} row(s) (first: row {int(bad[0])}) overflow the fp16 "
                f"scale of {new_type} (|w| too large); llama.cpp rejects such data too. Give this tensor "
                f"another type with a tensor_types override such as {quote(t.name + '=f16')} (or q8_0)",
                option="tensor_types",
            )
    return out


def add_imatrix_kvs(w: GGUFStreamWriter, imatrix: Imatrix) -> None:
    """The provenance keys llama-quantize records (strings capped at 127 bytes, like its override buffer)."""
    w.add_kv(
        "quantize.imatrix.file", GGUFValueType.STRING, imatrix.path.encode()[:127].decode(errors="ignore")
    )
    if imatrix.datasets:
        w.add_kv(
            "quantize.imatrix.dataset",
            GGUFValueType.STRING,
            imatrix.datasets[0].encode()[:127].decode(errors="ignore"),
        )
    w.add_kv("quantize.imatrix.entries_count", GGUFValueType.UINT32, len(imatrix.entries))
    if imatrix.chunk_count > 0:
        w.add_kv("quantize.imatrix.chunks_count", GGUFValueType.UINT32, imatrix.chunk_count)
