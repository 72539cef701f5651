"""llama.cpp's whole-file quantizer as a reference peer: ``llama_model_quantize`` through llama-cpp-python.

For tests and benchmarks only (the ggml codec side is :mod:`tests.support.ggml_peer`, whose library
loading and lock this module shares).

* ``llama_quantize_file(src, dst, ftype_id, ...)``: ``llama_model_quantize`` with the default params,
  including importance matrices (``llama_model_imatrix_data[]``) and ``--tensor-type`` overrides
  (``llama_model_tensor_override[]``), which this llama.cpp version takes as plain C arrays.
* ``load_imatrix_file(path)``: the quant weights llama-quantize passes, from edgequant's one imatrix reader.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tests.support.ggml_peer import _lock, _require, _state, available, ggml_type

__all__ = ["ImatrixFile", "llama_quantize_file", "load_imatrix_file"]


# ---------------------------------------------------------------------------------------------
# importance matrix files (read exactly as tools/quantize/quantize.cpp's load_imatrix does)


@dataclass
class ImatrixFile:
    """A loaded llama-imatrix file: per-tensor quant weights, datasets and chunk count."""

    data: dict[str, np.ndarray]
    datasets: list[str]
    chunk_count: int


def load_imatrix_file(path: str | os.PathLike[str]) -> ImatrixFile:
    """Read a GGUF (``<name>.in_sum2`` / ``<name>.counts``) or legacy ``.dat`` imatrix file.

    GGUF: ``qw = in_sum2 / f32(count)`` per expert slice, 1.0 for experts with count 0.
    Legacy: ``qw = values / f32(ncall)`` if ncall > 0 else ``values``.
    The file format has one reader, :func:`edgequant.gguf.imatrix.load_imatrix`; the peer passes its
    ``qw`` to ``llama_model_quantize``, so both sides quantize with the same weights.
    """
    from edgequant.gguf.imatrix import load_imatrix

    im = load_imatrix(path)
    return ImatrixFile(im.entries, im.datasets, im.chunk_count)


# ---------------------------------------------------------------------------------------------
# llama_model_quantize


def _llama():
    if not available():
        _require()
    import llama_cpp

    with _lock:
        if not _state.get("backend"):
            llama_cpp.llama_backend_init()
            _state["backend"] = True
    return llama_cpp


def llama_quantize_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    ftype_id: int,
    nthread: int = 1,
    imatrix: str | os.PathLike[str] | Mapping[str, np.ndarray] | None = None,
    pure: bool = False,
    leave_output: bool = False,
    allow_requantize: bool = False,
    output_tensor_type: str | None = None,
    token_embedding_type: str | None = None,
    tensor_types: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    verbose: bool = False,
) -> dict:
    """Run ``llama_model_quantize`` (what ``llama-quantize`` does) and return ``{seconds, log, rc}``.

    ``ftype_id``: llama ftype number (Q4_0=2, Q8_0=7, Q4_K_M=15, Q6_K=18, IQ4_XS=30 ... see llamacpp.md).
    ``imatrix``: a llama-imatrix file path (GGUF or legacy ``.dat``) or ``{tensor_name: float32[]}``.
    With a file, the same ``quantize.imatrix.*`` KV overrides as the CLI are added (file, dataset,
    entries_count, chunks_count), so the output matches ``llama-quantize --imatrix FILE``.
    ``tensor_types``: ordered ``{regex: type}`` or ``[(regex, type)]`` (``--tensor-type NAME=TYPE``; the
    pattern is lower-cased like the CLI does; first match wins).
    ``pure`` / ``leave_output`` / ``allow_requantize`` / ``output_tensor_type`` /
    ``token_embedding_type``: ``--pure``, ``--leave-output-tensor``, ``--allow-requantize``,
    ``--output-tensor-type``, ``--token-embedding-type``.
    The llama.cpp log is captured (not printed unless ``verbose``) and returned in ``log``;
    ``rc`` is the return code (0 = success).
    """
    llama_cpp = _llama()
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = int(nthread)
    params.ftype = int(ftype_id)
    params.pure = bool(pure)
    params.quantize_output_tensor = not leave_output
    params.allow_requantize = bool(allow_requantize)
    if output_tensor_type is not None:
        params.output_tensor_type = ggml_type(output_tensor_type).type_id
    if token_embedding_type is not None:
        params.token_embedding_type = ggml_type(token_embedding_type).type_id

    keep: list[object] = []  # everything ctypes points at must outlive the call
    kvs: list[tuple[str, int, object]] = []
    if imatrix is not None:
        arr, kvs = _imatrix_params(llama_cpp, imatrix, keep)
        if arr is not None:
            params.imatrix = arr
    if kvs:
        params.kv_overrides = _kv_overrides(llama_cpp, kvs, keep)
    if tensor_types:
        params.tt_overrides = _tensor_overrides(llama_cpp, tensor_types, keep)

    log: list[str] = []

    @llama_cpp.llama_log_callback
    def _cb(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        s = text.decode(errors="replace") if text else ""
        log.append(s)
        if verbose:
            os.write(2, s.encode())

    with _lock:
        llama_cpp.llama_log_set(_cb, ctypes.c_void_p(0))
        try:
            t0 = time.perf_counter()
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
            seconds = time.perf_counter() - t0
        finally:
            _restore_log(llama_cpp)
    del keep
    return {"seconds": seconds, "log": "".join(log), "rc": int(rc)}


def _imatrix_params(llama_cpp, imatrix, keep: list) -> tuple[object, list[tuple[str, int, object]]]:
    """The ``llama_model_imatrix_data[]`` array (or None) and, for a file, llama-quantize's imatrix KVs."""
    if isinstance(imatrix, Mapping):
        entries = {str(k): np.ascontiguousarray(v, np.float32).reshape(-1) for k, v in imatrix.items()}
        datasets, chunks, fname = [], 0, None
    else:
        loaded = load_imatrix_file(imatrix)
        entries = {k: np.ascontiguousarray(v, np.float32) for k, v in loaded.data.items()}
        datasets, chunks, fname = loaded.datasets, loaded.chunk_count, str(imatrix)
    if not entries:
        return None, []
    arr = (llama_cpp.llama_model_imatrix_data * (len(entries) + 1))()
    for i, (name, v) in enumerate(entries.items()):
        bname = name.encode()
        keep += [bname, v]
        arr[i].name = bname
        arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[i].size = v.size
    arr[len(entries)].name = None  # terminator
    keep.append(arr)
    kvs: list[tuple[str, int, object]] = []
    if fname is not None:
        str_t, int_t = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR, llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
        kvs.append(("quantize.imatrix.file", str_t, fname))
        if datasets:
            kvs.append(("quantize.imatrix.dataset", str_t, datasets[0]))
        kvs.append(("quantize.imatrix.entries_count", int_t, len(entries)))
        if chunks > 0:
            kvs.append(("quantize.imatrix.chunks_count", int_t, chunks))
    return arr, kvs


def _kv_overrides(llama_cpp, kvs: list[tuple[str, int, object]], keep: list):
    arr = (llama_cpp.llama_model_kv_override * (len(kvs) + 1))()
    for i, (key, tag, val) in enumerate(kvs):
        arr[i].tag = tag
        arr[i].key = key.encode()[:127]
        if tag == llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR:
            arr[i].value.val_str = str(val).encode()[:127]
        else:
            arr[i].value.val_i64 = int(val)
    arr[len(kvs)].key = b""  # terminator: key[0] == 0
    keep.append(arr)
    return arr


def _tensor_overrides(llama_cpp, tensor_types, keep: list):
    items = list(tensor_types.items()) if isinstance(tensor_types, Mapping) else list(tensor_types)
    arr = (llama_cpp.llama_model_tensor_override * (len(items) + 1))()
    for i, (pat, typ) in enumerate(items):
        bpat = str(pat).lower().encode()
        keep.append(bpat)
        arr[i].pattern = bpat
        arr[i].type = ggml_type(typ).type_id
    arr[len(items)].pattern = None
    keep.append(arr)
    return arr


def _restore_log(llama_cpp) -> None:
    """Put back llama-cpp-python's own log callback (or a silent one if it is not there)."""
    try:
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    except Exception:  # pragma: no cover
        llama_cpp.llama_log_set(_silent_cb(llama_cpp), ctypes.c_void_p(0))


def _silent_cb(llama_cpp):
    cb = _state.get("silent")
    if cb is None:
        cb = llama_cpp.llama_log_callback(lambda level, text, ud: None)
        _state["silent"] = cb
    return cb
