"""edgequant's additions to the bnb functional API against bitsandbytes 0.50.2 on this CPU (issue 16).

Code maps, int8 vector-wise functions and the 4-bit matmul/gemv, bit for bit where bnb's CPU path is its
pure-PyTorch definition (every op here on a CPU without AVX512-BF16); the float32 fast matmul to 1e-5.
"""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch

from edgequant.bnb import blockwise, dropin, gemv, int8, maps

F = pytest.importorskip("bitsandbytes.functional")
bnb = pytest.importorskip("bitsandbytes")
pytestmark = pytest.mark.reference


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


@pytest.mark.parametrize("signed", [True, False])
def test_code_maps_bit_identical(signed):
    for total in range(2, 9):
        for exp_bits in range(1, total + 1):
            if (total == 8 and exp_bits == 7) or signed or total < 8:
                try:
                    ref = F.create_dynamic_map(signed, exp_bits, total)
                except AssertionError:
                    continue
                assert _bits_equal(maps.create_dynamic_map(signed, exp_bits, total), ref), (exp_bits, total)
            prec = total - int(signed) - exp_bits
            if prec >= 0:
                ref = F.create_fp8_map(signed, exp_bits, prec, total)
                assert _bits_equal(maps.create_fp8_map(signed, exp_bits, prec, total), ref)
        for add_zero in (True, False):
            ref = F.create_linear_map(signed, total, add_zero)
            assert _bits_equal(maps.create_linear_map(signed, total, add_zero), ref)


@pytest.mark.parametrize("shape", [(1, 64), (7, 33), (32, 256)])
@pytest.mark.parametrize("threshold", [0.0, 2.0, 6.0])
def test_int8_vectorwise_bit_identical(shape, threshold):
    torch.manual_seed(0)
    a = (torch.randn(*shape) * 3).half()
    ref = F.int8_vectorwise_quant(a.clone(), threshold)
    got = int8.int8_vectorwise_quant(a, threshold)
    assert _bits_equal(got[0], ref[0])
    assert _bits_equal(got[1], ref[1])
    assert (got[2] is None and ref[2] is None) or torch.equal(got[2], ref[2])
    assert _bits_equal(
        int8.int8_vectorwise_dequant(got[0], got[1]), F.int8_vectorwise_dequant(ref[0], ref[1])
    )


def test_int8_matmul_and_mm_dequant_bit_identical():
    torch.manual_seed(1)
    a = torch.randint(-127, 128, (5, 256), dtype=torch.int8)
    b = torch.randint(-127, 128, (48, 256), dtype=torch.int8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        acc = F.int8_linear_matmul(a, b)
    assert _bits_equal(int8.int8_linear_matmul(a, b), acc)
    rs, cs, bias = torch.rand(5) * 3, torch.rand(48), torch.randn(48).half()
    assert _bits_equal(
        int8.int8_mm_dequant(acc, rs, cs, bias=bias), F.int8_mm_dequant(acc, rs, cs, bias=bias)
    )
    with pytest.raises(ValueError, match=r"A must be torch\.int32"):
        int8.int8_mm_dequant(acc.float(), rs, cs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("nested", [False, True])
def test_matmul_4bit_and_gemv_vs_bnb(dtype, m, nested):
    torch.manual_seed(2)
    w, a, bias = (
        torch.randn(96, 128, dtype=dtype),
        torch.randn(1, m, 128, dtype=dtype),
        torch.randn(96, dtype=dtype),
    )
    q, st = F.quantize_4bit(w, quant_type="nf4", compress_statistics=nested)
    ref, got = bnb.matmul_4bit(a, q.t(), st, bias=bias), gemv.matmul_4bit(a, q.t(), st, bias=bias)
    ref_v, got_v = F.gemv_4bit(a, q.t(), state=st), gemv.gemv_4bit(a, q.t(), state=st)
    if dtype == torch.float32:  # edgequant's tiled fast kernel: BLAS summation order
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        assert _bits_equal(got_v, ref_v)  # gemv_4bit: the definition, as bnb
    else:
        assert _bits_equal(got, ref)
        assert _bits_equal(got_v, ref_v)


def test_dropin_defaults_and_16384_blocks():
    torch.manual_seed(3)
    w = torch.randn(64, 64)
    q_ref, st_ref = F.quantize_4bit(w)  # bnb's defaults: fp4, blocksize 64
    q, st = dropin.quantize_4bit(w)
    assert (st.quant_type, st.blocksize) == ("fp4", 64)
    assert torch.equal(q, q_ref)
    # equal values; bnb's native CPU kernel gives -0.0 for FP4's pattern 0b1000, edgequant +0.0 (its table's)
    assert torch.equal(dropin.dequantize_4bit(q, st), F.dequantize_4bit(q_ref, st_ref))
    x = torch.randn(128, 128, 8)
    q8, st8 = dropin.FUNCTIONAL["quantize_blockwise"](x, blocksize=16384)
    q8_ref, st8_ref = F.quantize_blockwise(x, blocksize=16384)
    assert st8.absmax.shape == st8_ref.absmax.shape == (8,)
    assert _bits_equal(st8.absmax, st8_ref.absmax)
    q8_cpu, _ = blockwise.quantize_blockwise(x, blocksize=16384, bnb_cpu_compatible=True)
    assert torch.equal(q8_cpu, q8_ref)  # bnb's 65536-step CPU rounding: the same bytes
    assert (q8 != q8_ref).float().mean() < 0.01  # the definition (nearest code) differs in a few elements
    assert pickle.loads(pickle.dumps(st8)) == st8
