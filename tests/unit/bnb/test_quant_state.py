"""QuantState packing: bnb's keys, JSON order and round trip."""

import json

import torch

from edgequant.bnb import QuantState, quantize_4bit


def test_packed_keys_and_json_order():
    torch.manual_seed(0)
    _, st = quantize_4bit(torch.randn(128, 256), blocksize=64, quant_type="nf4", compress_statistics=True)
    d = st.as_dict(packed=True)
    assert sorted(d) == sorted(
        ["absmax", "quant_map", "nested_absmax", "nested_quant_map", "quant_state.bitsandbytes__nf4"]
    )
    text = bytes(d["quant_state.bitsandbytes__nf4"].numpy()).decode()
    assert text.startswith('{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [128, 256], ')
    assert list(json.loads(text)) == [
        "quant_type",
        "blocksize",
        "dtype",
        "shape",
        "nested_blocksize",
        "nested_dtype",
        "nested_offset",
    ]
    back = QuantState.from_dict({f"weight.{k}": v for k, v in d.items()})
    assert back.equal(st)


def test_plain_state_roundtrip():
    _, st = quantize_4bit(torch.randn(10, 64, dtype=torch.bfloat16), quant_type="fp4")
    d = st.as_dict(packed=True)
    assert "quant_state.bitsandbytes__fp4" in d
    assert "nested_absmax" not in d
    back = QuantState.from_dict(d)
    assert back.equal(st)
    assert back.dtype == torch.bfloat16
