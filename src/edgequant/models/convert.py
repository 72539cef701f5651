"""Hugging Face folder -> GGUF of any ftype in one streaming pass: ``convert_hf_to_gguf``.

Metadata: the keys and order of llama.cpp's ``convert_hf_to_gguf.py`` (``general.*`` from gguf-py's
``Metadata``, ``<arch>.*`` hyper-parameters, ``general.file_type``, for llama ``vocab_size`` and
``rope.dimension_count``, then the tokenizer (:mod:`edgequant.models.hf_vocab`) and
``general.quantization_version``). Tensors: HF names mapped with gguf-py's ``TensorNameMap``, q/k rows
permuted for llama/mistral (:mod:`edgequant.models.architectures`), ``lm_head`` dropped when the
embeddings are tied.

Types: the file is what ``convert_hf_to_gguf.py --outtype f32`` followed by ``llama-quantize FTYPE`` would
give: every tensor goes through ``type_rules.choose_types`` (llama-quantize's mixtures, fallbacks, imatrix)
and the codecs, in llama.cpp's sorted tensor order, and for a quantized ftype the KV layout is
llama-quantize's (``general.quantization_version``, ``general.file_type`` and the imatrix keys last).
For F16/BF16 that equals the converter's own ``--outtype`` (2-D weights in F16/BF16, 1-D tensors F32).

Streaming: one tensor is read (mmap), widened to float32, permuted, encoded and written at a time. The
output goes to a temporary file; after the optional verification (:mod:`edgequant.models.verify`) it is
renamed onto ``out_path``; on any error nothing is left there.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from edgequant.gguf.codecs import get_codec
from edgequant.gguf.ftypes import FType, ModelInfo, QuantizeOptions
from edgequant.gguf.imatrix import Imatrix, load_imatrix
from edgequant.gguf.tensor_encode import add_imatrix_kvs, encode_tensor, imatrix_for_tensor, tensor_rows_f32
from edgequant.gguf.type_rules import choose_types
from edgequant.gguf.writer import GGUFStreamWriter, check_writable
from edgequant.models.architectures import arch_from_config, head_dim, permute_qk
from edgequant.models.convert_plan import expected_shapes, gguf_metadata, map_names
from edgequant.models.hf_checkpoint import HFCheckpoint
from edgequant.models.rope import rope_partial, rope_tensors

_FLOAT_FTYPES = ("F32", "F16", "BF16")


@dataclass
class ConvertResult:
    src: str
    dst: str
    arch: str
    ftype: str
    n_tensors: int
    n_params: int
    bytes_out: int
    seconds: float
    type_counts: dict[str, int] = field(default_factory=dict)
    verification: dict | None = None  # see edgequant.models.verify.verify_conversion

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def convert_hf_to_gguf(
    hf_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    outtype: str = "F16",
    imatrix: str | os.PathLike | Imatrix | None = None,
    verify: bool = True,
    *,
    threads: int | None = None,
    options: QuantizeOptions | None = None,
    on_tensor=None,
) -> ConvertResult:
    """Convert the llama/mistral/qwen2 model in ``hf_dir`` to ``out_path`` as ``outtype`` (any ftype).

    ``imatrix``: a path (GGUF or .dat, as llama-imatrix writes) or a loaded ``Imatrix``. ``verify``:
    compare llama.cpp's logits on the written file with transformers' on the HF model (skipped, and said so
    in ``result.verification``, when llama-cpp-python is not installed); a disagreement beyond the ftype's
    tolerance raises ``VerificationError`` and leaves no file. ``on_tensor(i, n, name)`` after each tensor.
    """
    t0 = time.perf_counter()
    src, dst = os.fspath(hf_dir), os.fspath(out_path)
    ft = FType.parse(outtype)
    ftype, ftype_id = ft.name, ft.id
    check_writable(dst)
    if isinstance(imatrix, (str, os.PathLike)):
        imatrix = load_imatrix(imatrix)
    ckpt = HFCheckpoint(src)
    try:
        spec = arch_from_config(ckpt.config, os.path.join(src, "config.json"))
        hp = ckpt.config
        shapes = expected_shapes(hp, spec)
        names = map_names(ckpt, spec, shapes)  # gguf name -> hf name, shapes checked
        n_rot = int(rope_partial(hp) * head_dim(hp)) if spec.fused else head_dim(hp)
        ckpt = _WithExtras(ckpt, rope_tensors(hp, head_dim(hp), n_rot), names)
        n_params = sum(int(np.prod(ckpt.shape(h))) for h in names.values())
        kvs = gguf_metadata(src, hp, spec, ftype_id, n_params, quantized=ftype not in _FLOAT_FTYPES)
        info = ModelInfo(
            spec.gguf_arch,
            int(hp["num_hidden_layers"]),
            int(hp["num_attention_heads"]),
            int(hp.get("num_key_value_heads") or hp["num_attention_heads"]),
        )
        listing = [(g, tuple(reversed(ckpt.shape(h))), "F32") for g, h in names.items()]
        qmap = imatrix.entries if imatrix is not None else {}
        choices = choose_types(listing, ft, info, options or QuantizeOptions(), has_imatrix=bool(qmap))
        tmp = _temp_name(dst)
        try:
            with GGUFStreamWriter(tmp) as w:
                counts = _write(w, kvs, imatrix, choices, ckpt, names, spec, threads, on_tensor)
            verification = None
            if verify:
                from edgequant.models.verify import verify_conversion

                verification = verify_conversion(src, tmp, ftype)
            os.replace(tmp, dst)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    finally:
        ckpt.close()
    return ConvertResult(
        src,
        dst,
        spec.hf_arch,
        ftype,
        len(choices),
        n_params,
        os.path.getsize(dst),
        time.perf_counter() - t0,
        counts,
        verification,
    )


def _write(
    w: GGUFStreamWriter, kvs, imatrix, choices, ckpt, names, spec, threads, on_tensor
) -> dict[str, int]:
    """Metadata, tensor infos, then every tensor encoded in order; returns the count of each tensor type."""
    for k in kvs:
        w.add_kv(k.name, k.vtype, k.value, k.array_type)
    if imatrix is not None:
        add_imatrix_kvs(w, imatrix)
    for c in choices:
        ne = tuple(reversed(ckpt.shape(names[c.name])))
        codec = get_codec(c.new_type)
        rows = int(np.prod(ne[1:], dtype=np.int64)) if len(ne) > 1 else 1
        w.add_tensor_info(c.name, ne, codec.type_id, codec.row_bytes(ne[0]) * rows)
    w.write_header()
    qmap = imatrix.entries if imatrix is not None else {}
    counts: dict[str, int] = {}
    for i, c in enumerate(choices):
        w.write_tensor_data(c.name, _encode_tensor(ckpt, names[c.name], c, ckpt.config, spec, qmap, threads))
        counts[c.new_type] = counts.get(c.new_type, 0) + 1
        if on_tensor:
            on_tensor(i, len(choices), c.name)
    return counts


def _temp_name(dst: str) -> str:
    parent, name = os.path.split(os.path.abspath(dst))
    return os.path.join(parent, f".{name}.unverified-{os.getpid()}.gguf")


class _WithExtras:
    """The checkpoint plus tensors the converter computes (rope factors), read alike."""

    def __init__(self, ckpt: HFCheckpoint, extras: dict[str, np.ndarray], names: dict[str, str]) -> None:
        self.ckpt, self.extras, self.config = ckpt, extras, ckpt.config
        names.update({g: g for g in extras})

    def shape(self, name: str) -> tuple[int, ...]:
        return self.extras[name].shape if name in self.extras else self.ckpt.shape(name)

    def get(self, name: str) -> np.ndarray:
        return self.extras[name] if name in self.extras else self.ckpt.get(name)

    def close(self) -> None:
        self.ckpt.close()


def _encode_tensor(ckpt, hf_name, choice, hp, spec, qmap, threads) -> np.ndarray:
    x = ckpt.get(hf_name)
    if spec.norm_offset and hf_name.endswith("norm.weight"):
        x = x + np.float32(spec.norm_offset)  # Gemma's RMSNorm multiplies by (1 + w); ggml's by w
    if spec.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
        x = permute_qk(x, int(hp["num_attention_heads"]))
    elif spec.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
        x = permute_qk(x, int(hp.get("num_key_value_heads") or hp["num_attention_heads"]))
    ne = tuple(reversed(x.shape))
    t = SimpleNamespace(name=choice.name, shape_ne=ne, n_elements=x.size, type_name="F32")
    rows = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, ne[0])
    rows = tensor_rows_f32(rows.view(np.uint8), t)  # NaN/Inf -> NonFiniteError naming tensor and row
    if choice.new_type == "F32":
        return rows
    qw = imatrix_for_tensor(qmap, t) if choice.quantize else None
    return encode_tensor(rows, choice.new_type, qw, t, threads)


__all__ = ["ConvertResult", "convert_hf_to_gguf"]
