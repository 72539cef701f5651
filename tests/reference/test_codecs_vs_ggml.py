"""Every edgequant codec against llama.cpp's own (``ggml_quantize_chunk`` / ``to_float``), byte for byte.

Skipped when llama-cpp-python is not installed (``tests.support.ggml_peer.available()``).
Inputs: ``tests.support.cases`` (29 row families x 16 rows at row lengths 256 and 512, plus
N(0,1) rows of 4096) under six importance vectors (none, random, all-zero, sparse, ones, 1e-6..1e4).
"""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest

from edgequant.gguf.codecs import codec_names
from tests.support import ggml_peer
from tests.support.cases import imatrix_cases, random_blocks, row_cases

pytestmark = [
    pytest.mark.reference,
    pytest.mark.skipif(not ggml_peer.available(), reason="llama-cpp-python (libggml-base) not installed"),
]

TYPES = list(codec_names())
IMATRIX_VARIANTS = ["none", "random", "zeros", "sparse", "ones", "wide_range"]
ROWS_PER_CASE = 16
SEED = 20261125


def _gguf():
    import edgequant.gguf as eg

    eg.get_codec("F32")  # loads the registry
    return eg


def _inputs(n: int) -> tuple[list[str], np.ndarray]:
    return row_cases(n, ROWS_PER_CASE, SEED)


_CACHE: dict[int, tuple[list[str], np.ndarray]] = {}


def _all_rows() -> list[tuple[list[str], np.ndarray, int]]:
    """(names, x, n_per_row) blocks of rows compared per type."""
    out = []
    for n in (256, 512):
        if n not in _CACHE:
            _CACHE[n] = _inputs(n)
        out.append((*_CACHE[n], n))
    g = np.random.default_rng([SEED, 4096])
    out.append((["gauss_4096"] * 16, g.standard_normal((16, 4096)).astype(np.float32), 4096))
    return out


def assert_same_bytes(ours: np.ndarray, ref: np.ndarray, names: list[str], label: str) -> None:
    """Fail with the mismatching row indices, their families and the first differing byte."""
    assert ours.dtype == np.uint8, f"{label}: edgequant returned {ours.dtype}, expected uint8"
    assert ours.shape == ref.shape, f"{label}: shape {ours.shape} != ggml {ref.shape}"
    bad = np.flatnonzero((ours != ref).any(axis=1))
    if bad.size:
        r = int(bad[0])
        col = int(np.flatnonzero(ours[r] != ref[r])[0])
        fam = Counter(names[i] for i in bad)
        pytest.fail(
            f"{label}: {bad.size}/{ours.shape[0]} rows differ from ggml; rows {bad[:40].tolist()}"
            f"{' ...' if bad.size > 40 else ''}; by family {dict(fam)}; first: row {r} ({names[r]}) "
            f"byte {col}: edgequant {ours[r, max(0, col - 4) : col + 8].tolist()} vs ggml "
            f"{ref[r, max(0, col - 4) : col + 8].tolist()} (from byte {max(0, col - 4)})"
        )


def assert_same_bits(ours: np.ndarray, ref: np.ndarray, label: str) -> None:
    """Float32 arrays equal bit for bit (NaN payloads and signed zeros included)."""
    assert ours.dtype == np.float32, f"{label}: edgequant returned {ours.dtype}"
    assert ours.shape == ref.shape, f"{label}: shape {ours.shape} vs ggml {ref.shape}"
    a, b = ours.reshape(-1).view(np.uint32), ref.reshape(-1).view(np.uint32)
    bad = np.flatnonzero(a != b)
    if bad.size:
        i = int(bad[0])
        pytest.fail(
            f"{label}: {bad.size}/{a.size} values differ from ggml to_float; first at flat index {i}: "
            f"edgequant {ours.reshape(-1)[i]!r} (0x{a[i]:08x}) vs ggml {ref.reshape(-1)[i]!r} "
            f"(0x{b[i]:08x}); "
            f"indices {bad[:20].tolist()}"
        )


def _quantize(eg, x: np.ndarray, qtype: str, qw: np.ndarray | None, threads: int | None = None) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # fp16 scale overflow (1e6 rows): expected
        return eg.quantize(x, qtype, qw, threads=threads)


@pytest.mark.parametrize("variant", IMATRIX_VARIANTS)
@pytest.mark.parametrize("qtype", TYPES)
def test_quantize_bytes_match_ggml(qtype: str, variant: str) -> None:
    eg = _gguf()
    codec = eg.get_codec(qtype)
    if not codec.uses_imatrix and variant not in ("none", "random"):
        pytest.skip(f"{qtype} ignores the imatrix (checked with 'random')")
    for names, x, n in _all_rows():
        qw = imatrix_cases(n, SEED)[variant]
        ref = ggml_peer.ggml_quantize(x, qtype, qw, threads=2)
        ours = _quantize(eg, x, qtype, qw)
        assert_same_bytes(ours, ref, names, f"{qtype} imatrix={variant} n_per_row={n}")


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_random_blocks_match_ggml(qtype: str) -> None:
    eg = _gguf()
    codec = eg.get_codec(qtype)
    n = 256
    n_blocks = 4096 if codec.block_size > 1 else 256 * 64
    fp16, f32 = tuple(codec.fp16_scale_fields), ()
    if qtype == "Q8_1":
        fp16 = (0, 2)
    elif qtype == "Q8_K":
        f32 = (0,)
    elif qtype == "F16":
        fp16 = (0,)
    elif qtype == "F32":
        f32 = (0,)
    blocks = random_blocks(codec.type_size, n_blocks, fp16, SEED, f32)
    shape = (n_blocks * codec.block_size // n, n)
    ref = ggml_peer.ggml_dequantize(blocks, qtype, shape)
    ours = eg.dequantize(blocks, qtype, shape)
    assert_same_bits(np.asarray(ours), ref, f"{qtype} dequantize (random codes, finite scales)")


def _raw_decode(eg, qtype: str) -> tuple[np.ndarray, np.ndarray]:
    codec = eg.get_codec(qtype)
    n = 256
    n_blocks = 1024 if codec.block_size > 1 else 256 * 16
    blocks = random_blocks(codec.type_size, n_blocks, (), SEED + 1, finite=False)
    shape = (n_blocks * codec.block_size // n, n)
    return np.asarray(eg.dequantize(blocks, qtype, shape)), ggml_peer.ggml_dequantize(blocks, qtype, shape)


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_raw_random_bytes_match_ggml(qtype: str) -> None:
    """Any bit pattern, inf/NaN scales included: same values, NaN where ggml has NaN (payloads: next test)."""
    eg = _gguf()
    ours, ref = _raw_decode(eg, qtype)
    nan_o, nan_r = np.isnan(ours), np.isnan(ref)
    bad = np.flatnonzero((nan_o != nan_r).reshape(-1))
    assert bad.size == 0, f"{qtype}: NaN at different positions than ggml, flat indices {bad[:20].tolist()}"
    assert_same_bits(
        np.where(nan_o, np.float32(0), ours),
        np.where(nan_r, np.float32(0), ref),
        f"{qtype} dequantize (raw random bytes, NaNs masked)",
    )


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_nan_payloads_match_ggml(qtype: str) -> None:
    """Strictest form: NaN sign/payload bits too (ggml quiets signalling NaNs; C operand order decides
    which NaN propagates when both operands are NaN)."""
    eg = _gguf()
    ours, ref = _raw_decode(eg, qtype)
    assert_same_bits(ours, ref, f"{qtype} dequantize (raw random bytes, NaN payloads included)")


def test_block_geometry_matches_ggml() -> None:
    eg = _gguf()
    bad = {}
    for qtype in TYPES:
        c, t = eg.get_codec(qtype), ggml_peer.ggml_type(qtype)
        if (c.type_id, c.block_size, c.type_size) != (t.type_id, t.block_size, t.type_size):
            bad[qtype] = {
                "edgequant": (c.type_id, c.block_size, c.type_size),
                "ggml": (t.type_id, t.block_size, t.type_size),
            }
    assert not bad, f"(type_id, block_size, type_size) differ from this libggml-base: {bad}"


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_of_ggml_output_matches(qtype: str) -> None:
    """Decode what ggml itself wrote for the edge-case rows (real, not random, scale/code combinations)."""
    eg = _gguf()
    _names, x = _inputs(512)
    data = ggml_peer.ggml_quantize(x, qtype, imatrix_cases(512, SEED)["random"])
    ref = ggml_peer.ggml_dequantize(data, qtype, x.shape)
    ours = eg.dequantize(data, qtype, x.shape)
    assert_same_bits(np.asarray(ours), ref, f"{qtype} dequantize of ggml's bytes")


@pytest.mark.parametrize("qtype", TYPES)
def test_threads_do_not_change_bytes(qtype: str) -> None:
    eg = _gguf()
    g = np.random.default_rng([SEED, 77])
    x = g.standard_normal((37, 1024)).astype(np.float32)
    qw = imatrix_cases(1024, SEED)["random"]
    one = _quantize(eg, x, qtype, qw, threads=1)
    two = _quantize(eg, x, qtype, qw, threads=2)
    names = ["gauss"] * x.shape[0]
    assert_same_bytes(two, one, names, f"{qtype} threads=2 vs threads=1")
    assert_same_bytes(one, ggml_peer.ggml_quantize(x, qtype, qw), names, f"{qtype} threads=1 vs ggml")


@pytest.mark.parametrize("qtype", [t for t in TYPES if t not in ("F32", "F16", "BF16", "Q8_1", "Q8_K")])
def test_overflow_warning_matches_ggml_validation(qtype: str) -> None:
    """edgequant warns for exactly the rows that ggml_validate_row_data rejects (fp16 scale overflow)."""
    eg = _gguf()
    codec = eg.get_codec(qtype)
    names, x = row_cases(512, ROWS_PER_CASE, SEED, families=["mag_1e4", "mag_1e6", "fp16_edge", "gauss"])
    ref = ggml_peer.ggml_quantize(x, qtype)
    rejected = [i for i in range(ref.shape[0]) if ggml_peer.validate_row_data(qtype, ref[i], []) is False]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = eg.quantize(x, qtype)
    assert_same_bytes(ours, ref, names, f"{qtype} large magnitudes")
    from edgequant.gguf.codecs import nonfinite_scale_rows

    flagged = nonfinite_scale_rows(ours, codec).tolist()
    assert flagged == rejected, f"{qtype}: edgequant flags rows {flagged}, ggml rejects rows {rejected}"
    warned = any(issubclass(w.category, RuntimeWarning) for w in caught)
    assert warned == bool(rejected), (
        f"{qtype}: RuntimeWarning raised={warned}, ggml rejected {len(rejected)} rows"
    )
