"""edgequant's Linear4bit / Linear8bitLt under bitsandbytes' module contract (issue 16): meta construction,
quantization on ``.to(device)`` or first use through ``Params4bit`` / ``Int8Params``, ``quant_state`` /
``state``, bnb's state-dict keys and refusals, and the bnb-default classes of ``edgequant.nn.bnb_dropin``."""

from __future__ import annotations

import io

import pytest
import torch

from edgequant.bnb import dequantize_4bit, quantize_4bit
from edgequant.bnb.matmul_state import MatmulLtState
from edgequant.bnb.params import Int8Params, NotQuantizedError, Params4bit
from edgequant.errors import FormatError
from edgequant.nn import Linear4bit, Linear8bitLt, bnb_dropin
from edgequant.nn.linear8bit import DEQ_SCALE, llm_int8_forward


def _linear(fin=128, fout=32, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(fin, fout)


def test_linear4bit_on_meta_quantizes_on_to():
    lin = _linear()
    layer = bnb_dropin.Linear4bit(128, 32, quant_type="nf4", device="meta")
    assert layer.weight.device.type == "meta"
    assert not layer.is_quantized
    assert layer.quant_state is None
    layer.weight = Params4bit(lin.weight.detach(), quant_type="nf4")
    layer.bias = torch.nn.Parameter(lin.bias.detach())
    layer = layer.to("cpu")
    packed, state = quantize_4bit(
        lin.weight.detach(), blocksize=64, compress_statistics=True, quant_type="nf4"
    )
    assert layer.is_quantized
    assert layer.quant_state == state
    assert torch.equal(layer.weight.data, packed)
    assert layer.quant_type == "nf4"
    assert layer.blocksize == 64
    assert layer.compress_statistics
    x = torch.randn(3, 128)
    ref = torch.nn.functional.linear(x, dequantize_4bit(packed, state), lin.bias)
    torch.testing.assert_close(layer.train()(x), ref, rtol=0, atol=0)


def test_linear4bit_lazy_layer_quantizes_at_first_use_and_loads_floats():
    lin = _linear(seed=1)
    layer = bnb_dropin.Linear4bit(128, 32, quant_type="fp4")
    assert not layer.is_quantized
    assert layer.weight.dtype == torch.float32
    assert "weight.absmax" not in layer.state_dict()  # not quantized: the float weight alone, as bnb
    layer.load_state_dict(lin.state_dict())  # bnb's flow: float checkpoint, then quantize
    x = torch.randn(2, 128)
    y = layer.train()(x)
    eager = Linear4bit.from_linear(lin, quant_type="fp4")
    assert layer.is_quantized
    assert torch.equal(layer.weight.data, eager.weight.data)
    assert torch.equal(y, eager.train()(x))
    with pytest.raises(FormatError, match="float weight"):  # a quantized layer refuses floats (edgequant)
        layer.load_state_dict(lin.state_dict())


def test_linear4bit_state_dict_round_trip_into_meta_layer_and_pickle():
    src = Linear4bit.from_linear(_linear(seed=2), quant_type="nf4", blocksize=128)
    sd = src.state_dict()
    assert sd["weight"].shape == (128 * 32 // 2, 1)
    assert "weight.quant_state.bitsandbytes__nf4" in sd
    dst = bnb_dropin.Linear4bit(128, 32, device="meta")
    dst.load_state_dict(sd, assign=True)  # torch's way into a meta layer (the bias too)
    assert dst.quant_state == src.quant_state
    assert dst.blocksize == 128
    assert dst.quant_type == "nf4"
    x = torch.randn(4, 128)
    assert torch.equal(dst.eval()(x), src.eval()(x))
    buf = io.BytesIO()
    torch.save(src, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False)  # the weight comes back a Parameter with the attributes
    assert torch.equal(back.eval()(x), src(x))
    assert isinstance(back.weight, Params4bit)
    assert back.quant_state == src.quant_state


def test_linear8bit_state_and_refusal_before_quantization():
    lin = _linear(seed=3)
    ref = Linear8bitLt.from_linear(lin, threshold=6.0)
    sd = ref.state_dict()
    assert sorted(sd) == ["SCB", "bias", "weight", "weight_format"]
    lazy = bnb_dropin.Linear8bitLt(128, 32, has_fp16_weights=False, threshold=6.0)
    assert isinstance(lazy.state, MatmulLtState)
    assert lazy.state.CB is None
    assert lazy.state.use_pool
    assert isinstance(lazy.weight, Int8Params)
    assert lazy.weight.dtype == torch.float32
    with pytest.raises(RuntimeError, match="Loading a quantized checkpoint into non-quantized Linear8bitLt"):
        lazy.load_state_dict(sd)
    with pytest.raises(NotQuantizedError):
        lazy.load_state_dict(sd)
    assert issubclass(NotQuantizedError, FormatError)
    lazy = lazy.to("cpu")
    assert lazy.is_quantized
    assert lazy.state.CB.data_ptr() == lazy.weight.data_ptr()
    lazy.load_state_dict(sd)
    assert torch.equal(lazy.weight.data, ref.weight.data)
    assert torch.equal(lazy.SCB, ref.SCB)
    assert torch.equal(lazy.state.SCB, ref.SCB)
    assert lazy.state.CB.data_ptr() == lazy.weight.data_ptr()
    x = torch.randn(5, 128) * 3
    with torch.no_grad():
        assert torch.equal(lazy.eval()(x), ref.eval()(x))
    assert not lazy.state.is_training


def test_linear8bit_on_meta_quantizes_rows_on_to():
    w = _linear(seed=4).weight.detach()
    layer = Linear8bitLt(128, 32, bias=False, device="meta")
    assert not layer.is_quantized
    assert layer.SCB is None
    layer.weight = Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False)
    layer.to("cpu")
    w16 = w.half()
    scb = w16.abs().amax(1).float()  # bnb: SCB = max |W16| per row, CB = round(W16 * 127 / SCB)
    cb = torch.round(w16 * (127.0 / scb.unsqueeze(-1))).to(torch.int8)
    assert torch.equal(layer.weight.data, cb)
    assert torch.equal(layer.SCB, scb)
    assert torch.equal(layer.state.CB, cb)


def test_bnb_defaults_and_tied_float_weight():
    layer = bnb_dropin.Linear8bitLt(8, 8, bias=False)
    assert layer.has_fp16_weights
    assert layer.threshold == 0.0
    assert not layer.state.use_pool
    own = Linear8bitLt(8, 8, bias=False)
    assert not own.has_fp16_weights
    assert own.threshold == 6.0
    assert own.is_quantized
    tied = bnb_dropin.Linear8bitLt(8, 8, bias=False, has_fp16_weights=False)
    tied.weight = torch.nn.Parameter(torch.randn(8, 8))
    sd = tied.state_dict()
    assert sorted(sd) == ["weight"]  # no SCB / weight_format for a float weight, as bnb
    sd["SCB"] = torch.ones(8)
    with pytest.raises(RuntimeError, match="non-quantized Linear8bitLt"):
        tied.load_state_dict(sd, strict=False)
    nf4 = bnb_dropin.LinearNF4(64, 16)
    assert nf4.quant_type == "nf4"
    assert not nf4.is_quantized
    assert bnb_dropin.LinearFP4(64, 16).quant_type == "fp4"


def test_llm_int8_custom_op_equals_the_eager_forward():
    from edgequant.nn.linear8bit_op import llm_int8_linear

    layer = Linear8bitLt.from_linear(_linear(seed=5), threshold=2.0)
    x = (torch.randn(6, 128) * 2).requires_grad_(True)
    y = llm_int8_linear(x, layer.weight.data, layer.SCB, layer.bias, 2.0)
    ref, cols = llm_int8_forward(x.detach(), layer.weight.data, layer.SCB, layer.bias, 2.0)
    assert cols.numel() > 0
    assert torch.equal(y, ref)
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.equal(x.grad, g @ (layer.weight.data * layer.SCB.unsqueeze(-1) * DEQ_SCALE))
