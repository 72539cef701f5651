"""The batch-1..8 kernels (kernels.bnb4_native / bnb8_matmul.int8_gemm) against dequantize-then-matmul.

Bound (kernels.bnb4_native docstring): the kernel and ``x @ dequantize_4bit(W).T`` are float32 sums of the
same K products in different orders, so ``|y - ref| <= 2 * gamma_K * sum_k |x_k w_k|``. Shapes the kernel
does not cover (M > 8, K not a multiple of the blocksize) and a switched-off kernel take the tiled path,
checked to the same bound. No timings here: benchmarks/bench_bnb_kernels_gemv.py measures speed.
"""

import pytest
import torch

from edgequant.bnb import dequantize_4bit, quantize_4bit
from edgequant.bnb.blockwise import recover_absmax
from edgequant.bnb.fourbit import packed_bytes
from edgequant.bnb.matmul import matmul_4bit
from edgequant.kernels import bnb4_native
from edgequant.kernels.bnb8_matmul import int8_gemm
from edgequant.nn import Linear4bit, Linear8bitLt
from edgequant.nn.linear8bit import int8_matmul

needs_native = pytest.mark.skipif(not bnb4_native.available(), reason="no AVX2+FMA or no compiled extension")
U = 2.0**-24


def bound(x, w):
    k = x.shape[1]
    gamma = k * U / (1 - k * U)
    return 2 * gamma * (x.abs().double() @ w.abs().double().T) + 1e-30


def quantized(n, k, bs, qt, dq, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    packed, state = quantize_4bit(w, blocksize=bs, quant_type=qt, compress_statistics=dq)
    return packed, state, dequantize_4bit(packed, state)


def run(x, packed, state, n, k, threads=None):
    absmax = recover_absmax(state).contiguous().numpy()
    return matmul_4bit(x, packed_bytes(packed), absmax, state.quant_type, n, state.blocksize, threads)


def check(y, x, wd):
    ref = (x.double() @ wd.double().T).float()
    err = (y.double() - (x.float() @ wd.T).double()).abs()
    assert torch.all(err <= bound(x, wd)), float(err.max())
    assert torch.all((y.double() - ref.double()).abs() <= bound(x, wd))


@pytest.mark.parametrize("qt", ["nf4", "fp4"])
@pytest.mark.parametrize("dq", [False, True])
@pytest.mark.parametrize(("n", "k", "bs"), [(37, 128, 64), (5, 96, 32), (64, 4096, 4096), (3, 512, 128)])
def test_kernel_within_reassociation_bound(qt, dq, n, k, bs):
    packed, state, wd = quantized(n, k, bs, qt, dq)
    for m in range(1, 9):
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
        check(run(x, packed, state, n, k), x, wd)


@pytest.mark.parametrize(
    ("m", "n", "k", "bs"), [(1, 9, 100, 64), (3, 11, 70, 32), (9, 13, 128, 64), (16, 7, 64, 64)]
)
def test_uncovered_shapes_take_the_tiled_path(m, n, k, bs):
    """K not a multiple of the blocksize (blocks straddle rows) or M > 8: fallback, same bound."""
    packed, state, wd = quantized(n, k, bs, "nf4", True)
    x = torch.randn(m, k)
    check(run(x, packed, state, n, k), x, wd)


@needs_native
@pytest.mark.parametrize("qt", ["nf4", "fp4"])
def test_switched_off_kernel_gives_the_same_results(monkeypatch, qt):
    packed, state, wd = quantized(50, 256, 64, qt, True)
    x = torch.randn(4, 256)
    fast = run(x, packed, state, 50, 256)
    monkeypatch.setattr(bnb4_native, "ENABLED", False)
    slow = run(x, packed, state, 50, 256)
    check(fast, x, wd)
    check(slow, x, wd)
    assert torch.allclose(fast, slow, rtol=0, atol=float(bound(x, wd).max()) * 2)


@needs_native
def test_kernel_result_does_not_depend_on_threads():
    packed, state, _ = quantized(300, 256, 64, "nf4", False)
    x = torch.randn(3, 256)
    ys = [run(x, packed, state, 300, 256, threads=t) for t in (1, 2, 3)]
    assert torch.equal(ys[0], ys[1])
    assert torch.equal(ys[0], ys[2])


def test_permutation_is_a_permutation():
    x = torch.arange(64, dtype=torch.float32).reshape(1, 64)
    xp = bnb4_native.permute_x(x)
    assert sorted(xp.view(-1).tolist()) == list(range(64))
    assert xp[0, 0] == 1  # lane 0: odd elements (low nibbles)
    assert xp[0, 4] == 0  # lane 1: even elements (high nibbles)


def test_batch1_permutation_is_a_permutation():
    x = torch.arange(128, dtype=torch.float32).reshape(1, 128)
    xp = bnb4_native.permute_x64(x)
    assert sorted(xp.view(-1).tolist()) == list(range(128))
    assert xp[0, :5].tolist() == [1, 3, 5, 7, 33]  # low nibbles of bytes 0-3, then of byte 16 (lane 1)
    assert xp[0, 32] == 0  # the high nibbles (even elements) follow
    assert xp[0, 64] == 65  # the next 64 start over


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_linear4bit_inputs_noncontiguous_and_half(dtype):
    torch.manual_seed(0)
    lin = torch.nn.Linear(192, 33)
    q = Linear4bit.from_linear(lin, quant_type="nf4", compress_statistics=True).eval()
    wd = q.dequantize()
    big = torch.randn(6, 2 * 192).to(dtype)
    x = big[:, ::2]  # non-contiguous
    assert not x.is_contiguous()
    with torch.no_grad():
        y = q(x)
    assert y.dtype == dtype
    if dtype == torch.bfloat16:  # bf16 compute: the definition, bit for bit
        ref = torch.nn.functional.linear(x, wd.to(dtype), q.bias.to(dtype))
        assert torch.equal(y, ref)
        return
    xf = x.float()
    ref = torch.nn.functional.linear(xf, wd, q.bias)
    tol = bound(xf, wd) + 1e-6
    if dtype == torch.float16:
        tol = tol + ref.abs().double() * 2.0**-11  # the cast of the float32 result back to float16
    assert torch.all((y.double() - ref.double()).abs() <= tol)


@pytest.mark.parametrize("m", range(1, 10))
@pytest.mark.parametrize("k", [1, 31, 32, 100, 257])
def test_int8_gemm_exact(m, k):
    g = torch.Generator().manual_seed(k * 10 + m)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    w = torch.randint(-128, 128, (29, k), generator=g, dtype=torch.int8)
    a[0, 0], w[0, 0] = -128, -128  # the extreme product
    ref = (a.long() @ w.long().T).to(torch.int32)
    assert torch.equal(int8_matmul(a, w), ref)
    out = int8_gemm(a, w)
    if bnb4_native.available() and m <= 8:
        assert torch.equal(out, ref)
    else:
        assert out is None


@needs_native
def test_linear8bit_batch1_equals_numba_path(monkeypatch):
    torch.manual_seed(1)
    lin = torch.nn.Linear(200, 40)
    q = Linear8bitLt.from_linear(lin, threshold=6.0).eval()
    x = torch.randn(1, 200)
    x[0, 3] = 9.0  # an outlier column
    with torch.no_grad():
        fast = q(x)
        monkeypatch.setattr(bnb4_native, "ENABLED", False)
        slow = q(x)
    assert torch.equal(fast, slow)
