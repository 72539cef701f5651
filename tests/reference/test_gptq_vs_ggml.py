"""GPTQ-rounded blocks (edgequant.analysis.gptq) decoded by llama.cpp's ``to_float`` and by gguf-py.

Both peers must give edgequant's ``dequantize`` of the same bytes bit for bit, and those values must be the
levels GPTQ chose. Skipped when llama-cpp-python is not installed (``tests.support.ggml_peer.available()``).
"""

from __future__ import annotations

import numpy as np
import pytest

from edgequant.analysis.ggml_codes import supported_types
from edgequant.analysis.gptq import gptq_quantize, plain_levels
from edgequant.gguf.codecs import dequantize
from tests.support import ggml_peer

pytestmark = [
    pytest.mark.reference,
    pytest.mark.skipif(not ggml_peer.available(), reason="llama-cpp-python (libggml-base) not installed"),
]


def _case(n: int = 512, rows: int = 24):
    rng = np.random.default_rng(2026)
    x = rng.standard_normal((768, n)) * np.exp(0.7 * rng.standard_normal(n))
    w = (rng.standard_normal((rows, n)) * np.exp(0.5 * rng.standard_normal((rows, 1)))).astype(np.float32)
    return w, x.T @ x


@pytest.mark.parametrize("qtype", list(supported_types()))
def test_llamacpp_and_gguf_py_decode_gptq_blocks_as_edgequant(qtype):
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    w, h = _case()
    res = gptq_quantize(w, qtype, h, keep_better=False)
    ours = dequantize(res.raw, qtype, w.shape)
    peer = ggml_peer.ggml_dequantize(res.raw, qtype, w.shape)
    assert np.array_equal(ours.view(np.uint32), peer.view(np.uint32))
    py = gguf_dequantize(res.raw, GGMLQuantizationType[qtype]).reshape(w.shape).astype(np.float32)
    assert np.allclose(py, ours, rtol=1e-6, atol=0)  # gguf-py decodes in numpy with its own op order
    _, lv = plain_levels(w, qtype, np.diagonal(h).astype(np.float32))
    assert np.allclose(ours, lv.values(res.codes), rtol=2e-7, atol=1e-30)
    assert ggml_peer.validate_row_data(qtype, res.raw) is not False
