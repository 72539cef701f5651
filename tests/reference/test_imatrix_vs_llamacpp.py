"""An imatrix collected by edgequant, used by llama.cpp's quantizer and by edgequant's: identical files.

SmolLM2-135M (the packaged Q4_1 expanded to F32), calibration on a short slice of the Apache-2.0 text.
Both imatrix file formats are exercised: the GGUF one with Q4_K_M (K-quant imatrix paths on ffn_down,
Q5_0/Q8_0 weighted paths elsewhere) and the legacy .dat one, produced by merging the GGUF file, with Q4_0.
"""

from __future__ import annotations

import hashlib

import pytest

pytestmark = [pytest.mark.reference, pytest.mark.slow]


def _sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def imatrices(smollm2_f32, tmp_path_factory):
    from edgequant.eval import DEFAULT_CALIBRATION_TEXT
    from edgequant.workflows.imatrix import make_imatrix

    d = tmp_path_factory.mktemp("imatrix")
    gguf_path, dat_path = str(d / "imatrix.gguf"), str(d / "imatrix.dat")
    rep = make_imatrix(smollm2_f32, gguf_path, DEFAULT_CALIBRATION_TEXT, n_ctx=64, n_chunks=2, threads=2)
    assert rep["entries"] == 30 * 7
    make_imatrix(None, dat_path, in_files=[gguf_path], n_ctx=64)  # GGUF -> legacy dat
    return gguf_path, dat_path


@pytest.mark.parametrize(("which", "ftype", "ftype_id"), [(0, "Q4_K_M", 15), (1, "Q4_0", 2)])
def test_llama_cpp_quantizer_gives_edgequant_bytes(imatrices, smollm2_f32, tmp_path, which, ftype, ftype_id):
    ggml_peer = pytest.importorskip("tests.support.ggml_peer")
    if not ggml_peer.available():
        pytest.skip("llama-cpp-python is not installed")
    from edgequant.gguf.imatrix import load_imatrix
    from edgequant.workflows.quantize import quantize_model

    path = imatrices[which]
    ours, ref = tmp_path / "edgequant.gguf", tmp_path / "llama.gguf"
    rep = quantize_model(smollm2_f32, ours, ftype, imatrix=load_imatrix(path), threads=2)
    assert sum(t.used_imatrix for t in rep.tensors) == 210  # every block matmul found its entry
    from tests.support import llama_peer

    r = llama_peer.llama_quantize_file(smollm2_f32, ref, ftype_id, 2, imatrix=path)
    assert r["rc"] == 0, r["log"][-2000:]
    assert _sha(ours) == _sha(ref)
