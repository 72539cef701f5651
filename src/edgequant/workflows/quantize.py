"""Whole-file quantization: the equivalent of ``llama-quantize IN.gguf OUT.gguf FTYPE``.

Pipeline: read the input lazily (mmap), decide every tensor's
type with :mod:`edgequant.gguf.ftypes` in llama.cpp's sorted order, write the metadata llama.cpp writes
(all input KVs but the split keys, then ``general.quantization_version`` and ``general.file_type``, then
the imatrix provenance keys), then stream the tensors one at a time: a tensor whose type does not change
is copied byte for byte, any other is widened to float32 and encoded by the codecs
(:mod:`edgequant.gguf.tensor_encode`). Output goes to a
temporary file renamed at the end. Peak memory is about one tensor in float32 plus its encoding.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from gguf.constants import GGUFValueType

from edgequant.errors import ConfigError
from edgequant.gguf.codecs import dequantize, get_codec
from edgequant.gguf.ftypes import FType, ModelInfo, QuantizeOptions
from edgequant.gguf.imatrix import Imatrix
from edgequant.gguf.metadata import Metadata
from edgequant.gguf.reader import GGUFFile
from edgequant.gguf.tensor_encode import add_imatrix_kvs, encode_tensor, imatrix_for_tensor, tensor_rows_f32
from edgequant.gguf.type_rules import choose_types
from edgequant.gguf.writer import GGUFStreamWriter, check_writable

GGML_QNT_VERSION = 2
_FLOAT_TYPES = ("F32", "F16", "BF16")
_SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")


@dataclass
class TensorReport:
    name: str
    shape: tuple[int, ...]  # ggml order, ne[0] = row length
    old_type: str
    new_type: str
    fallback_from: str | None
    nbytes_in: int
    nbytes_out: int
    seconds: float
    used_imatrix: bool
    rmse: float | None = None  # of the dequantized output against the float input, when measured
    rounding: str = "llama"  # "gptq" when the codes were chosen by GPTQ ("llama": llama.cpp's bytes)
    out_err: float | None = None  # GPTQ runs: tr(ΔW H ΔWᵀ) of the written bytes
    plain_err: float | None = None  # GPTQ runs: the same for llama.cpp's bytes


@dataclass
class QuantizeReport:
    src: str
    dst: str
    ftype: str
    ftype_id: int
    seconds: float = 0.0
    bytes_out: int = 0
    n_params: int = 0
    tensors: list[TensorReport] = field(default_factory=list)

    @property
    def n_fallback(self) -> int:
        return sum(t.fallback_from is not None for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        """Bits per parameter over all tensors (llama.cpp's 'BPW' of the tensor data)."""
        return 8.0 * sum(t.nbytes_out for t in self.tensors) / max(1, self.n_params)

    def type_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors:
            out[t.new_type] = out.get(t.new_type, 0) + 1
        return out

    def weight_rmse(self) -> float | None:
        """RMSE over all quantized weights (element-weighted), when measured."""
        acc = [(t.rmse, int(np.prod(t.shape))) for t in self.tensors if t.rmse is not None]
        if not acc:
            return None
        n = sum(k for _, k in acc)
        return float(np.sqrt(sum(r * r * k for r, k in acc) / n))


# llama.cpp's LLAMA_MAX_LAYERS: its loader refuses a block_count above it (and llama-quantize loads hparams).
LLAMA_MAX_LAYERS = 512
_U32_MAX = 2**32 - 1


def model_info(meta: Metadata) -> ModelInfo:
    """Hyper-parameters the type rules need, from ``<arch>.*`` metadata (typed: a FormatError names the file,
    the key and the value when one has the wrong type or range)."""
    if "general.architecture" not in meta:
        raise ConfigError(f"{meta.path}: metadata has no general.architecture; is this a model file?")
    arch = meta.get_str("general.architecture")

    def hp(key: str, *default: int, lo: int = 0, hi: int = _U32_MAX) -> int:
        return meta.get_int(f"{arch}.{key}", *default, min=lo, max=hi, first_of_array=True)

    n_layer = hp("block_count", lo=1, hi=LLAMA_MAX_LAYERS)
    n_head = hp("attention.head_count", 0)
    n_head_kv = hp("attention.head_count_kv", n_head)
    is_70b = (
        n_layer == 80 and ((arch == "llama" and n_head != n_head_kv) or arch in ("qwen2", "olmo", "deci"))
    ) or (arch == "jais2" and n_layer == 68)
    return ModelInfo(arch, n_layer, n_head, n_head_kv, hp("expert_count", 0), is_70b)


def quantize_model(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    ftype: str | int | FType,
    *,
    imatrix: Imatrix | None = None,
    options: QuantizeOptions | None = None,
    threads: int | None = None,
    allow_requantize: bool = False,
    measure_error: bool = False,
    metadata: dict[str, str] | None = None,
    on_tensor: Callable[[int, int, TensorReport], None] | None = None,
    hessians=None,
) -> QuantizeReport:
    """Quantize a GGUF model file to ``ftype``; returns what was done to every tensor.

    Raises (before writing anything when it can be known up front): ConfigError for an unknown ftype
    or type, a requantization without ``allow_requantize`` or an imatrix that does not fit; FormatError
    for a malformed input; NonFiniteError naming tensor and row for NaN/Inf weights; OutputError when
    ``dst`` cannot be written. On any error or interrupt no file is left at ``dst``.
    ``metadata``: extra string keys written after llama-quantize's (e.g. ``edgequant.recipe``); none by
    default, so that the file is byte-identical to llama-quantize's.
    A ``tensor_types`` pattern that matches no tensor is an error (llama-quantize ignores it silently).
    ``hessians``: a :class:`edgequant.workflows.gptq.Hessians` (``collect_hessians``): every 2-D tensor it
    has a Hessian for, going to a type GPTQ supports, gets GPTQ's codes under llama.cpp's scales
    (``rounding="gptq"`` in its report, with both output errors); llama.cpp's bytes are kept where GPTQ's
    output error would be larger. None (the default): llama-quantize's bytes.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    ft = FType.parse(ftype)
    opts = options or QuantizeOptions()
    check_writable(dst)
    if os.path.exists(dst) and os.path.samefile(src, dst):
        raise ConfigError(f"output {dst} is the input file; choose another output path")
    t_start = time.perf_counter()
    report = QuantizeReport(src, dst, ft.name, ft.id)
    with GGUFFile(src) as reader:
        info = model_info(reader.meta)
        plan = _plan(reader, src, ft, info, imatrix, opts, allow_requantize)
        with GGUFStreamWriter(dst) as w:
            for key, rec in reader.kvs.items():
                if key in _SPLIT_KEYS or key in ("general.quantization_version", "general.file_type"):
                    continue
                w.add_kv(key, rec.vtype, rec.value, rec.array_type)
            w.add_kv("general.quantization_version", GGUFValueType.UINT32, GGML_QNT_VERSION)
            w.add_kv("general.file_type", GGUFValueType.UINT32, ft.id)
            if imatrix is not None:
                add_imatrix_kvs(w, imatrix)
            for key, value in (metadata or {}).items():
                w.add_kv(key, GGUFValueType.STRING, value)
            for t, c, requant, _ in plan:
                new = get_codec(c.new_type) if requant else None
                nbytes = new.row_bytes(t.shape_ne[0]) * (t.n_elements // t.shape_ne[0]) if new else t.nbytes
                w.add_tensor_info(t.name, t.shape_ne, new.type_id if new else t.type_id, nbytes)
            w.write_header()
            for i, (t, c, requant, qw) in enumerate(plan):
                rep = _write_tensor(w, reader, t, c, requant, qw, threads, measure_error, hessians)
                report.tensors.append(rep)
                report.n_params += t.n_elements
                if on_tensor:
                    on_tensor(i, len(plan), rep)
    report.seconds = time.perf_counter() - t_start
    report.bytes_out = os.path.getsize(dst)
    return report


def _write_tensor(w, reader, t, c, requant, qw, threads, measure_error, hessians) -> TensorReport:
    """Write one tensor's data (copied, or encoded to ``c.new_type``); its report."""
    t0 = time.perf_counter()
    raw = reader.tensor_data(t)
    rmse, extra = None, {}
    if requant:
        # without GPTQ the encoder refuses NaN/Inf itself (the legacy C kernels: in their one pass)
        x = tensor_rows_f32(raw, t, check=hessians is not None)
        out, extra = _encode(x, c.new_type, qw, t, threads, hessians)
        if measure_error:
            back = dequantize(out, c.new_type, x.shape, threads=threads)
            rmse = float(np.sqrt(np.mean((back.astype(np.float64) - x) ** 2)))
        w.write_tensor_data(t.name, out)
        nbytes_out = out.nbytes
        del x, out
    else:
        w.write_tensor_data(t.name, raw)
        nbytes_out = t.nbytes
    reader.release(t)  # keep resident memory near one tensor, not the file size
    new_type = c.new_type if requant else t.type_name
    return TensorReport(
        t.name, t.shape_ne, t.type_name, new_type, c.fallback_from, t.nbytes, nbytes_out,
        time.perf_counter() - t0, qw is not None, rmse, **extra,
    )  # fmt: skip


def _encode(x, new_type, qw, t, threads, hessians) -> tuple[np.ndarray, dict]:
    """(bytes, extra TensorReport fields): GPTQ where a Hessian applies, else llama.cpp's encoding."""
    if hessians is not None:
        from edgequant.workflows.gptq import can_gptq, encode_gptq

        h = hessians.get(t.name) if can_gptq(new_type, t.shape_ne) else None
        if h is not None:
            res = encode_gptq(x, new_type, qw, h, t.name)
            rounding = "llama" if res.used_plain else "gptq"
            return res.raw, {"rounding": rounding, "out_err": res.err, "plain_err": res.err_plain}
    return encode_tensor(x, new_type, qw, t, threads, check_finite=hessians is None), {}


def _plan(
    reader: GGUFFile,
    src: str,
    ftype: FType,
    info: ModelInfo,
    imatrix: Imatrix | None,
    opts: QuantizeOptions,
    allow_requantize: bool,
) -> list:
    """(tensor info, TensorChoice, re-encode?, imatrix vector or None) per tensor, in output order."""
    by_name = {t.name: t for t in reader.tensors}
    qmap = imatrix.entries if imatrix is not None else {}
    choices = choose_types(
        [(t.name, t.shape_ne, t.type_name) for t in reader.tensors], ftype, info, opts, has_imatrix=bool(qmap)
    )
    for pattern, _ in opts.tensor_types:
        rx = re.compile(pattern)
        if not any(rx.search(t.name) for t in reader.tensors):
            raise ConfigError(
                f"{src}: tensor type pattern '{pattern}' matches no tensor of the file; fix the name "
                "(see `edgequant inspect` for the tensor names) or drop it",
                option="tensor_types",
            )
    plan = []
    for c in choices:
        t = by_name[c.name]
        requant = c.quantize and c.new_type != t.type_name
        if requant and t.type_name not in _FLOAT_TYPES and not allow_requantize:
            raise ConfigError(
                f"{src}: tensor '{t.name}' is {t.type_name}; requantizing from it is disabled "
                "(it loses quality); set allow_requantize to do it anyway",
                option="allow_requantize",
            )
        qw = imatrix_for_tensor(qmap, t) if requant else None
        plan.append((t, c, requant, qw))
    return plan


def plan_model(
    src: str | os.PathLike,
    ftype: str | int | FType,
    *,
    imatrix: Imatrix | None = None,
    options: QuantizeOptions | None = None,
) -> list[dict]:
    """What ``quantize_model`` would do to every tensor (``--dry-run``), without encoding anything."""
    src = os.fspath(src)
    ft = FType.parse(ftype)
    with GGUFFile(src) as reader:
        info = model_info(reader.meta)
        plan = _plan(reader, src, ft, info, imatrix, options or QuantizeOptions(), True)
        out = []
        for t, c, requant, qw in plan:
            new = get_codec(c.new_type) if requant else None
            rows = t.n_elements // t.shape_ne[0]
            out.append(
                {
                    "name": t.name,
                    "shape": list(t.shape_ne),
                    "old_type": t.type_name,
                    "new_type": c.new_type if requant else t.type_name,
                    "fallback_from": c.fallback_from,
                    "nbytes_in": t.nbytes,
                    "nbytes_out": new.row_bytes(t.shape_ne[0]) * rows if new else t.nbytes,
                    "imatrix": qw is not None,
                    "manual": c.manual,
                }
            )
        return out


def _rounding_summary(report: QuantizeReport) -> dict:
    """GPTQ runs: tensors by rounding, and the summed output errors ``tr(ΔW H ΔWᵀ)`` of both roundings."""
    done = [t for t in report.tensors if t.out_err is not None]
    if not done:
        return {}
    return {
        "gptq": {
            "tensors": len(done),
            "kept_plain": sum(t.rounding != "gptq" for t in done),
            "out_err": sum(t.out_err for t in done),
            "plain_err": sum(t.plain_err for t in done),
        }
    }


def report_dict(report: QuantizeReport) -> dict:
    """JSON-ready form of a QuantizeReport (``--json``)."""
    return {
        "src": report.src,
        "dst": report.dst,
        "ftype": report.ftype,
        "ftype_id": report.ftype_id,
        "seconds": round(report.seconds, 4),
        "bytes_out": report.bytes_out,
        "n_params": report.n_params,
        "bits_per_weight": round(report.bits_per_weight, 4),
        "n_fallback": report.n_fallback,
        "type_counts": report.type_counts(),
        "weight_rmse": report.weight_rmse(),
        **_rounding_summary(report),
        "tensors": [
            {
                "name": t.name,
                "shape": list(t.shape),
                "old_type": t.old_type,
                "new_type": t.new_type,
                "fallback_from": t.fallback_from,
                "nbytes_in": t.nbytes_in,
                "nbytes_out": t.nbytes_out,
                "seconds": round(t.seconds, 5),
                "imatrix": t.used_imatrix,
                "rmse": t.rmse,
                **(
                    {"rounding": t.rounding, "out_err": t.out_err, "plain_err": t.plain_err}
                    if t.out_err is not None
                    else {}
                ),
            }
            for t in report.tensors
        ],
    }
