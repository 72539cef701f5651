"""The native LLM.int8 batch-1..8 path (kernels.bnb8_linear) against the torch path it replaces.

Codes, row scales and outlier columns must be equal to ``bnb.int8.int8_vectorwise_quant``'s; the layer output
bit-identical to the torch path (``bnb4_native.ENABLED = False``); with ``FUSED_OUTLIERS`` within the
reassociation bound of the module docstring. Shapes straddle the kernels' widths (8 floats in the activation
pass, 32 int8 in the rows, 16-row chunks).
"""

import pytest
import torch

from edgequant.bnb.int8 import DEQ_SCALE, MM_SCALE, int8_vectorwise_quant
from edgequant.kernels import bnb4_native, bnb8_linear
from edgequant.nn import Linear8bitLt
from edgequant.nn.linear8bit import llm_int8_forward, quantize_rows_int8

needs_native = pytest.mark.skipif(
    not bnb4_native.available(), reason="edgequant._gemv AVX2 kernels not built"
)

KS = [1, 7, 8, 9, 31, 32, 33, 100, 257]


def _x(m, k, seed, outliers=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * 1.5
    if outliers:
        x[0, k // 2] = 6.0  # exactly at the threshold: an outlier (>=)
        x[m - 1, k - 1] = -9.5
    return x


def _torch_path(x2, cb, scb, bias, threshold, threads=None):
    old = bnb4_native.ENABLED
    bnb4_native.ENABLED = False
    try:
        return llm_int8_forward(x2, cb, scb, bias, threshold, threads)
    finally:
        bnb4_native.ENABLED = old


def _weights(n, k, seed):
    g = torch.Generator().manual_seed(seed + 1)
    w = torch.randn(n, k, generator=g) * 0.05
    cb, scb = quantize_rows_int8(w)
    return cb, scb, torch.randn(n, generator=g)


@needs_native
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("threshold", [0.0, 6.0, 6.0995])
def test_codes_scales_and_columns_equal(k, threshold):
    for m in range(1, 9):
        x = _x(m, k, seed=m * 1000 + k)
        if m > 2:
            x[1] = 0.0  # a zero row: SCA 0, codes 0
            x[2, 0] = 6.09765625  # float16(6.0995): an outlier at threshold 6.0995 (compared in float16)
            x[2, -1] = 3e-6 if k > 1 else x[2, -1]  # float16 subnormal range
        codes = torch.empty(m, k, dtype=torch.int8)
        a16, sca, cols = bnb8_linear.quantize_activations(x, threshold, codes)
        ca, sca_ref, cols_ref = int8_vectorwise_quant(x.half(), threshold)
        assert torch.equal(codes, ca), (m, k)
        assert torch.equal(a16, ca.to(torch.int16))
        assert torch.equal(sca, sca_ref)
        assert torch.equal(cols, torch.empty(0, dtype=torch.int64) if cols_ref is None else cols_ref)
        if threshold > 0 and m > 2:
            assert 0 in cols.tolist()  # 6.09765625 >= float16(6.0995) == 6.09765625; >= 6.0 too
            assert k == 1 or (k // 2 in cols.tolist()) == (threshold == 6.0)  # 6.0 < 6.0995


@needs_native
def test_rounding_ties_go_to_even():
    # SCA = 127: r = float32(float32(1/127) * 127) = 1, so a = n + 0.5 rounds to the even neighbour
    r = torch.tensor(1.0 / 127, dtype=torch.float32) * 127
    assert r.item() == 1.0
    x = torch.tensor([[127.0, 2.5, 3.5, -2.5, -3.5, 0.5, 1.5, -0.5, 126.5]])
    codes = torch.empty(1, 9, dtype=torch.int8)
    bnb8_linear.quantize_activations(x, 0.0, codes)
    assert codes.tolist() == [[127, 2, 4, -2, -4, 0, 2, 0, 126]]


@needs_native
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("n", [1, 17, 33])
@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize("bias", [True, False])
def test_output_bit_identical_to_torch_path(k, n, threshold, bias):
    cb, scb, b = _weights(n, k, seed=n + k)
    for m in range(1, 9):
        x = _x(m, k, seed=m * 31 + k + n)
        y, cols = bnb8_linear.llm_int8_gemv(x, cb, scb, b if bias else None, threshold, MM_SCALE, DEQ_SCALE)
        ref, cols_ref = _torch_path(x, cb, scb, b if bias else None, threshold)
        assert torch.equal(cols, cols_ref)
        assert torch.equal(y, ref), (m, n, k)


@needs_native
@pytest.mark.parametrize("k", [8192, 8215])  # the four-rows-at-once path (K >= 8192), with and without a tail
@pytest.mark.parametrize("threads", [1, 2])
def test_batch1_long_rows_bit_identical_to_torch_path(k, threads):
    cb, scb, b = _weights(39, k, seed=k)  # 39 rows: whole groups of four and a remainder of three
    x = _x(1, k, seed=k)
    y, cols = bnb8_linear.llm_int8_gemv(x, cb, scb, b, 6.0, MM_SCALE, DEQ_SCALE, threads)
    ref, cols_ref = _torch_path(x, cb, scb, b, 6.0)
    assert torch.equal(cols, cols_ref)
    assert torch.equal(y, ref)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_half_inputs_bit_identical(dtype, threshold):
    cb, scb, b = _weights(40, 100, seed=5)
    for m in (1, 3, 8):
        x = _x(m, 100, seed=m).to(dtype)
        y, cols = bnb8_linear.llm_int8_gemv(x, cb, scb, b, threshold, MM_SCALE, DEQ_SCALE)
        ref, cols_ref = _torch_path(x, cb, scb, b, threshold)
        assert y.dtype == dtype
        assert torch.equal(cols, cols_ref)
        assert torch.equal(y, ref)


def _gamma(n):
    u = 2.0**-24
    return n * u / (1 - n * u)


@needs_native
@pytest.mark.parametrize("k", [33, 257])
def test_fused_outliers_within_reassociation_bound(monkeypatch, k):
    n = 48
    cb, scb, b = _weights(n, k, seed=k)
    monkeypatch.setattr(bnb8_linear, "FUSED_OUTLIERS", True)
    worst = 0.0
    for m in range(1, 9):
        x = _x(m, k, seed=7 * m + k)
        x[:, 3] *= 8.0  # more outlier columns
        y, cols = bnb8_linear.llm_int8_gemv(x, cb, scb, b, 6.0, MM_SCALE, DEQ_SCALE)
        ref, cols_ref = _torch_path(x, cb, scb, b, 6.0)
        assert torch.equal(cols, cols_ref)
        assert cols.numel() >= 2
        # the bound's terms from the definition: y0 (no outlier part) and the outlier products
        ca, sca, _ = int8_vectorwise_quant(x.half(), 6.0)
        acc = (ca.double() @ cb.double().T).to(torch.int32)
        y0 = acc * (sca[:, None] * scb[None, :]) * MM_SCALE + b
        wo = cb[:, cols] * scb[:, None] * DEQ_SCALE
        terms = y0.double().abs() + x[:, cols].double().abs() @ wo.double().abs().T
        bound = 2 * _gamma(cols.numel() + 1) * terms
        diff = (y.double() - ref.double()).abs()
        assert torch.all(diff <= bound)
        worst = max(worst, float((diff / bound.clamp_min(1e-30)).max()))
    assert worst <= 1.0


@needs_native
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_result_does_not_depend_on_threads(threads):
    cb, scb, b = _weights(300, 257, seed=3)  # 19 chunks of 16 rows
    x = _x(5, 257, seed=11)
    y1, _ = bnb8_linear.llm_int8_gemv(x, cb, scb, b, 6.0, MM_SCALE, DEQ_SCALE, threads=1)
    yt, _ = bnb8_linear.llm_int8_gemv(x, cb, scb, b, 6.0, MM_SCALE, DEQ_SCALE, threads=threads)
    assert torch.equal(y1, yt)


def _layer(n, k, threshold=6.0):
    torch.manual_seed(n * k)
    return Linear8bitLt.from_linear(torch.nn.Linear(k, n), threshold=threshold).eval()


def _both(layer, x):
    with torch.no_grad():
        fast = layer(x)
        fast_cols = layer.outlier_cols.clone()
        old = bnb4_native.ENABLED
        bnb4_native.ENABLED = False
        try:
            slow = layer(x)
        finally:
            bnb4_native.ENABLED = old
    assert torch.equal(fast_cols, layer.outlier_cols)
    return fast, slow


@needs_native
def test_layer_noncontiguous_inputs():
    layer = _layer(24, 66)
    base = _x(6, 132, seed=2)
    x = base[:, ::2]  # strided columns
    assert not x.is_contiguous()
    fast, slow = _both(layer, x)
    assert torch.equal(fast, slow)
    xt = _x(66, 3, seed=4).T  # a transposed view
    fast, slow = _both(layer, xt)
    assert torch.equal(fast, slow)
    x3 = _x(8, 66, seed=6).reshape(2, 4, 66)[:, ::2]  # 3-D, 4 rows after flattening
    fast, slow = _both(layer, x3)
    assert fast.shape == (2, 2, 24)
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("m", [9, 16])
def test_uncovered_batch_takes_the_torch_path(m):
    layer = _layer(20, 40)
    x = _x(m, 40, seed=m)
    assert bnb8_linear.llm_int8_gemv(x, layer.weight.data, layer.SCB, None, 6.0, MM_SCALE, DEQ_SCALE) is None
    fast, slow = _both(layer, x)
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 70000.0])
def test_non_finite_half_takes_the_torch_path(bad):
    layer = _layer(20, 40, threshold=0.0)
    x = _x(2, 40, seed=1)
    x[1, 5] = bad  # 70000 is finite in float32 but inf in float16
    assert bnb8_linear.quantize_activations(x, 0.0) is None
    assert bnb8_linear.llm_int8_gemv(x, layer.weight.data, layer.SCB, None, 0.0, MM_SCALE, DEQ_SCALE) is None
    fast, slow = _both(layer, x)
    assert torch.allclose(fast, slow, equal_nan=True, rtol=0, atol=0)


def test_float64_input_is_not_covered():
    cb, scb, b = _weights(8, 16, seed=0)
    x = _x(2, 16, seed=0).double()
    assert bnb8_linear.llm_int8_gemv(x, cb, scb, b, 6.0, MM_SCALE, DEQ_SCALE) is None


@needs_native
def test_wrong_weight_is_a_clear_error():
    cb, scb, _ = _weights(8, 16, seed=0)
    x = _x(2, 16, seed=0)
    with pytest.raises(ValueError, match="CB int8"):
        bnb8_linear.llm_int8_gemv(x, cb.float(), scb, None, 6.0, MM_SCALE, DEQ_SCALE)
