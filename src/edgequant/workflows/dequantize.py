"""Dequantize a whole GGUF model to F32/F16, as GGUF or safetensors, one tensor at a time.

GGUF output keeps every KV (``general.file_type`` becomes 0 = ALL_F32 or 1 = MOSTLY_F16) and the tensor
order. With ``outtype="f16"`` tensors of 2 or more dimensions become F16 and 1-D tensors (norms) stay F32,
as llama.cpp's converter does. Safetensors output uses the GGUF tensor names and NumPy shapes
(``ne`` reversed); mapping names back to Hugging Face's belongs to ``edgequant export-hf``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
from gguf.constants import GGUFValueType

from edgequant.errors import ConfigError
from edgequant.gguf.codecs import dequantize, get_codec
from edgequant.gguf.reader import GGUFFile
from edgequant.gguf.type_rules import ggml_n_dims
from edgequant.gguf.writer import GGUFStreamWriter, check_writable
from edgequant.models.safetensors import SafetensorsStreamWriter


def _target(t, outtype: str) -> str:
    return "F16" if outtype == "f16" and ggml_n_dims(t.shape_ne) >= 2 else "F32"


def _decode(reader: GGUFFile, t, target: str) -> np.ndarray:
    x = (
        dequantize(reader.tensor_data(t), t.type_name, t.np_shape)
        if t.type_name != "F32"
        else np.asarray(reader.tensor_data(t).view(np.float32)).reshape(t.np_shape)
    )
    return x.astype(np.float16) if target == "F16" else x


def dequantize_model(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    outtype: str = "f32",
    on_tensor: Callable[[int, int, str], None] | None = None,
) -> dict:
    """Write ``dst`` (``.gguf`` or ``.safetensors``) with every tensor decoded; returns a small report."""
    src, dst = os.fspath(src), os.fspath(dst)
    outtype = outtype.lower()
    if outtype not in ("f32", "f16"):
        raise ConfigError(f"outtype must be f32 or f16, got '{outtype}'", option="outtype")
    if not dst.endswith((".gguf", ".safetensors")):
        raise ConfigError(f"output {dst}: give a .gguf or .safetensors file name")
    check_writable(dst)
    with GGUFFile(src) as r:
        tensors = r.tensors
        if dst.endswith(".safetensors"):
            w = SafetensorsStreamWriter(dst, {"source": os.path.basename(src), "producer": "edgequant"})
            for t in tensors:
                w.declare(t.name, _target(t, outtype), t.np_shape)
            with w:
                for i, t in enumerate(tensors):
                    w.write(t.name, _decode(r, t, _target(t, outtype)))
                    r.release(t)
                    if on_tensor:
                        on_tensor(i, len(tensors), t.name)
        else:
            with GGUFStreamWriter(dst) as w:
                for key, rec in r.kvs.items():
                    if key != "general.file_type":
                        w.add_kv(key, rec.vtype, rec.value, rec.array_type)
                w.add_kv("general.file_type", GGUFValueType.UINT32, 1 if outtype == "f16" else 0)
                for t in tensors:
                    c = get_codec(_target(t, outtype))
                    w.add_tensor_info(t.name, t.shape_ne, c.type_id, c.type_size * t.n_elements)
                w.write_header()
                for i, t in enumerate(tensors):
                    w.write_tensor_data(t.name, _decode(r, t, _target(t, outtype)))
                    r.release(t)
                    if on_tensor:
                        on_tensor(i, len(tensors), t.name)
    return {
        "src": src,
        "dst": dst,
        "outtype": outtype,
        "n_tensors": len(tensors),
        "bytes": os.path.getsize(dst),
    }
