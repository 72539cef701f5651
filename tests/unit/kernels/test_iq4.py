"""IQ4_NL / IQ4_XS against the test vectors of ggml-quants.md §9 (produced by ggml itself)."""

from __future__ import annotations

import numpy as np
import pytest

from edgequant.kernels import iq4
from edgequant.kernels.primitives import best_index
from tests.support.vectors import imat, lcg, sha256, sine

GEOM = {"IQ4_NL": (32, 18), "IQ4_XS": (256, 136)}

V1 = {
    "IQ4_NL": "ac92b884422110000113366aaddeeffffffe",
    "IQ4_XS": (
        "ad8103000f000001b884422110000113366aaddefffffffe1224588cceeffffffeeddaa66331100000011225588cceeffffffe"
        "edc9966331311000011225588cceeffffffeecc9969553311000011225589cceeffffffeececc99553311000011225599cceeff"
        "ffffffeecc99552211000011225599cceefeffffffeecc99553211000011335599c"
    ),
}

V2_FIRST = {
    ("IQ4_NL", False): "f597508a867ba86867499a89656bbac755c4",
    ("IQ4_NL", True): "9997508a867ba86867499a89656bbac755c4",
    ("IQ4_XS", False): (
        "1e0aed9156450540508a867ba86867499a89656bbac755c498a7789887607969877a6997696678a8c9c8d632b715f6123efdb1"
        "1941ae33e5988aa8766986a98776677897797987706645574807877645b9c99b7878bb7775977777799997979887f987789798"
        "977965969869867aa655a9a778966788faa66cb5f44b90eedf9b21dd82f35eff3dfa"
    ),
    ("IQ4_XS", True): (
        "6b8912528bab0db1508a867ba86867499a89656bbac755c498a7789887607969877a6997696678a8c9c8e521c714f5122ffdb0"
        "1930bf22e5988aa8766986a98776677897797987706655575807877645b9b99b7878ba777569998997776969788906899879677"
        "997ab6a68a67a965abb575a977aa987056b6cb5f44b90eede8a22cd83f45efe3cea"
    ),
}

V2_SHA = {
    ("IQ4_NL", False): "e9681ef813afa5b32d39aedda8bca5ed5f87d66d9339c6c87b7dad68d1363dda",
    ("IQ4_NL", True): "5f09ac87f8bf24c6137d4da1751f232c8527a7eb2e93a9a5481aba66dbfa49b8",
    ("IQ4_XS", False): "c9fcee346c477b1c357777136ece4b5978b4769d4bcd1bec8940f28d3454e7a3",
    ("IQ4_XS", True): "f0be11918c7326b12725d14f14182431722e951e50a66fdd433f2ea0bf6006a5",
}

V3 = {
    "IQ4_NL": (
        "c74cb24959c37c4e309b0a9094d43e85025fa9bf43431f17565ff6023772bd18",
        "46c6dfa7bc1ecf06602108458e9055284cb88260544519f476e11c33832e9fbf",
        "138c369acbb92e70f8f4d60e7c7a5f1933141570aa929dbab688aa8f578e00c5",
    ),
    "IQ4_XS": (
        "83d2e22d67be2b9534a5912e836790b5e12ba448e1d85365e89c8910a38063b1",
        "02c100b25d9ee9160dfb31fadb9063e7b5de9ee7de78828a36009214def68b1e",
        "9befe5a8329386050c3972b2df0dabffcf613e56c0c7a448f8ed422b1ae435c9",
    ),
}

ZERO = {"IQ4_NL": "0000" + "88" * 16, "IQ4_XS": "0080" + "aaaa" + "00000000" + "88" * 128}


def quant(name, x, qw=None):
    block, size = GEOM[name]
    x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
    out = np.empty((x.shape[0], x.shape[1] // block * size), np.uint8)
    q = np.zeros(0, np.float32) if qw is None else np.ascontiguousarray(qw, dtype=np.float32)
    getattr(iq4, "quantize_" + name.lower())(x, q, out)
    return out


def dequant(name, data, n):
    out = np.empty((data.shape[0], n), np.float32)
    getattr(iq4, "dequantize_" + name.lower())(data, out)
    return out


@pytest.mark.parametrize("name", sorted(V1))
def test_v1_sine_block(name):
    assert quant(name, sine(GEOM[name][0])).tobytes().hex() == V1[name]


@pytest.mark.parametrize(("name", "use_imat"), sorted(V2_SHA))
def test_v2_lcg_row(name, use_imat):
    n = 64 if name == "IQ4_NL" else 512
    out = quant(name, lcg(n), imat(n) if use_imat else None)
    assert out[0, : GEOM[name][1]].tobytes().hex() == V2_FIRST[(name, use_imat)]
    assert sha256(out) == V2_SHA[(name, use_imat)]


@pytest.mark.parametrize("name", sorted(V3))
def test_v3_tensor(name):
    x = lcg(4096).reshape(4, 1024)
    plain, with_imat, deq = V3[name]
    out = quant(name, x)
    assert sha256(out) == plain
    assert sha256(quant(name, x, imat(1024))) == with_imat
    assert sha256(dequant(name, out, 1024)) == deq


@pytest.mark.parametrize("name", sorted(ZERO))
def test_all_zero_row(name):
    block, size = GEOM[name]
    assert quant(name, np.zeros(2 * block, np.float32))[0, :size].tobytes().hex() == ZERO[name]


def test_index_matches_best_index():
    """The midpoint count equals ggml's best_index on the table's hard spots (ties, ulps around them)."""
    vals = [np.float32(v) for v in (np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e30)]
    for mid in iq4._MID:
        v = np.float32(mid)
        for _ in range(64):
            vals.append(v)
            v = np.nextafter(v, np.float32(np.inf), dtype=np.float32)
        v = np.float32(mid)
        for _ in range(64):
            v = np.nextafter(v, np.float32(-np.inf), dtype=np.float32)
            vals.append(v)
    rng = np.random.default_rng(1)
    vals += list((rng.standard_normal(20000) * 80).astype(np.float32))
    for v in vals:
        assert iq4._index.py_func(v) == best_index(iq4.KVALUES, v), v


@pytest.mark.parametrize("name", sorted(GEOM))
@pytest.mark.parametrize("use_imat", [False, True])
def test_roundtrip_error_small(name, use_imat):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 512)).astype(np.float32)
    qw = rng.random(512).astype(np.float32) if use_imat else None
    y = dequant(name, quant(name, x, qw), 512)
    assert np.sqrt(np.mean((x - y) ** 2) / np.mean(x**2)) < 0.15


@pytest.mark.parametrize("name", sorted(GEOM))
def test_zero_imatrix(name):
    x = lcg(512)[None, :]
    y = dequant(name, quant(name, x, np.zeros(512, np.float32)), 512)
    assert y.shape == (1, 512)
