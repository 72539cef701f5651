"""8-bit blockwise: the definition (nearest code) vs bnb's CPU rounding (65536-step grid), nesting, errors."""

import pytest
import torch

from edgequant.bnb import QuantState, create_dynamic_map, dequantize_blockwise, quantize_blockwise
from edgequant.errors import ConfigError, FormatError


def test_zero_in_nonzero_block_definition_vs_bnb_cpu():
    x = torch.tensor([1.0, 0.0, -0.0, 1e-9, -1e-5] + [0.5] * 27)
    q_def, _ = quantize_blockwise(x, blocksize=32)
    q_cpu, _ = quantize_blockwise(x, blocksize=32, bnb_cpu_compatible=True)
    # the definition keeps zero exact; bnb's CPU grid has no 0 and lands on codes 131 / 123
    assert q_def[1:4].tolist() == [127, 127, 127]
    assert q_def[4] == 124
    assert q_cpu[1:5].tolist() == [131, 131, 131, 123]


def test_all_zero_block():
    x = torch.zeros(64)
    q_def, s_def = quantize_blockwise(x, blocksize=64)
    q_cpu, s_cpu = quantize_blockwise(x, blocksize=64, bnb_cpu_compatible=True)
    assert s_def.absmax[0] == 0
    assert s_cpu.absmax[0] == 0
    assert q_cpu.unique().tolist() == [0]
    assert q_def.unique().tolist() == [0]  # as bnb 0.50.2 stores it (issue 17), not the zero code 127
    assert dequantize_blockwise(q_cpu, s_cpu).abs().max() == 0
    assert dequantize_blockwise(q_def, s_def).abs().max() == 0
    q_tail, s_tail = quantize_blockwise(torch.zeros(10), blocksize=64)  # a short all-zero block: not 1e-38
    assert s_tail.absmax.tolist() == [0.0]
    assert q_tail.unique().tolist() == [0]


def test_definition_is_nearest_code_and_modes_rarely_differ():
    torch.manual_seed(0)
    x = torch.randn(64 * 1024)
    q, st = quantize_blockwise(x, blocksize=256)
    code = create_dynamic_map()
    am = st.absmax.repeat_interleave(256)
    t = (x * (1.0 / am)).clamp(-1, 1)
    err_chosen = (code[q.long()] - t).abs()
    err_best = (code[None, :] - t[:4096, None]).abs().min(1).values
    assert torch.equal(err_chosen[:4096], err_best)
    q_cpu, _ = quantize_blockwise(x, blocksize=256, bnb_cpu_compatible=True)
    frac = (q != q_cpu).float().mean().item()
    assert 0 < frac < 0.005


@pytest.mark.parametrize("bnb_cpu", [False, True])
def test_nested_roundtrip(bnb_cpu):
    torch.manual_seed(0)
    x = torch.randn(100, 333)
    q, st = quantize_blockwise(x, blocksize=64, nested=True, bnb_cpu_compatible=bnb_cpu)
    assert st.nested
    assert st.absmax.dtype == torch.uint8
    assert st.state2.blocksize == 64
    out = dequantize_blockwise(q, st)
    assert out.shape == x.shape
    assert (out - x).abs().max() < 0.05 * x.abs().max()


def test_dtype_preserved():
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    q, st = quantize_blockwise(x, blocksize=64)
    assert q.shape == x.shape
    assert dequantize_blockwise(q, st).dtype == torch.bfloat16


def test_errors():
    with pytest.raises(ConfigError, match="blocksize=100"):
        quantize_blockwise(torch.randn(300), blocksize=100)
    with pytest.raises(FormatError, match=r"layer\.weight"):
        QuantState.from_dict({"absmax": torch.zeros(2)}, name="layer.weight")
