"""edgequant against golden fixtures produced by llama.cpp (``scripts/make_golden.py``).

Runs without llama-cpp-python: the inputs are regenerated from the seed in ``tests/golden/manifest.json``
(their SHA-256 is checked first), and the expected bytes / dequantized-float hashes come from the
``tests/golden/<TYPE>.npz`` files that ggml wrote.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.support.cases import imatrix_cases, random_blocks, row_cases, sha256

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text()) if (GOLDEN / "manifest.json").exists() else None

pytestmark = pytest.mark.skipif(
    MANIFEST is None, reason="tests/golden/manifest.json missing (run scripts/make_golden.py)"
)

TYPES = MANIFEST["types"] if MANIFEST else []


def _load(qtype: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN / f"{qtype}.npz") as z:
        return {k: z[k] for k in z.files}


def _inputs() -> tuple[list[str], np.ndarray]:
    return row_cases(MANIFEST["n_per_row"], MANIFEST["rows_per_case"], MANIFEST["seed"], MANIFEST["families"])


def _codec(qtype: str):
    import edgequant.gguf as eg

    return eg, eg.get_codec(qtype)


def test_golden_dir_is_small() -> None:
    total = sum(p.stat().st_size for p in GOLDEN.iterdir() if p.is_file())
    assert total < 2_000_000, f"tests/golden holds {total} bytes; keep it under 2 MB"


def test_inputs_regenerate_identically() -> None:
    """The seeded generator still gives the inputs ggml saw (else every golden test below is moot)."""
    _, x = _inputs()
    expect = str(_load(TYPES[0])["input_sha"])
    assert sha256(x) == expect, "tests.support.cases.row_cases output changed (numpy RNG or family edit)"


@pytest.mark.parametrize("qtype", TYPES)
def test_block_geometry_matches_ggml(qtype: str) -> None:
    _, codec = _codec(qtype)
    block, size = MANIFEST["geometry"][qtype]
    assert (codec.block_size, codec.type_size) == (block, size), (
        f"{qtype}: edgequant block geometry (block_size, type_size) = {(codec.block_size, codec.type_size)}, "
        f"ggml's is {(block, size)}"
    )


@pytest.mark.parametrize("qtype", TYPES)
def test_quantize_matches_golden(qtype: str) -> None:
    eg, _ = _codec(qtype)
    g = _load(qtype)
    names, x = _inputs()
    assert sha256(x) == str(g["input_sha"]), (
        "regenerated inputs differ from the ones the fixture was made from"
    )
    ims = imatrix_cases(MANIFEST["n_per_row"], MANIFEST["seed"])
    for key in sorted(k for k in g if k.startswith("bytes__")):
        variant = key.split("__", 1)[1]
        qw = ims[variant]
        if qw is not None:
            assert sha256(qw) == str(g[f"imatrix_sha__{variant}"]), f"imatrix '{variant}' generator changed"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ours = eg.quantize(x, qtype, qw)
        ref = g[key]
        assert ours.shape == ref.shape, f"{qtype}/{variant}: shape {ours.shape} != {ref.shape}"
        bad = np.flatnonzero((ours != ref).any(axis=1))
        assert bad.size == 0, (
            f"{qtype} imatrix={variant}: {bad.size}/{len(names)} rows differ from llama.cpp: rows "
            f"{bad[:30].tolist()} families {sorted({names[i] for i in bad})}"
        )


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_matches_golden(qtype: str) -> None:
    eg, _ = _codec(qtype)
    g = _load(qtype)
    shape = (len(_inputs()[0]), MANIFEST["n_per_row"])
    for key in sorted(k for k in g if k.startswith("bytes__")):
        variant = key.split("__", 1)[1]
        ours = np.asarray(eg.dequantize(g[key], qtype, shape), np.float32)
        assert sha256(ours) == str(g[f"deq_sha__{variant}"]), (
            f"{qtype}/{variant}: dequantized floats differ from ggml"
        )


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_random_blocks_matches_golden(qtype: str) -> None:
    eg, codec = _codec(qtype)
    g = _load(qtype)
    block, size = MANIFEST["geometry"][qtype]
    if (codec.block_size, codec.type_size) != (block, size):
        pytest.fail(f"{qtype}: block geometry differs from ggml (see test_block_geometry_matches_ggml)")
    fp16, f32 = (tuple(f) for f in MANIFEST["scale_fields"][qtype])
    n_blocks = MANIFEST["rand_blocks"] * (1 if codec.block_size > 1 else 32)
    blocks = random_blocks(codec.type_size, n_blocks, fp16, MANIFEST["seed"], f32)
    assert sha256(blocks) == str(g["rand_blocks_sha"]), "random_blocks generator changed"
    n = MANIFEST["n_per_row"]
    ours = np.asarray(eg.dequantize(blocks, qtype, (n_blocks * codec.block_size // n, n)), np.float32)
    assert sha256(ours) == str(g["rand_blocks_deq_sha"]), (
        f"{qtype}: dequantized random blocks differ from ggml"
    )
