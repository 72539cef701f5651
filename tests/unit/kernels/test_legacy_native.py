"""The C reference quantizers (``kernels.legacy_native``) against the numba kernels, byte for byte.

The numba kernels are checked against ggml in tests/reference/test_codecs_vs_ggml.py (which, where the C
library is built, now runs the C path of ``gguf.codecs.quantize`` for Q4_0..Q8_0 without an imatrix);
here the two implementations meet on the same inputs, non-finite values included, which ggml's
comparison does not feed.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgequant.errors import NonFiniteError
from edgequant.gguf.codecs import check_finite_rows, get_codec, quantize
from edgequant.kernels import floats, legacy, legacy_native
from tests.support.cases import row_cases

pytestmark = pytest.mark.skipif(not legacy_native.available(), reason="no C compiler: numba path only")

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
NUMBA = {
    "Q4_0": legacy.quantize_q4_0,
    "Q4_1": legacy.quantize_q4_1,
    "Q5_0": legacy.quantize_q5_0,
    "Q5_1": legacy.quantize_q5_1,
    "Q8_0": legacy.quantize_q8_0,
}
SPECIALS = np.array(
    [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 3e38, -3e38, 1e-45, -1e-45, 65504.0, np.inf, -np.inf, np.nan],
    np.float32,
)


def _inputs() -> list[np.ndarray]:
    g = np.random.default_rng(7)
    _, cases = row_cases(256, 4, 11)
    return [
        cases,
        g.choice(SPECIALS, (256, 64)),  # inf/NaN anywhere: x86 cvttss2si semantics on both sides
        g.choice(SPECIALS[:6], (256, 64)),  # +-0 and +-a ties
        (g.standard_normal((32, 128)) * 1e-40).astype(np.float32),  # subnormals: 1/d overflows
        (g.standard_normal((32, 128)) * 7e4).astype(np.float32),  # fp16 scale overflow
        (g.standard_normal((32, 128)) * 1e37).astype(np.float32),  # max - min overflows
    ]


def _both(qtype: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    codec = get_codec(qtype)
    x = np.ascontiguousarray(x, np.float32)
    ref = np.empty((x.shape[0], codec.row_bytes(x.shape[1])), np.uint8)
    NUMBA[qtype](x, np.zeros(0, np.float32), ref)
    ours = np.full_like(ref, 0xAA)
    bad = legacy_native.quantize_rows(qtype, x, ours)
    nonfinite = np.flatnonzero(~np.isfinite(x.reshape(-1)))
    assert bad == (int(nonfinite[0]) if nonfinite.size else -1)  # the first NaN/Inf, found in passing
    return ours, ref


@pytest.mark.parametrize("qtype", TYPES)
def test_c_bytes_equal_numba_bytes(qtype: str) -> None:
    for i, x in enumerate(_inputs()):
        ours, ref = _both(qtype, x)
        bad = np.flatnonzero((ours != ref).any(axis=1))
        assert bad.size == 0, f"input {i}: rows {bad[:10].tolist()} differ"


@pytest.mark.parametrize("qtype", TYPES)
def test_one_block_worked_case(qtype: str) -> None:
    """x = 0..31: Q4_0's d = 31/-8 = -3.875 (fp16 exact: 0xC3C0) and x=0 -> code trunc(0*id + 8.5) = 8."""
    x = np.arange(32, dtype=np.float32)[None, :]
    ours, ref = _both(qtype, x)
    assert ours.tobytes() == ref.tobytes()
    if qtype == "Q4_0":
        assert ours[0, :2].tobytes() == np.float16(-3.875).tobytes()
        assert ours[0, 2] & 0x0F == 8


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("threads", [1, 3])
def test_codecs_quantize_refuses_nonfinite_like_the_scan(qtype: str, threads: int) -> None:
    """The C path of ``codecs.quantize`` reports NaN/Inf from its own pass with ``check_finite_rows``'s
    message (first row and column over all thread ranges); ``check_finite=False`` returns the bytes."""
    x = np.ones((9, 64), np.float32)
    x[7, 40] = np.inf
    x[5, 33] = np.nan
    with pytest.raises(NonFiniteError) as got:
        quantize(x, qtype, threads=threads)
    with pytest.raises(NonFiniteError) as want:
        check_finite_rows(x)
    assert str(got.value) == str(want.value)
    assert "row 5" in str(got.value)
    assert "column 33" in str(got.value)
    _, ref = _both(qtype, x)
    out = quantize(x, qtype, threads=threads, check_finite=False, warn_overflow=False)
    assert out.tobytes() == ref.tobytes()


def test_first_nonfinite_matches_numba_at_chunk_edges() -> None:
    x = np.zeros(3 * 4096 + 5, np.float32)
    assert legacy_native.first_nonfinite(x) == -1
    assert legacy_native.first_nonfinite(np.zeros(0, np.float32)) == -1
    for at in (0, 4095, 4096, 8191, x.size - 1):
        for bad in (np.inf, -np.inf, np.nan):
            y = x.copy()
            y[at] = bad
            y[-1] = np.nan if at != x.size - 1 else y[-1]
            assert legacy_native.first_nonfinite(y) == floats.first_nonfinite(y) == at
    y = x.copy()
    y[10] = 3.4028235e38  # largest finite float: not flagged
    assert legacy_native.first_nonfinite(y) == -1


def test_disabled_or_failed_build_falls_back(tmp_path, monkeypatch) -> None:
    """EDGEQUANT_NATIVE=0, or a compiler that fails: ``available()`` is False (callers use numba)."""
    try:
        legacy_native._library.cache_clear()
        monkeypatch.setenv("EDGEQUANT_NATIVE", "0")
        assert not legacy_native.available()
        legacy_native._library.cache_clear()
        monkeypatch.setenv("EDGEQUANT_NATIVE", "1")
        monkeypatch.setenv("EDGEQUANT_CACHE_DIR", str(tmp_path))
        monkeypatch.setenv("CC", "false")
        assert not legacy_native.available()
        assert not any(p.suffix == ".so" for p in tmp_path.iterdir())  # the failed temporary is removed
    finally:
        legacy_native._library.cache_clear()


def test_builds_into_the_cache_dir_once(tmp_path, monkeypatch) -> None:
    try:
        legacy_native._library.cache_clear()
        monkeypatch.setenv("EDGEQUANT_CACHE_DIR", str(tmp_path))
        assert legacy_native.available()
        built = sorted(p.name for p in tmp_path.iterdir())
        assert len(built) == 1
        assert built[0].startswith("legacy_native-")
        assert built[0].endswith(".so")
        legacy_native._library.cache_clear()
        mtime = (tmp_path / built[0]).stat().st_mtime_ns
        assert legacy_native.available()
        assert (tmp_path / built[0]).stat().st_mtime_ns == mtime  # reused, not rebuilt
        ours, ref = _both("Q4_0", row_cases(64, 2, 3)[1])
        assert ours.tobytes() == ref.tobytes()
    finally:
        legacy_native._library.cache_clear()
