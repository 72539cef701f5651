"""gguf.block_fields.pack_blocks: given scales and codes laid out as ggml blocks (QAT's export path)."""

import numpy as np
import pytest

from edgequant.errors import ShapeError, UnsupportedTypeError
from edgequant.gguf import dequantize, quantize
from edgequant.gguf.block_fields import pack_blocks


def _fields(data: np.ndarray, fmt: str, rows: int, nb: int):
    """Read (codes, d, m) back from ggml blocks: the inverse of pack_blocks, written out for the test."""
    blocks = data.reshape(rows, nb, -1)
    d = blocks[..., 0:2].copy().view(np.float16).astype(np.float32)
    m = blocks[..., 2:4].copy().view(np.float16).astype(np.float32) if fmt == "Q4_1" else np.zeros_like(d)
    if fmt == "Q8_0":
        return blocks[..., 2:].copy().view(np.int8).astype(np.float32), d, m
    qs = blocks[..., 4:] if fmt == "Q4_1" else blocks[..., 2:]
    q = np.concatenate([qs & 15, qs >> 4], axis=-1).astype(np.float32)
    return (q - 8 if fmt == "Q4_0" else q), d, m


@pytest.mark.parametrize("fmt", ["Q4_0", "Q4_1", "Q8_0"])
def test_pack_gives_the_codec_bytes_back(fmt):
    x = np.random.default_rng(3).standard_normal((5, 96)).astype(np.float32)
    x[1, 40:64] = 0.0  # an all-zero block: d = 0
    ref = quantize(x, fmt)
    q, d, m = _fields(ref, fmt, 5, 3)
    assert np.array_equal(pack_blocks(fmt, q, d, m), ref)


@pytest.mark.parametrize(("fmt", "lo", "hi"), [("Q4_0", -8, 7), ("Q4_1", 0, 15), ("Q8_0", -127, 127)])
def test_packed_blocks_dequantize_to_q_times_d_plus_m(fmt, lo, hi):
    rng = np.random.default_rng(4)
    q = rng.integers(lo, hi + 1, size=(3, 2, 32)).astype(np.float32)
    d = rng.standard_normal((3, 2, 1)).astype(np.float16).astype(np.float32)
    m = rng.standard_normal((3, 2, 1)).astype(np.float16).astype(np.float32) if fmt == "Q4_1" else 0 * d
    y = dequantize(pack_blocks(fmt, q, d, m), fmt, (3, 64)).reshape(3, 2, 32)
    assert np.array_equal(y, q * d + m)


def test_errors():
    q = np.zeros((1, 1, 32))
    with pytest.raises(UnsupportedTypeError, match="Q4_K is not one of"):
        pack_blocks("Q4_K", q, q[..., :1])
    with pytest.raises(ShapeError, match="Q4_1 needs the block minimum m"):
        pack_blocks("Q4_1", q, q[..., :1])
    with pytest.raises(ShapeError, match="blocks hold 32 codes, got 16"):
        pack_blocks("Q8_0", q[..., :16], q[..., :1])
