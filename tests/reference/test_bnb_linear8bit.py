"""nn.Linear8bitLt against bitsandbytes' LLM.int8 (eval): weights, state_dict and outputs bit-identical.

K <= 1024 keeps bnb's CPU int32 matmul (an fp32 matmul cast to int32 without AVX-512) exact, like ours.
"""

from __future__ import annotations

import logging

import pytest
import torch

from edgequant.nn import Linear8bitLt

bnb = pytest.importorskip("bitsandbytes")
pytestmark = pytest.mark.reference
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


@pytest.mark.parametrize(("fin", "fout"), [(256, 128), (96, 32), (100, 7), (1024, 64)])
@pytest.mark.parametrize("threshold", [6.0, 0.0, 2.0])
def test_llm_int8_bit_identical(fin, fout, threshold):
    torch.manual_seed(fin * 7 + fout)
    lin = torch.nn.Linear(fin, fout)
    ours = Linear8bitLt.from_linear(lin, threshold=threshold).eval()
    theirs = bnb.nn.Linear8bitLt(fin, fout, has_fp16_weights=False, threshold=threshold)
    theirs.load_state_dict(lin.state_dict())
    theirs = theirs.to("cpu").eval()
    sd_o, sd_t = ours.state_dict(), theirs.state_dict()
    assert sorted(sd_o) == sorted(sd_t)
    for k in sd_t:
        assert torch.equal(sd_o[k], sd_t[k]), k
    for shape in [(5, fin), (1, fin), (2, 3, fin)]:
        x = torch.randn(shape) * 3
        with torch.no_grad():
            assert torch.equal(ours(x), theirs(x)), shape
    loaded = Linear8bitLt(fin, fout, threshold=threshold).eval()
    loaded.load_state_dict(sd_t)
    assert torch.equal(loaded(x), ours(x))
