"""Linear4bit: definition path, fast inference path, autograd to the input, state_dict layout, errors."""

import copy

import pytest
import torch

from edgequant.bnb import dequantize_4bit
from edgequant.errors import FormatError, ShapeError
from edgequant.nn import Linear4bit


@pytest.fixture
def layer():
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 96)
    return lin, Linear4bit.from_linear(lin, quant_type="nf4", compress_statistics=True)


def test_dequantize_matches_functional(layer):
    _, q = layer
    w = q.dequantize()
    assert w.shape == (96, 256)
    assert torch.equal(w, dequantize_4bit(q.weight, q.quant_state))


def test_train_path_is_definition_and_eval_path_close(layer):
    _, q = layer
    x = torch.randn(3, 5, 256)
    q.train()
    y_train = q(x)
    assert torch.equal(y_train, torch.nn.functional.linear(x, q.dequantize(), q.bias))
    q.eval()
    with torch.no_grad():
        for rows in (1, 3, 17):  # gemv kernel and tiled path
            xs = x.reshape(-1, 256)[:rows]
            ref = torch.nn.functional.linear(xs, q.dequantize(), q.bias)
            assert torch.allclose(q(xs), ref, rtol=1e-5, atol=1e-5)


def test_grad_flows_to_input_not_weight(layer):
    _, q = layer
    x = torch.randn(4, 256, requires_grad=True)
    q(x).square().sum().backward()
    x2 = x.detach().clone().requires_grad_()
    torch.nn.functional.linear(x2, q.dequantize(), q.bias.detach()).square().sum().backward()
    assert torch.allclose(x.grad, x2.grad, rtol=1e-6, atol=1e-6)
    assert not q.weight.requires_grad
    assert q.bias.grad is not None


def test_bf16_compute():
    torch.manual_seed(0)
    q = Linear4bit.from_linear(torch.nn.Linear(64, 32), quant_type="fp4", compute_dtype=torch.bfloat16)
    x = torch.randn(2, 64)
    y = q(x)
    ref = torch.nn.functional.linear(x.bfloat16(), q.dequantize().bfloat16(), q.bias.bfloat16()).float()
    assert y.dtype == torch.float32
    assert torch.equal(y, ref)


def test_state_dict_roundtrip_and_layout(layer):
    _, q = layer
    sd = q.state_dict()
    assert sd["weight"].shape == (96 * 256 // 2, 1)
    assert "weight.quant_state.bitsandbytes__nf4" in sd
    fresh = Linear4bit(256, 96, quant_type="fp4", compress_statistics=False)
    fresh.load_state_dict(sd)
    assert fresh.quant_type == "nf4"
    assert torch.equal(fresh.dequantize(), q.dequantize())


def test_loading_other_layouts_fails_with_layer_name():
    model = torch.nn.Sequential(Linear4bit(64, 32, quant_type="nf4"))
    with pytest.raises(FormatError, match=r"^0: the state_dict holds a float weight"):
        model.load_state_dict(torch.nn.Sequential(torch.nn.Linear(64, 32)).state_dict())
    other = Linear4bit(64, 48, quant_type="nf4").state_dict()
    with pytest.raises(ShapeError, match="does not fit"):
        model.load_state_dict({f"0.{k}": v for k, v in other.items()})


def test_bad_shapes():
    q = Linear4bit(64, 32)
    with pytest.raises(ShapeError, match="in_features 64"):
        q(torch.randn(2, 63))
    with pytest.raises(ShapeError):
        q.set_weight(torch.randn(32, 65))


@pytest.mark.parametrize(("fin", "bs"), [(100, 64), (96, 64), (64, 128)])
def test_eval_kernel_for_rows_that_straddle_blocks(fin, bs):
    torch.manual_seed(fin)
    lin = torch.nn.Linear(fin, 7)
    q = Linear4bit.from_linear(lin, quant_type="fp4", blocksize=bs, compress_statistics=False).eval()
    with torch.no_grad():
        for rows in (1, 20):
            x = torch.randn(rows, fin)
            ref = torch.nn.functional.linear(x, q.dequantize(), q.bias)
            torch.testing.assert_close(q(x), ref, rtol=1e-5, atol=1e-6)


def test_batch1_kernel_sees_a_replaced_or_rewritten_weight():
    """The layer keeps the batch-1..8 kernel's pointers (``_gemv_plan``); a new weight, a loaded state dict
    and an in-place write to the packed bytes must all reach the next forward."""
    g = torch.Generator().manual_seed(3)
    a, b = (torch.nn.Linear(128, 40, bias=False) for _ in range(2))
    for lin in (a, b):
        lin.weight.data = torch.randn(40, 128, generator=g)
    x = torch.randn(1, 128, generator=g)
    ref_a, ref_b = (Linear4bit.from_linear(lin).eval() for lin in (a, b))
    layer = Linear4bit.from_linear(a).eval()
    with torch.no_grad():
        assert torch.equal(layer(x), ref_a(x))
        layer.set_weight(b.weight.data)
        assert torch.equal(layer(x), ref_b(x))
        layer.load_state_dict(ref_a.state_dict())
        assert torch.equal(layer(x), ref_a(x))
        layer.weight.data.copy_(ref_b.weight.data)  # b's codes under a's absmax, written in place
        fresh = copy.deepcopy(layer)  # new storage: a plan of its own
        assert torch.equal(layer(x), fresh(x))
        assert not torch.equal(layer(x), ref_a(x))
