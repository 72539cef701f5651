"""nn.Linear4bit against bitsandbytes' Linear4bit: state_dict identical, checkpoints both ways, forward.

bnb's forward follows its definition (``F.linear(x, dequantize_4bit(W), bias)``) except on CPUs where its
native dequantization misindexes blocks (probed in ``conftest.py``): there it equals edgequant's emulation of
that bug (``bnb_cpu_compatible=True``) and edgequant's layer keeps the definition. The eval path of
AVX512-BF16 CPUs (a bf16 GEMM) is compared with its own bf16 model in ``test_bf16_eval_kernel``.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from edgequant.bnb import dequantize_4bit
from edgequant.bnb.fourbit import bnb_dequant4bit_is_misindexed
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
def test_state_dict_and_forward(fin, fout, quant_type, dq, bnb_paths, fake_torch_avx512):
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
    if not bnb_dequant4bit_is_misindexed(
        (fout, fin), 64, torch.float32, avx512=bnb_paths.dequant4bit_misindexes
    ):
        assert torch.equal(ours(x), theirs(x))
        return
    # bnb's native dequantization misindexes this shape here: it equals edgequant's emulation of the bug,
    # and edgequant's layer keeps the definition
    fake_torch_avx512(True)
    emulated = dequantize_4bit(ours.weight.data, ours.quant_state, bnb_cpu_compatible=True)
    assert not torch.equal(emulated, ours.dequantize())
    assert torch.equal(theirs(x), torch.nn.functional.linear(x, emulated, ours.bias))
    assert torch.equal(ours(x), torch.nn.functional.linear(x, ours.dequantize(), ours.bias))


def test_misindexing_probe_agrees_with_the_emulation(bnb_paths, fake_torch_avx512):
    """The probed fact, not torch's CPU report, decides the emulation: bnb's own dequantization of a (32, 96)
    weight equals edgequant's compat dequantization under the probed setting, bit for bit."""
    torch.manual_seed(1)
    w = torch.randn(32, 96)
    packed, state = bnb.functional.quantize_4bit(w, blocksize=64, quant_type="nf4")
    ours = Linear4bit.from_linear(
        torch.nn.Linear(96, 32, bias=False),
        quant_type="nf4",
        compress_statistics=False,
        bnb_cpu_compatible=True,
    )
    ours.set_weight(w)
    assert torch.equal(ours.weight.data.reshape(-1), packed.reshape(-1))
    fake_torch_avx512(bnb_paths.dequant4bit_misindexes)
    got = dequantize_4bit(ours.weight.data, ours.quant_state, bnb_cpu_compatible=True)
    assert torch.equal(got, bnb.functional.dequantize_4bit(packed, state))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_bf16_eval_kernel(quant_type, bnb_paths):
    """AVX512-BF16 CPUs only: bnb's eval forward without grad repacks the weight and runs a bf16 GEMM. Its
    output is within 2 bf16 ulps of ``bf16(bf16(x) @ bf16(table[code] * bf16(absmax))^T)`` built from
    edgequant's dequantization (the order of the bf16 kernel's float32 sums is not reproducible), and it
    differs from the float32 definition that edgequant's layer computes by bf16 rounding only."""
    if not bnb_paths.eval_4bit_uses_bf16_kernel:
        pytest.skip(
            "bitsandbytes' bf16 eval kernel runs only on CPUs with AVX512-BF16 (probed: not this one)"
        )
    torch.manual_seed(2)
    lin = torch.nn.Linear(256, 64, bias=False)
    ours = Linear4bit.from_linear(
        lin, quant_type=quant_type, compress_statistics=False, bnb_cpu_compatible=True
    )
    theirs = _bnb_layer(lin, quant_type=quant_type, compress_statistics=False)
    ours.eval()
    theirs.eval()
    x = torch.randn(4, 256)
    with torch.no_grad():
        got = theirs(x)
        exact = ours(x)
    assert getattr(theirs.weight.quant_state, "packing_format_for_cpu", False), (
        "bnb did not take the bf16 path"
    )
    table = bnb.functional.get_4bit_type(quant_type).float()
    b = ours.weight.data.reshape(-1).to(torch.int64)
    codes = torch.stack([b >> 4, b & 15], dim=1).reshape(64, 256)
    absmax_bf16 = ours.quant_state.absmax.to(torch.bfloat16).float().repeat_interleave(64).reshape(64, 256)
    w_bf16 = (table[codes] * absmax_bf16).to(torch.bfloat16).float()
    model = (x.to(torch.bfloat16).float() @ w_bf16.T).to(torch.bfloat16).float()
    ulp = torch.finfo(torch.bfloat16).eps * model.abs().clamp_min(model.abs().max() * 2**-8)
    assert ((got.float() - model).abs() <= 2 * ulp).all()
    rel = (got - exact).norm() / exact.norm()
    assert 0 < rel < 2e-2


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
