"""edgequant.analysis.decompose: the parts sum to the total for every codec family; closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgequant.analysis.codec_grids import Blockwise, Uniform, codec_grid, reconstruct
from edgequant.analysis.decompose import DEFAULT_MULTIPLIERS, decompose, project
from edgequant.bnb import NF4_VALUES
from edgequant.errors import ConfigError, NonFiniteError, ShapeError, UnsupportedTypeError
from edgequant.gguf.codecs import codec_names, dequantize, quantize

GGML = [t for t in codec_names() if t not in ("F32", "F16", "BF16")]
OTHERS = [
    "nf4",
    "fp4",
    "int8",
    Blockwise("nf4", 64, nested=True),
    Blockwise("fp4", 128),
    Blockwise("int8", 256, nested=True),
    Uniform(4, True, "tensor"),
    Uniform(3, False, "tensor"),
    Uniform(4, True, "channel"),
    Uniform(4, False, "channel"),
    Uniform(2, True, "group", 32),
    Uniform(8, False, "group", 64),
]
ALL = GGML + OTHERS


def _weights(seed: int = 0) -> np.ndarray:
    """(4, 512) float32 with a heavy tail and one outlier, so that every codec clips somewhere."""
    rng = np.random.default_rng(seed)
    w = rng.standard_t(4, size=(4, 512)) * 0.02
    w[1, 7] = 0.4
    return w.astype(np.float32)


def _id(c) -> str:
    return c if isinstance(c, str) else c.name


@pytest.mark.parametrize("codec", ALL, ids=_id)
def test_parts_sum_to_the_total(codec):
    w = _weights()
    d = decompose(w, codec)
    recon, grid = codec_grid(w, codec)
    v = w.astype(np.float64).ravel()
    total = float(np.sum((v - recon) ** 2))  # independent of decompose's own sums
    assert d.total == total
    assert d.total > 0
    assert sum(d.parts().values()) == pytest.approx(total, rel=1e-12, abs=0)
    # rounding and clipping partition the elements at s*: their sum is E(alpha*) summed another way
    q_star, _ = project(v, grid, d.multipliers)
    assert d.rounding + d.clipping == pytest.approx(float(np.sum((v - q_star) ** 2)), rel=1e-12)
    assert d.rounding_at_s + d.clipping_at_s == pytest.approx(d.total - d.code_choice, rel=1e-12)
    assert d.step >= -1e-12 * total  # 1.0 is a candidate: s* is never worse than s
    assert d.clipping > 0 or d.clipped == 0
    assert d.multipliers.shape == grid.scale.shape
    assert set(np.unique(d.multipliers)) <= {*DEFAULT_MULTIPLIERS, 1.0}


@pytest.mark.parametrize("codec", ALL, ids=_id)
def test_codec_output_lies_on_the_model_levels(codec):
    w = _weights(1)
    recon, grid = codec_grid(w, codec)
    on_grid, _ = project(recon, grid, np.ones(grid.scale.size))
    step = np.abs(grid.per_element(grid.scale, recon.size))
    # within float32 rounding of a level (the end levels included: "outside" by an ulp is still on them)
    assert np.all(np.abs(on_grid - recon) <= 2.0**-22 * np.maximum(step, np.abs(recon)))


@pytest.mark.parametrize("codec", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "nf4", "int8"], ids=_id)
def test_nearest_rounding_codecs_have_no_code_choice_part(codec):
    # these choose the nearest level at their stored scales: only float32 rounding of the levels is left
    d = decompose(_weights(2), codec)
    assert abs(d.code_choice) <= 1e-6 * d.total


@pytest.mark.parametrize("spec", [Uniform(4, True, "tensor"), Uniform(5, False, "group", 32)], ids=_id)
def test_uniform_code_choice_is_exactly_zero(spec):
    d = decompose(_weights(3), spec)
    assert abs(d.code_choice) <= 1e-15 * d.total


def test_uniform_symmetric_closed_form_quantizer():
    # 4-bit symmetric per tensor: s = max|w| / 7, codes clip to [-8, 7]
    w = np.array([[1.75, -0.3, 0.6, -2.0]], np.float32)
    s = 2.0 / 7
    expected = s * np.clip(np.rint(w.astype(np.float64) / s), -8, 7)
    np.testing.assert_array_equal(reconstruct(w, Uniform(4, True, "tensor")), expected.astype(np.float32))


def test_tensor_on_the_grid_has_zero_error():
    zero = {"rounding": 0.0, "clipping": 0.0, "step": 0.0, "code_choice": 0.0}
    sym = np.tile(np.arange(-7, 8), 4).reshape(4, 15) * 0.25  # max|w| = 7 * 0.25: s = 0.25
    asym = np.tile(np.arange(-5, 11), 4).reshape(4, 16) * 0.25  # (max - min) / 15 = 0.25, z = 5
    cases = [
        (sym, Uniform(4, True, "tensor")),
        (sym, Uniform(4, True, "channel")),
        (asym, Uniform(4, False, "channel")),
    ]
    for w, spec in cases:
        d = decompose(w.astype(np.float32), spec)
        assert d.total == 0.0
        assert d.parts() == zero
        assert (d.multipliers == 1.0).all()
    rng = np.random.default_rng(4)
    codes = rng.integers(-127, 128, size=(2, 256))
    codes[:, ::32] = 127  # every 32-block holds its +max: d = 2^-7 exactly
    assert decompose((codes * 2.0**-7).astype(np.float32), "Q8_0").total == 0.0
    q4 = rng.integers(-8, 8, size=(2, 64))
    q4[:, ::32] = -8  # Q4_0's d = (signed max-abs) / -8 = 2^-4
    assert decompose((q4 * 2.0**-4).astype(np.float32), "Q4_0").total == 0.0
    nf4 = np.array(NF4_VALUES * 8, np.float32)  # absmax 1 in every 64-block
    assert decompose(nf4, "nf4").total == 0.0


def test_q4_0_clipping_closed_form():
    # one block: 1.0 (the max, so d = 1/-8 and the levels are 0.125 * (-7..8)) and -0.95 < -0.875: clipped
    w = np.zeros((1, 32), np.float32)
    w[0, 0], w[0, 1] = 1.0, -0.95
    x = np.float64(np.float32(-0.95))
    d = decompose(w, "Q4_0")
    assert d.clipped_at_s == 1
    assert d.clipping_at_s == pytest.approx((x + 0.875) ** 2, rel=1e-12)
    assert d.rounding_at_s == 0.0
    assert d.total == pytest.approx((x + 0.875) ** 2, rel=1e-12)
    # s*: the best multiplier of the step, levels 0.125 * alpha * (-7..8), brute force here
    errs = []
    for a in DEFAULT_MULTIPLIERS:
        levels = 0.125 * a * np.arange(-7, 9)
        errs.append(sum(np.min((v - levels) ** 2) for v in (1.0, x, 0.0)))
    best = int(np.argmin(errs))
    assert d.multipliers[0] == pytest.approx(DEFAULT_MULTIPLIERS[best])
    assert d.rounding + d.clipping == pytest.approx(errs[best], rel=1e-9)
    assert d.step == pytest.approx(d.total - errs[best], rel=1e-9)


def test_clipping_only_when_a_value_leaves_the_range():
    # uniform 4-bit symmetric per tensor, s = max|w|/7 = 0.1: the range [-0.8, 0.7] holds every value
    w = np.array([[0.7, -0.7, 0.33, -0.2]], np.float32)
    d = decompose(w, Uniform(4, True, "tensor"))
    v = w.astype(np.float64).ravel()
    assert d.clipped_at_s == 0
    assert d.clipping_at_s == 0.0
    s = v[0] / 7  # 0.7 in float32, / 7
    assert d.rounding_at_s == pytest.approx((v[2] - 3 * s) ** 2, rel=1e-12)
    # half the step: levels 0.05 * (-8..7), range [-0.4, 0.35]; 0.7 and -0.7 clamp to its ends
    _, grid = codec_grid(w, Uniform(4, True, "tensor"))
    q, outside = project(v, grid, np.array([0.5]))
    np.testing.assert_array_equal(outside, [True, True, False, False])
    np.testing.assert_allclose(q, [3.5 * s, -4 * s, 3.5 * s, -2 * s], rtol=1e-12)


def test_float_types():
    w = _weights(5)
    assert decompose(w, "F32").total == 0.0
    d = decompose(w, "F16")
    expected = float(np.sum((w.astype(np.float64) - w.astype(np.float16).astype(np.float64)) ** 2))
    assert d.total == pytest.approx(expected, rel=1e-12)
    assert d.rounding == d.total
    assert d.clipping == d.step == d.code_choice == 0.0


def test_torch_and_numpy_inputs_agree():
    w = _weights(6)
    a, b = decompose(w, "Q4_K"), decompose(torch.from_numpy(w), "Q4_K")
    assert a.parts() == b.parts()
    r = reconstruct(torch.from_numpy(w).to(torch.bfloat16), "nf4")
    assert r.dtype == torch.bfloat16
    assert tuple(r.shape) == w.shape


def test_imatrix_reaches_the_ggml_quantizer():
    w = _weights(7)
    imat = np.linspace(0.1, 10.0, w.shape[1]).astype(np.float32)
    recon, _ = codec_grid(w, "Q4_K", imat)
    direct = dequantize(quantize(w, "Q4_K", imat), "Q4_K", w.shape)
    np.testing.assert_array_equal(recon, direct.astype(np.float64).ravel())
    d = decompose(w, "Q4_K", imatrix=imat)
    assert sum(d.parts().values()) == pytest.approx(d.total, rel=1e-12)


def test_bad_inputs():
    w = _weights()
    with pytest.raises(UnsupportedTypeError):
        decompose(w, "Q9_9")
    with pytest.raises(ConfigError, match="kind"):
        decompose(w, Blockwise("nf3"))
    with pytest.raises(ShapeError, match="group_size"):
        decompose(w, Uniform(4, True, "group", 100))
    with pytest.raises(ConfigError, match="multipliers"):
        decompose(w, "Q8_0", multipliers=[0.0, 1.0])
    with pytest.raises(ConfigError, match="bits"):
        decompose(w, Uniform(1, True))
    bad = w.copy()
    bad[0, 0] = np.nan
    with pytest.raises(NonFiniteError):
        decompose(bad, "Q8_0")
