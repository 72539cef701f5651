"""Linear8bitLt: LLM.int8 decomposition (outliers at >= threshold), training, gradients, layout, errors."""

import pytest
import torch

from edgequant.errors import FormatError, NonFiniteError
from edgequant.nn import Linear8bitLt
from edgequant.nn.linear8bit import DEQ_SCALE, MM_SCALE


def _reference(x, layer):
    """Written from the definition with plain torch ops (fp32 matmul of small ints is exact here)."""
    cb, scb = layer.weight.data, layer.SCB
    a = x.half()
    out = a.abs() >= layer.threshold
    cols = torch.argwhere(out.any(0)).view(-1)
    a = a.masked_fill(out, 0)
    sca = a.abs().max(1).values.float()
    ca = torch.round(a * (127.0 / sca[:, None])).to(torch.int8)
    ca[:, cols] = 0
    acc = (ca.float() @ cb.float().T).to(torch.int32)
    y = acc * (sca[:, None] * scb[None, :]) * MM_SCALE + layer.bias
    wo = cb[:, cols] * scb[:, None] * DEQ_SCALE
    return torch.addmm(y, x[:, cols], wo.T), cols


@pytest.mark.parametrize("training", [False, True])
def test_mixed_decomposition_in_eval_and_training(training):
    torch.manual_seed(0)
    layer = Linear8bitLt.from_linear(torch.nn.Linear(128, 48))
    layer.train(training)
    x = torch.randn(6, 128)
    x[2, 7] = 6.0  # exactly at the threshold counts as an outlier
    x[4, 90] = -9.0
    y = layer(x)
    ref, cols = _reference(x, layer)
    assert cols.tolist() == [7, 90]
    assert torch.equal(layer.outlier_cols, cols)
    assert torch.equal(y, ref)
    exact = torch.nn.functional.linear(
        x, torch.nn.Linear(128, 48).weight * 0 + layer.dequantize(), layer.bias
    )
    assert (y - exact).abs().max() < 0.05


def test_gradients():
    torch.manual_seed(0)
    layer = Linear8bitLt.from_linear(torch.nn.Linear(64, 16))
    x = torch.randn(3, 5, 64, requires_grad=True)
    layer(x).sum().backward()
    expected = torch.ones(15, 16) @ layer.dequantize()
    assert torch.allclose(x.grad.reshape(15, 64), expected)
    assert layer.bias.grad is not None
    assert not layer.weight.requires_grad


def test_fp16_weights_train_the_float_weight():
    layer = Linear8bitLt(32, 8, has_fp16_weights=True)
    layer(torch.randn(4, 32)).sum().backward()
    assert layer.weight.dtype == torch.float32
    assert layer.weight.grad.shape == (8, 32)


def test_state_dict_layout_and_errors():
    layer = Linear8bitLt(64, 16)
    sd = layer.state_dict()
    assert sorted(sd) == ["SCB", "bias", "weight", "weight_format"]
    assert sd["weight"].dtype == torch.int8
    assert int(sd["weight_format"]) == 0
    other = Linear8bitLt(64, 16)
    other.load_state_dict(sd)
    assert torch.equal(other.weight, layer.weight)
    model = torch.nn.Sequential(Linear8bitLt(64, 16))
    with pytest.raises(FormatError, match=r"^0: expected bitsandbytes' Linear8bitLt layout"):
        model.load_state_dict(torch.nn.Sequential(torch.nn.Linear(64, 16)).state_dict())
    w = torch.randn(16, 64)
    w[1, 2] = float("inf")
    lin = torch.nn.Linear(64, 16)
    lin.weight.data = w
    with pytest.raises(NonFiniteError, match=r"blk\.ffn\.weight: element \(1, 2\)"):
        Linear8bitLt.from_linear(lin, name="blk.ffn")


@pytest.mark.parametrize("rows", [1, 9])
def test_int8_matmul_exact_at_the_extremes(rows):
    from edgequant.nn.linear8bit import int8_matmul

    a = torch.full((rows, 4096), 127, dtype=torch.int8)
    a[:, ::3] = -127
    w = torch.full((40, 4096), 127, dtype=torch.int8)
    w[::2, 5] = -128
    ref = (a.long() @ w.long().T).to(torch.int32)
    assert torch.equal(int8_matmul(a, w), ref)
