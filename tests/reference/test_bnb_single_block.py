"""A tensor that is a single block, with double quantization, against bitsandbytes 0.50.2 on CPU (issue 17).

Its absmax has one element, so the nested input ``absmax - mean(absmax)`` is exactly one zero: bnb stores
nested absmax 0 and code 0 there. edgequant now does so in both rounding modes (it stored 1e-38 and the
zero code 127 in the default mode). Shapes: exactly one block, one block plus one value, a short single
block (777 values at 4096), for every blocksize up to 4096; 4-bit (NF4, FP4) and 8-bit nested.
"""

from __future__ import annotations

import pytest
import torch

import edgequant.bnb as E

F = pytest.importorskip("bitsandbytes.functional")
pytestmark = pytest.mark.reference

BLOCKSIZES = [64, 128, 256, 512, 1024, 2048, 4096]


@pytest.fixture(autouse=True, scope="module")
def _no_dynamo():
    import torch._dynamo

    old = torch._dynamo.config.disable
    torch._dynamo.config.disable = True
    yield
    torch._dynamo.config.disable = old


def _sizes(bs: int) -> list[int]:
    return sorted({bs, bs + 1, 1, 777 if 777 < bs else bs - 1})


def _same_state(se, sb, where):
    assert torch.equal(se.absmax, sb.absmax), where
    assert se.absmax.dtype == sb.absmax.dtype, where
    assert torch.equal(se.offset, sb.offset), where
    assert torch.equal(se.state2.absmax, sb.state2.absmax), (where, se.state2.absmax, sb.state2.absmax)
    assert torch.equal(se.state2.code, sb.state2.code), where


@pytest.mark.parametrize("bnb_cpu_compatible", [False, True])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("bs", BLOCKSIZES)
def test_4bit_double_quant_single_block_bytes(bs, quant_type, bnb_cpu_compatible):
    for n in _sizes(bs):
        a = torch.randn(n, generator=torch.Generator().manual_seed(n + bs))
        pb, sb = F.quantize_4bit(a, blocksize=bs, quant_type=quant_type, compress_statistics=True)
        pe, se = E.quantize_4bit(
            a,
            blocksize=bs,
            quant_type=quant_type,
            compress_statistics=True,
            bnb_cpu_compatible=bnb_cpu_compatible,
        )
        where = (n, bs, quant_type, bnb_cpu_compatible)
        assert torch.equal(pe, pb), where
        _same_state(se, sb, where)
        de, db = se.as_dict(packed=True), sb.as_dict(packed=True)
        assert sorted(de) == sorted(db)
        assert all(torch.equal(de[k], db[k]) for k in db), where
        if n <= bs:  # one block: the nested absmax (a single zero) decodes to 0, so absmax is the offset
            assert se.state2.absmax.tolist() == [0.0], where
            assert torch.equal(E.recover_absmax(se), se.offset.reshape(1)), where


@pytest.mark.parametrize("bnb_cpu_compatible", [False, True])
@pytest.mark.parametrize("bs", BLOCKSIZES)
def test_8bit_nested_single_block_state(bs, bnb_cpu_compatible):
    for n in _sizes(bs):
        a = torch.randn(n, generator=torch.Generator().manual_seed(n * 7 + bs))
        qb, sb = F.quantize_blockwise(a, blocksize=bs, nested=True)
        qe, se = E.quantize_blockwise(a, blocksize=bs, nested=True, bnb_cpu_compatible=bnb_cpu_compatible)
        where = (n, bs, bnb_cpu_compatible)
        _same_state(se, sb, where)
        if bnb_cpu_compatible:  # the default mode rounds the 8-bit codes to nearest (bnb CPU snaps first)
            assert torch.equal(qe, qb), where


def test_all_zero_single_block_like_bnb():
    a = torch.zeros(777)
    for nested in (False, True):
        qb, sb = F.quantize_blockwise(a, blocksize=4096, nested=nested)
        qe, se = E.quantize_blockwise(a, blocksize=4096, nested=nested)
        assert torch.equal(qe, qb)
        assert torch.equal(se.absmax, sb.absmax)
