"""transformers' 4-bit loading path with edgequant in bitsandbytes' place (issue 16): same model, same result.

``from_pretrained(..., quantization_config=BitsAndBytesConfig(load_in_4bit=True))`` on a tiny Llama built in
code, once with bitsandbytes and once with ``edgequant.bnb.dropin`` (each in its own process). The packed NF4
weights are the same bytes; the logits agree to float32 summation order (edgequant's tiled kernel vs bnb's
dequantize + F.linear); the double-quantized absmax codes differ in at most a few places (nearest code vs
bnb's 65536-step CPU grid).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("bitsandbytes")
pytest.importorskip("transformers")
pytestmark = [pytest.mark.reference, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[1] / "support" / "bnb_dropin_transformers.py"


def _run(mode: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{mode}.pt"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), mode, str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=False)


def test_from_pretrained_load_in_4bit_with_edgequant(tmp_path):
    ref, got = _run("bnb", tmp_path), _run("edgequant", tmp_path)
    assert got["param_class"] == "edgequant.bnb.params.Params4bit"
    assert got["state_class"] == "edgequant.bnb.quant_state.QuantState"
    assert ref["param_class"] == "bitsandbytes.nn.modules.Params4bit"
    assert torch.equal(got["weight"], ref["weight"])
    assert (got["absmax"].int() - ref["absmax"].int()).abs().max() <= 1
    torch.testing.assert_close(got["logits"], ref["logits"], rtol=1e-3, atol=2e-4)  # measured 5.2e-5
