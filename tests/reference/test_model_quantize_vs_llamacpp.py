"""Whole-file comparison with llama.cpp's ``llama_model_quantize`` on the real SmolLM2-135M (F32 source).

For every ftype edgequant supports, both tools quantize the same F32 file; every tensor must be
byte-identical, every metadata key equal (type and value, same order), and in fact the whole files equal.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from edgequant.gguf.ftypes import FTYPES, QuantizeOptions, parse_ftype
from edgequant.gguf.imatrix import ImatrixEntry, load_imatrix, save_imatrix_dat, save_imatrix_gguf
from edgequant.gguf.reader import GGUFFile
from edgequant.workflows.quantize import quantize_model
from tests.support import ggml_peer, llama_peer
from tests.support.compare import compare_gguf

pytestmark = [
    pytest.mark.reference,
    pytest.mark.slow,
    pytest.mark.skipif(not ggml_peer.available(), reason="llama-cpp-python is not installed"),
]


def _both(src, tmp_path, ftype, imatrix_path=None, llama_kw=None, opts=None):
    name, fid = parse_ftype(ftype)
    theirs, ours = str(tmp_path / f"llama-{name}.gguf"), str(tmp_path / f"ours-{name}.gguf")
    res = llama_peer.llama_quantize_file(
        src, theirs, fid, nthread=2, imatrix=imatrix_path, **(llama_kw or {})
    )
    assert res["rc"] == 0, res["log"][-2000:]
    imat = load_imatrix(imatrix_path) if imatrix_path else None
    quantize_model(src, ours, name, imatrix=imat, options=opts, threads=2)
    cmp = compare_gguf(ours, theirs)
    assert cmp.mismatched == [], (
        f"{len(cmp.mismatched)} of {cmp.tensors_total} tensors differ: {cmp.mismatched[:5]}"
    )
    assert cmp.kv_diffs == [], cmp.kv_diffs
    assert cmp.tensor_order_equal
    assert cmp.kv_order_equal
    assert cmp.files_identical
    os.remove(theirs)
    os.remove(ours)
    return cmp


@pytest.mark.parametrize("ftype", list(FTYPES))
def test_every_ftype_matches_llama_quantize(smollm2_f32, tmp_path, ftype):
    cmp = _both(smollm2_f32, tmp_path, ftype)
    assert cmp.tensors_identical == cmp.tensors_total == 272


@pytest.fixture(scope="module")
def synthetic_imatrix(smollm2_f32, tmp_path_factory):
    """A seeded imatrix with an entry for every blk.* matmul weight, in both file formats."""
    rng = np.random.default_rng(7)
    stats = {}
    with GGUFFile(smollm2_f32) as r:
        for t in r.tensors:
            if t.name.startswith("blk.") and len(t.shape_ne) == 2:
                ne0 = t.shape_ne[0]
                # heavy-tailed per-column activations, as real ones are; 512 tokens per chunk, 10 chunks
                sum2 = (rng.lognormal(0.0, 1.5, ne0) * 5120).astype(np.float32)[None, :]
                stats[t.name] = ImatrixEntry(sum2, np.array([5120], np.int64))
    d = tmp_path_factory.mktemp("imatrix")
    gguf_path, dat_path = str(d / "imatrix.gguf"), str(d / "imatrix.dat")
    save_imatrix_gguf(gguf_path, stats, 512, ["calibration.txt"])
    save_imatrix_dat(dat_path, stats, 512, "calibration.txt")
    return {"gguf": gguf_path, "dat": dat_path}


_IMATRIX_CASES = [
    (f, "gguf") for f in ("Q4_0", "Q4_1", "Q5_1", "Q2_K", "Q3_K_S", "Q4_K_M", "Q6_K", "IQ4_NL", "IQ4_XS")
]
_IMATRIX_CASES += [(f, "dat") for f in ("Q4_0", "Q4_K_M", "IQ4_XS")]  # the legacy format, on three ftypes


@pytest.mark.parametrize(("ftype", "fmt"), _IMATRIX_CASES)
def test_with_imatrix_matches_llama_quantize(smollm2_f32, synthetic_imatrix, tmp_path, ftype, fmt):
    _both(smollm2_f32, tmp_path, ftype, synthetic_imatrix[fmt])


@pytest.mark.parametrize(
    ("llama_kw", "opts"),
    [
        ({"pure": True}, QuantizeOptions(pure=True)),
        ({"leave_output": True}, QuantizeOptions(leave_output_tensor=True)),
        ({"output_tensor_type": "Q8_0"}, QuantizeOptions(output_tensor_type="Q8_0")),
        ({"token_embedding_type": "F16"}, QuantizeOptions(token_embedding_type="F16")),
        (
            {"tensor_types": [("attn_v", "Q8_0"), ("blk\\.1[0-9]\\.ffn", "Q4_0")]},
            QuantizeOptions(tensor_types=(("attn_v", "Q8_0"), ("blk\\.1[0-9]\\.ffn", "Q4_0"))),
        ),
    ],
    ids=["pure", "leave-output", "output-type", "token-embd-type", "tensor-type"],
)
def test_options_match_llama_quantize(smollm2_f32, tmp_path, llama_kw, opts):
    _both(smollm2_f32, tmp_path, "Q4_K_M", llama_kw=llama_kw, opts=opts)
