"""Fuzz targets: a case laid out as files and run in-process through edgequant.

The contract checked: whatever the bytes, every target either succeeds or raises an
``edgequant.errors.EdgequantError`` subclass (or ``OSError`` for the file system); any other exception is a
bug. ``--json``-style output of the summary must be strict JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from tests.support.fuzz.seeds import seed_bytes


def _strict_json(obj: Any) -> None:
    from edgequant.core.text import dumps

    def bad(token: str) -> None:
        raise AssertionError(f"non-strict JSON token {token}")

    json.loads(dumps(obj), parse_constant=bad)


def exercise_gguf(path: str, workdir: str) -> None:
    """Reader (every tensor decoded), summary (strict JSON), planning, quantize and dequantize."""
    from edgequant.gguf.reader import GGUFFile
    from edgequant.gguf.summary import summarize
    from edgequant.workflows.dequantize import dequantize_model
    from edgequant.workflows.quantize import plan_model, quantize_model

    with GGUFFile(path) as r:
        for t in r.tensors:
            r.tensor_f32(t)
    _strict_json(summarize(path))
    plan_model(path, "Q4_K_M")
    out = os.path.join(workdir, "out.gguf")
    try:
        quantize_model(path, out, "Q4_0", allow_requantize=True)
        dequantize_model(out, os.path.join(workdir, "back.gguf"))
    finally:
        for f in ("out.gguf", "back.gguf"):
            p = os.path.join(workdir, f)
            if os.path.exists(p):
                os.unlink(p)


def exercise_imatrix(path: str, workdir: str) -> None:
    """Load the imatrix both ways, then quantize the seed model with it (sizes checked against tensors)."""
    from edgequant.gguf.imatrix import load_imatrix, load_imatrix_stats
    from edgequant.workflows.quantize import quantize_model

    st = load_imatrix_stats(path)
    st.raw(64)
    im = load_imatrix(path)
    _strict_json({"entries": len(im.entries), "datasets": im.datasets, "chunk_count": im.chunk_count})
    model = os.path.join(workdir, "model.gguf")
    if not os.path.exists(model):
        with open(model, "wb") as f:
            f.write(seed_bytes("gguf_model"))
    out = os.path.join(workdir, "out.gguf")
    try:
        quantize_model(model, out, "Q4_K_M", imatrix=im)
    finally:
        if os.path.exists(out):
            os.unlink(out)


def exercise_hf(folder: str, workdir: str) -> None:
    """An HF folder (config.json, model.safetensors, optional index): checkpoint opened, every tensor read,
    the architecture and its required config keys checked."""
    from edgequant.models.architectures import arch_from_config
    from edgequant.models.hf_checkpoint import HFCheckpoint

    with HFCheckpoint(folder) as ck:
        for name in ck.tensors:
            ck.get(name)
        arch_from_config(ck.config, os.path.join(folder, "config.json"))


def write_case(kind: str, data: bytes, workdir: str) -> tuple[str, Callable[[str, str], None]]:
    """Lay out ``data`` as a file of ``kind`` in ``workdir``; returns (path to pass, target function)."""
    if kind.startswith("gguf"):
        path = os.path.join(workdir, "in.gguf")
        with open(path, "wb") as f:
            f.write(data)
        return path, exercise_gguf
    if kind.startswith("imatrix"):
        path = os.path.join(workdir, "imatrix" + (".gguf" if kind.endswith("gguf") else ".dat"))
        with open(path, "wb") as f:
            f.write(data)
        return path, exercise_imatrix
    folder = os.path.join(workdir, "hf")
    os.makedirs(folder, exist_ok=True)
    files = {
        "config.json": seed_bytes("config"),
        "model.safetensors": seed_bytes("safetensors"),
    }
    if kind == "index":
        files["model.safetensors.index.json"] = seed_bytes("index")
    files[
        {
            "config": "config.json",
            "safetensors": "model.safetensors",
            "index": "model.safetensors.index.json",
        }[kind]
    ] = data
    for name in os.listdir(folder):
        os.unlink(os.path.join(folder, name))
    for name, b in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(b)
    return folder, exercise_hf


def run_case(kind: str, data: bytes, workdir: str) -> None:
    """Write and exercise one case. Raises what the target raises (EdgequantError/OSError are fine)."""
    path, target = write_case(kind, data, workdir)
    target(path, workdir)


def expected_error(e: BaseException) -> bool:
    from edgequant.errors import EdgequantError

    return isinstance(e, EdgequantError)
