"""transformers' bitsandbytes loading paths with edgequant in bitsandbytes' place (issue 16): same model, same
result.

``from_pretrained(..., quantization_config=BitsAndBytesConfig(load_in_4bit=True | load_in_8bit=True))`` on a
tiny Llama built in code, with bitsandbytes, with ``edgequant.bnb.dropin`` (edgequant's functional API and
parameter classes under bnb's layers: "edgequant") and with ``edgequant.nn.bnb_dropin.substitute_modules()``
(edgequant's layer classes too: "modules"), each in its own process.

4-bit: the packed NF4 weights are the same bytes; the logits agree to float32 summation order (edgequant's
tiled kernel vs bnb's dequantize + F.linear; measured 5.2e-5); the double-quantized absmax codes differ in
at most one step (nearest code vs bnb's 65536-step CPU grid). 8-bit: int8 codes and SCB equal, logits
bit-identical (LLM.int8 in eval is edgequant's exact integer path = bnb's CPU path).
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


def _run(mode: str, bits: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{mode}_{bits}.pt"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), mode, bits, str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def bnb_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bnb")
    return {bits: _run("bnb", bits, tmp) for bits in ("4", "8")}


@pytest.mark.parametrize("mode", ["edgequant", "modules"])
def test_from_pretrained_load_in_4bit_with_edgequant(mode, bnb_runs, tmp_path):
    ref, got = bnb_runs["4"], _run(mode, "4", tmp_path)
    assert ref["param_class"] == "bitsandbytes.nn.modules.Params4bit"
    assert got["param_class"] == "edgequant.bnb.params.Params4bit"
    assert got["state_class"] == "edgequant.bnb.quant_state.QuantState"
    layer = "edgequant.nn.bnb_dropin" if mode == "modules" else "bitsandbytes.nn.modules"
    assert got["module_class"] == f"{layer}.Linear4bit"
    assert torch.equal(got["weight"], ref["weight"])
    assert (got["absmax"].int() - ref["absmax"].int()).abs().max() <= 1
    torch.testing.assert_close(got["logits"], ref["logits"], rtol=1e-3, atol=2e-4)  # measured 5.2e-5


@pytest.mark.parametrize("mode", ["edgequant", "modules"])
def test_from_pretrained_load_in_8bit_with_edgequant(mode, bnb_runs, tmp_path):
    ref, got = bnb_runs["8"], _run(mode, "8", tmp_path)
    assert ref["param_class"] == "bitsandbytes.nn.modules.Int8Params"
    assert got["param_class"] == "edgequant.bnb.params.Int8Params"
    if mode == "modules":
        assert got["module_class"] == "edgequant.nn.bnb_dropin.Linear8bitLt"
        assert got["state_class"] == "edgequant.bnb.matmul_state.MatmulLtState"
    assert got["weight"].dtype == torch.int8
    assert torch.equal(got["weight"], ref["weight"])
    assert torch.equal(got["scb"], ref["scb"])
    assert torch.equal(got["logits"], ref["logits"])
