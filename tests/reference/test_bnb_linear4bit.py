"""nn.Linear4bit against bitsandbytes' Linear4bit: state_dict identical, checkpoints both ways, forward."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from edgequant.nn import Linear4bit

bnb = pytest.importorskip("bitsandbytes")
pytestmark = pytest.mark.reference


@pytest.fixture(autouse=True, scope="module")
def _no_dynamo():
    import torch._dynamo

    old = torch._dynamo.config.disable
    torch._dynamo.config.disable = True
    yield
    torch._dynamo.config.disable = old


def _bnb_layer(lin, **kw):
    b = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None, **kw)
    b.load_state_dict(lin.state_dict())
    return b.to("cpu")


@pytest.mark.parametrize(("fin", "fout"), [(256, 128), (96, 32), (100, 7), (64, 64)])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dq", [False, True])
def test_state_dict_and_forward(fin, fout, quant_type, dq):
    torch.manual_seed(fin + fout)
    lin = torch.nn.Linear(fin, fout)
    ours = Linear4bit.from_linear(lin, quant_type=quant_type, compress_statistics=dq, bnb_cpu_compatible=True)
    theirs = _bnb_layer(lin, quant_type=quant_type, compress_statistics=dq)
    sd_o, sd_t = ours.state_dict(), theirs.state_dict()
    assert sorted(sd_o) == sorted(sd_t)
    for k in sd_t:
        assert sd_o[k].dtype == sd_t[k].dtype, k
        assert torch.equal(sd_o[k], sd_t[k]), k
    x = torch.randn(3, fin)
    ours.train()
    theirs.train()
    assert torch.equal(ours(x), theirs(x))


def test_checkpoint_both_ways(tmp_path):
    torch.manual_seed(0)
    lin = torch.nn.Linear(192, 64)
    theirs = _bnb_layer(lin, quant_type="nf4", compress_statistics=True)
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, tmp_path / "bnb.safetensors")
    ours = Linear4bit(192, 64, quant_type="fp4")
    ours.load_state_dict(load_file(tmp_path / "bnb.safetensors"))
    x = torch.randn(2, 192)
    ours.train()
    theirs.train()
    assert torch.equal(ours(x), theirs(x))
    # and back: edgequant -> safetensors -> bnb (bnb loads prequantized weights through Params4bit)
    mine = Linear4bit.from_linear(torch.nn.Linear(192, 64), quant_type="nf4", compress_statistics=True)
    save_file({k: v.contiguous() for k, v in mine.state_dict().items()}, tmp_path / "eq.safetensors")
    sd = load_file(tmp_path / "eq.safetensors")
    qs = {k[len("weight.") :]: v for k, v in sd.items() if k.startswith("weight.")}
    w = bnb.nn.Params4bit.from_prequantized(sd["weight"], qs, device="cpu")
    target = bnb.nn.Linear4bit(192, 64, quant_type="nf4")
    target.weight = w
    target.bias = torch.nn.Parameter(sd["bias"])
    target.train()
    mine.train()
    assert torch.equal(target(x), mine(x))
