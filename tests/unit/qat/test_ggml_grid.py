"""Quantizers on ggml's exact grids: the fake weights equal edgequant.gguf (byte-identical to llama.cpp)
dequantize(quantize(w)) bit for bit; learned-scale blocks pack to bytes that decode to the fake weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edgequant.errors import ShapeError
from edgequant.gguf import dequantize, quantize
from edgequant.qat import QuantSpec
from edgequant.qat.modules import make_quantizer


def _weights(rows=24, cols=256, seed=0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * rng.uniform(1e-3, 2.0, (rows, 1))).astype(np.float32)
    w[0, :32] = 0.0  # all-zero block: d = −0.0 in Q4_0
    w[1, :32] = -0.0
    w[2, 7] = -3 * np.abs(w[2]).max()  # negative max: positive Q4_0 scale
    w[3, :32] = 0.25  # ties for the max
    w[4, 32:64] = np.round(w[4, 32:64] * 8) / 8  # values on a grid: exact halves
    return w


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@pytest.mark.parametrize("fmt", ["Q4_0", "Q4_1", "Q8_0"])
def test_ggml_rule_fake_equals_codec_bitwise_and_export_bytes(fmt):
    w = _weights()
    q = make_quantizer(QuantSpec(method="ggml", format=fmt), "weight", w.shape, "blk.0.w")
    y = q(torch.from_numpy(w)).numpy()
    data = quantize(w, fmt)
    assert np.array_equal(_bits(y), _bits(dequantize(data, fmt, w.shape)))
    assert np.array_equal(q.export_bytes(torch.from_numpy(w)), data)


def test_ggml_rule_gradient_is_straight_through():
    w = torch.from_numpy(_weights()).requires_grad_(True)
    q = make_quantizer(QuantSpec(method="ggml", format="Q4_0"), "weight", tuple(w.shape))
    up = torch.randn_like(w)
    q(w).backward(up)
    assert torch.equal(w.grad, up)


@pytest.mark.parametrize("fmt", ["Q4_0", "Q4_1", "Q8_0"])
def test_learned_scale_packs_to_bytes_that_decode_to_the_fake_weights(fmt):
    w = torch.from_numpy(_weights(seed=1))
    q = make_quantizer(QuantSpec(method="ggml", format=fmt, learn_scale=True), "weight", tuple(w.shape))
    q(w)
    with torch.no_grad():  # move the scales off ggml's rule, as training does
        q.step.mul_(torch.empty_like(q.step).uniform_(0.7, 1.1, generator=torch.Generator().manual_seed(0)))
        if fmt == "Q4_1":
            q.offset.add_(0.01)
    y = q(w).detach().numpy()
    data = q.export_bytes(w)
    assert data.shape == (w.shape[0], w.shape[1] // 32 * {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}[fmt])
    assert np.array_equal(_bits(y), _bits(dequantize(data, fmt, tuple(w.shape))))


def test_learned_scale_gradient_closed_form_q4_0():
    w = torch.from_numpy(_weights(rows=8, cols=32, seed=2)[5:7].copy()).requires_grad_(True)
    q = make_quantizer(QuantSpec(method="ggml", format="Q4_0", learn_scale=True), "weight", tuple(w.shape))
    q(w.detach())
    with torch.no_grad():
        q.step.mul_(0.8)  # some elements clip now
    y = q(w)
    up = torch.linspace(-1, 1, 64).reshape(2, 32)
    y.backward(up)
    d16 = q.step.detach().to(torch.float16).float().reshape(2, 1)
    u = w.detach() / d16
    inside = (u >= -8) & (u <= 7)
    torch.testing.assert_close(w.grad, up * inside)
    dd = torch.where(inside, torch.round(u) - u, torch.clamp(u, -8, 7))
    ref = (up * dd).sum(-1) / math.sqrt(32 * 8)
    torch.testing.assert_close(q.step.grad.reshape(2), ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("fmt", ["Q4_K", "Q6_K", "Q5_0"])
def test_codec_quantizer_runs_the_real_codec(fmt):
    w = _weights(rows=8, cols=512, seed=3)
    q = make_quantizer(QuantSpec(method="codec", format=fmt), "weight", w.shape)
    wt = torch.from_numpy(w).requires_grad_(True)
    y = q(wt)
    assert np.array_equal(_bits(y.detach().numpy()), _bits(dequantize(quantize(w, fmt), fmt, w.shape)))
    y.sum().backward()
    assert torch.equal(wt.grad, torch.ones_like(wt))


def test_bad_row_length_names_the_module():
    with pytest.raises(ShapeError, match=r"layers\.3\.fc.*multiple of the block size 256"):
        make_quantizer(QuantSpec(method="codec", format="Q4_K"), "weight", (8, 576), "layers.3.fc")
