"""Params4bit / Int8Params: bitsandbytes' quantize-on-.to() parameters (meta device flow, state, copies)."""

import copy
import pickle

import pytest
import torch

from edgequant.bnb import QuantState, dequantize_4bit, quantize_4bit
from edgequant.bnb.params import Int8Params, Params4bit


def test_params4bit_meta_then_to_quantizes_once():
    with torch.device("meta"):
        p = Params4bit(torch.empty(32, 64), quant_type="nf4")
    assert p.is_meta
    assert p.bnb_quantized is False
    p = p.to("meta")  # meta stays unquantized
    assert p.bnb_quantized is False
    torch.manual_seed(0)
    w = torch.randn(32, 64)
    p = Params4bit(w, quant_type="nf4", blocksize=32, compress_statistics=False)
    q = p.to("cpu")
    assert q.bnb_quantized is True
    assert q.dtype == torch.uint8
    assert q.shape == (32 * 64 // 2, 1)
    ref_packed, ref_state = quantize_4bit(w, blocksize=32, quant_type="nf4")
    assert torch.equal(q.data, ref_packed)
    assert q.quant_state.equal(ref_state)
    again = q.to("cpu")  # already quantized: only moved
    assert torch.equal(again.data, q.data)
    assert again.quant_state is q.quant_state
    assert torch.equal(dequantize_4bit(again.data, again.quant_state), dequantize_4bit(ref_packed, ref_state))


def test_params4bit_defaults_are_bnbs_and_proxies():
    p = Params4bit(torch.randn(16, 64)).to("cpu")
    assert (p.quant_type, p.blocksize, p.compress_statistics) == ("fp4", 64, True)
    qs = p.quant_state
    assert torch.equal(p.absmax, qs.absmax)
    assert torch.equal(p.quant_map, qs.code)
    assert torch.equal(p.nested_absmax, qs.state2.absmax)
    assert p.nested_offset is qs.offset
    with pytest.raises(AttributeError, match="before quantization"):
        _ = Params4bit(torch.randn(4, 64)).absmax
    with pytest.raises(AttributeError, match="not nested"):
        _ = Params4bit(torch.randn(4, 64), compress_statistics=False).to("cpu").nested_absmax


def test_params4bit_copies_pickle_chunk_and_prequantized():
    torch.manual_seed(1)
    p = Params4bit(torch.randn(16, 64), quant_type="nf4").to("cpu")
    shallow, deep = copy.copy(p), copy.deepcopy(p)
    assert shallow.quant_state is p.quant_state
    assert deep.quant_state is not p.quant_state
    assert deep.quant_state == p.quant_state
    back = pickle.loads(pickle.dumps(p))
    assert back.bnb_quantized is True  # a plain Parameter carrying the attributes, as bnb's unpickles
    assert back.quant_state == p.quant_state
    assert torch.equal(back.data, p.data)
    chunks = torch.chunk(p, 2)
    assert all(isinstance(c, Params4bit) and c.quant_state is p.quant_state for c in chunks)
    sd = p.quant_state.as_dict(packed=True)
    pre = Params4bit.from_prequantized(p.data.clone(), sd, device="cpu")
    assert pre.bnb_quantized
    assert pre.quant_state == p.quant_state
    assert isinstance(pre.quant_state, QuantState)


def test_int8params_quantizes_rows_on_to():
    torch.manual_seed(2)
    w = torch.randn(8, 32)
    p = Int8Params(w.clone(), requires_grad=False).to("cpu")
    w16 = w.half()
    scb = w16.abs().max(dim=1).values.float()
    assert p.dtype == torch.int8
    assert torch.equal(p.SCB, scb)
    assert torch.equal(p.data, torch.round(w16 * (127.0 / scb[:, None])).to(torch.int8))
    assert torch.equal(p.CB, p.data)
    moved = p.to("cpu")
    assert torch.equal(moved.CB, p.data)
    assert torch.equal(moved.SCB, p.SCB)
    fp16 = Int8Params(w.clone(), has_fp16_weights=True).to("cpu")
    assert fp16.dtype == torch.float32
    with torch.device("meta"):
        meta = Int8Params(torch.empty(8, 32), requires_grad=False)
    assert meta.to("meta").dtype == torch.float32
    deep = copy.deepcopy(p)
    assert torch.equal(deep.SCB, p.SCB)
    assert deep.SCB is not p.SCB
