"""quantize_4bit / dequantize_4bit: packing, rounding, double quantization, bits per parameter, errors."""

import numpy as np
import pytest
import torch

from edgequant.bnb import (
    bits_per_parameter,
    dequantize_4bit,
    get_4bit_type,
    measured_bits_per_parameter,
    quantize_4bit,
)
from edgequant.errors import ConfigError, NonFiniteError, ShapeError


def _definition(x: torch.Tensor, blocksize: int, quant_type: str) -> torch.Tensor:
    """Reference written from the definition with torch ops (bucketize over sorted midpoints)."""
    table = get_4bit_type(quant_type)
    order = torch.argsort(table, stable=True)
    mids = (table[order[:-1]] + table[order[1:]]) / 2
    flat = x.reshape(-1).float()
    n = flat.numel()
    out = []
    for s in range(0, n, blocksize):
        blk = flat[s : s + blocksize]
        am = blk.abs().max()
        t = blk * (1.0 / am.clamp(min=1e-38)) if blk.numel() == blocksize else blk / am.clamp(min=1e-38)
        codes = order[torch.bucketize(t.clamp(-1, 1), mids)]
        a = am if blk.numel() == blocksize else am.clamp(min=1e-38)
        out.append(table[codes] * a)
    return torch.cat(out).reshape(x.shape)


def test_packing_high_nibble_first():
    a = torch.tensor([1.0, -1.0, 0.0, 0.5] + [0.0] * 60)
    packed, st = quantize_4bit(a, blocksize=64, quant_type="nf4")
    assert packed.shape == (32, 1)
    assert packed.dtype == torch.uint8
    assert packed[0, 0] == 0xF0
    assert packed[1, 0] == 0x7C
    assert st.shape == (64,)
    assert st.absmax.dtype == torch.float32


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize(("shape", "bs"), [((33, 65), 64), ((7,), 32), ((128, 96), 128), ((5, 4096), 4096)])
def test_roundtrip_equals_definition(quant_type, shape, bs):
    torch.manual_seed(1)
    x = torch.randn(shape)
    packed, st = quantize_4bit(x, blocksize=bs, quant_type=quant_type)
    assert packed.shape == ((x.numel() + 1) // 2, 1)
    assert torch.equal(dequantize_4bit(packed, st), _definition(x, bs, quant_type))


def test_tie_goes_to_lower_code():
    table = get_4bit_type("nf4")
    mid = (table[9] + table[10]) / 2
    x = torch.zeros(64)
    x[0] = 1.0
    x[1] = mid
    x[2] = torch.nextafter(mid, torch.tensor(2.0))
    packed, _ = quantize_4bit(x, blocksize=64, quant_type="nf4")
    assert int(packed[0, 0]) & 15 == 9
    assert int(packed[1, 0]) >> 4 == 10


def test_fp4_zero_patterns():
    x = torch.zeros(64)
    x[0] = 1.0
    x[1] = 1e-4  # tiny positive -> the "-0" pattern 0b1000
    x[2] = 0.0  # exact zero -> 0b0000
    packed, st = quantize_4bit(x, blocksize=64, quant_type="fp4")
    assert int(packed[0, 0]) & 15 == 0b1000
    assert int(packed[1, 0]) >> 4 == 0
    out = dequantize_4bit(packed, st)
    assert out[1] == 0
    assert torch.signbit(out[1]) == torch.signbit(torch.tensor(0.0))


def test_zero_tail_block_stores_floor():
    x = torch.cat([torch.randn(64), torch.zeros(10)])
    _, st = quantize_4bit(x, blocksize=64, quant_type="nf4")
    assert st.absmax[1] == torch.tensor(1e-38, dtype=torch.float32)


def test_double_quant_state_and_bits():
    torch.manual_seed(0)
    w = torch.randn(512, 1024)
    p1, s1 = quantize_4bit(w, blocksize=64, quant_type="nf4")
    p2, s2 = quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    assert torch.equal(p1, p2)
    assert s2.absmax.dtype == torch.uint8
    assert s2.absmax.shape == (8192,)
    assert s2.state2.absmax.shape == (32,)
    assert s2.state2.blocksize == 256
    assert s2.offset.dim() == 0
    rel = (dequantize_4bit(p2, s2) - dequantize_4bit(p1, s1)).abs().max() / w.abs().max()
    assert 0 < rel < 0.02
    # QLoRA paper: 32/64 = 0.5 bit/param -> 8/64 + 32/(64*256) = 0.127
    assert bits_per_parameter(64) - 4 == 0.5
    assert round(bits_per_parameter(64, True) - 4, 3) == 0.127
    assert measured_bits_per_parameter(p1, s1) == 4.5
    assert round(measured_bits_per_parameter(p2, s2) - 4, 3) == 0.127


def test_quant_storage_view():
    w = torch.randn(64, 64)
    p, st = quantize_4bit(w, quant_type="nf4", quant_storage=torch.bfloat16)
    assert p.dtype == torch.bfloat16
    assert p.shape == (1024, 1)
    assert torch.equal(dequantize_4bit(p, st), dequantize_4bit(*quantize_4bit(w, quant_type="nf4")))


def test_bad_input_errors():
    with pytest.raises(ConfigError, match="blocksize=48"):
        quantize_4bit(torch.randn(96), blocksize=48)
    with pytest.raises(ConfigError, match="quant_type"):
        quantize_4bit(torch.randn(96), quant_type="int4")
    w = torch.randn(8, 64)
    w[3, 5] = float("nan")
    with pytest.raises(NonFiniteError, match=r"layer1\.weight: element \(3, 5\)"):
        quantize_4bit(w, name="layer1.weight")
    p, st = quantize_4bit(torch.randn(8, 64))
    with pytest.raises(ShapeError, match="do not fit"):
        dequantize_4bit(p[:10], st)
    with pytest.raises(ConfigError):
        quantize_4bit(torch.randint(0, 3, (64,)))


def test_threads_do_not_change_bytes():
    x = torch.randn(300, 257)
    a = quantize_4bit(x, blocksize=64, threads=1)
    b = quantize_4bit(x, blocksize=64, threads=3)
    assert torch.equal(a[0], b[0])
    assert torch.equal(a[1].absmax, b[1].absmax)
    assert np.array_equal(dequantize_4bit(*a, threads=1).numpy(), dequantize_4bit(*b, threads=3).numpy())


def test_bnb_cpu_compatible_dequant_reproduces_the_avx512_misindexing(monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(100, 48)
    packed, st = quantize_4bit(x, blocksize=64, quant_type="nf4")
    definition = dequantize_4bit(packed, st)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    buggy = dequantize_4bit(packed, st, bnb_cpu_compatible=True)
    # bnb's AVX-512 kernel: block = row * (48 // 64) + col // 64 = 0 for every element
    codes = definition / st.absmax.repeat_interleave(64)[:4800].reshape(100, 48)
    assert torch.allclose(buggy, codes * st.absmax[0], rtol=1e-6, atol=0)
    assert (buggy - definition).abs().max() > 0.5
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert torch.equal(dequantize_4bit(packed, st, bnb_cpu_compatible=True), definition)
