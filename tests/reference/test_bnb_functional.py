"""edgequant.bnb against bitsandbytes 0.50.2 on CPU: packed bytes, absmax, nested states, dequantized values.

Byte equality needs ``bnb_cpu_compatible=True`` wherever bnb's native 8-bit CPU quantizer is involved (8-bit
blockwise and the double quantization of 4-bit absmax); the 4-bit codes themselves match in both modes.
Also shows the two facts where bnb CPU deviates from its own definition: the 65536-step snapping, and the
AVX-512 4-bit dequantization of shapes whose row length is not a multiple of the blocksize.
"""

from __future__ import annotations

import pytest
import torch

import edgequant.bnb as E

F = pytest.importorskip("bitsandbytes.functional")
pytestmark = pytest.mark.reference

SHAPES_4BIT = [(128, 256), (100, 48), (3, 5), (7,), (1, 64), (33, 65), (4096,), (1000, 13), (64, 96)]
BLOCKSIZES = [32, 64, 128, 256, 512, 1024, 2048, 4096]


@pytest.fixture(autouse=True, scope="module")
def _no_dynamo():
    # bnb wraps its default kernels in torch.compile; eager gives the same values and saves minutes
    import torch._dynamo

    old = torch._dynamo.config.disable
    torch._dynamo.config.disable = True
    yield
    torch._dynamo.config.disable = old


def _input(shape, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(shape, generator=g)
    a.reshape(-1)[:3] = 0.0  # zeros inside a non-zero block
    if a.numel() > 200:
        a.reshape(-1)[128:192] = 0.0  # an all-zero block at small blocksizes
    return a


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("shape", SHAPES_4BIT)
def test_quantize_4bit_bytes_and_states(shape, quant_type):
    for i, bs in enumerate(BLOCKSIZES):
        for dq in (False, True):
            a = _input(shape, i)
            pb, sb = F.quantize_4bit(a, blocksize=bs, quant_type=quant_type, compress_statistics=dq)
            pe, se = E.quantize_4bit(
                a, blocksize=bs, quant_type=quant_type, compress_statistics=dq, bnb_cpu_compatible=True
            )
            assert pe.shape == pb.shape, (shape, bs, dq)
            assert torch.equal(pe, pb), (shape, bs, dq)
            assert torch.equal(se.absmax, sb.absmax)
            assert se.absmax.dtype == sb.absmax.dtype
            assert torch.equal(se.code, sb.code)
            assert se.shape == sb.shape
            assert se.dtype == sb.dtype
            if dq:
                assert torch.equal(se.offset, sb.offset)
                assert torch.equal(se.state2.absmax, sb.state2.absmax)
                assert torch.equal(se.state2.code, sb.state2.code)
                assert se.state2.blocksize == 256
                # default (definition) mode: same 4-bit codes, absmax codes differ at most rarely
                pd, _ = E.quantize_4bit(a, blocksize=bs, quant_type=quant_type, compress_statistics=True)
                assert torch.equal(pd, pb)
            # packed dicts identical, key by key
            de, db = se.as_dict(packed=True), sb.as_dict(packed=True)
            assert sorted(de) == sorted(db)
            assert all(torch.equal(de[k], db[k]) for k in db)


@pytest.mark.parametrize("shape", [(128, 256), (100, 48), (7,), (33, 65), (64, 96)])
def test_dequantize_4bit_values(shape):
    for bs in (32, 64, 256, 4096):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            a = _input(shape, bs).to(dtype)
            pb, sb = F.quantize_4bit(a, blocksize=bs, quant_type="nf4", compress_statistics=True)
            ob = F.dequantize_4bit(pb, sb)
            oe = E.dequantize_4bit(pb, E.QuantState.from_dict(sb.as_dict(packed=True)))
            oc = E.dequantize_4bit(
                pb, E.QuantState.from_dict(sb.as_dict(packed=True)), bnb_cpu_compatible=True
            )
            assert oe.dtype == ob.dtype == dtype
            if E.bnb_dequant4bit_is_misindexed(shape, bs, dtype):
                # fact 2: bnb's AVX-512 CPU kernel is wrong here; compat mode reproduces it
                assert torch.equal(oc.reshape(-1), ob.reshape(-1))
                assert not torch.equal(oe.reshape(-1), ob.reshape(-1))
            else:
                assert torch.equal(oe.reshape(-1), ob.reshape(-1)), (shape, bs, dtype)


def test_dequant_bug_predicate_on_this_cpu():
    avx512 = torch.backends.cpu.get_cpu_capability() == "AVX512"
    assert E.bnb_dequant4bit_is_misindexed((100, 48), 64, torch.float32) == avx512
    assert E.bnb_dequant4bit_is_misindexed((100, 48), 64, torch.float32, avx512=True)
    assert not E.bnb_dequant4bit_is_misindexed((100, 128), 64, torch.float32, avx512=True)


@pytest.mark.parametrize("shape", [(4096,), (100, 333), (3, 5), (64, 96), (1, 70000)])
@pytest.mark.parametrize("nested", [False, True])
def test_quantize_blockwise_bytes(shape, nested):
    for bs in BLOCKSIZES:
        a = _input(shape, bs)
        qb, sb = F.quantize_blockwise(a, blocksize=bs, nested=nested)
        qe, se = E.quantize_blockwise(a, blocksize=bs, nested=nested, bnb_cpu_compatible=True)
        assert torch.equal(qe, qb), (shape, bs)
        assert qe.shape == qb.shape, (shape, bs)
        assert torch.equal(se.absmax, sb.absmax)
        assert torch.equal(se.code, sb.code)
        if nested:
            assert torch.equal(se.offset, sb.offset)
            assert torch.equal(se.state2.absmax, sb.state2.absmax)
        assert torch.equal(E.dequantize_blockwise(qe, se), F.dequantize_blockwise(qb, sb))


def test_snapping_fact():
    """Fact 1: bnb CPU snaps to a 65536-step grid (0.0 -> code 131); the definition picks the nearest code."""
    torch.manual_seed(0)
    a = torch.randn(1 << 16)
    a[5] = 0.0
    qb, _ = F.quantize_blockwise(a, blocksize=256)
    qd, _ = E.quantize_blockwise(a, blocksize=256)
    assert qb[5] == 131
    assert qd[5] == 127
    differ = (qb != qd).float().mean().item()
    assert 0 < differ < 0.005
