"""Reading and writing the integer codes of ggml blocks, with every scale and min field left as it is.

Each element of a block stores a code index k (0..K-1, into the ascending codebook of
:mod:`edgequant.analysis.codec_grids`) in a few bits scattered over the block's code regions
(``codec_grids._LAYOUTS``: nibbles, high-bit planes, 2-bit planes, Q3_K's hmask...). Where those bits are is
not written out by hand here: it is read off ggml's own decoder, once per type, by probing one block.

* a block of seeded normal values is quantized by the codec and every code region set to the byte it holds
  when every code index is 0 (``base``); the block is decoded (``y0``);
* each bit of each code-region byte is flipped alone and the block decoded again; exactly one element ``e``
  changes, by ``a_g * (c_k - c_0)`` (``a_g`` the element's group step, from ``codec_grid``; ``c`` the
  codebook) with ``k = 2**b``, which says that bit ``b`` of element ``e``'s code index lives at that byte
  under that mask. In every type the code index
  bits are stored either plainly or, for Q8_0/Q8_1/Q8_K's sign bit, inverted; both read as an XOR with
  ``base``.

Packing is then linear: the region bytes are ``base XOR (sum over the set bits of each element's index of
their masks)`` (distinct bits of one byte, so the sum is their OR), one small integer matrix product per
tensor; extracting reads the same bits back.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from edgequant.analysis.codec_grids import _LAYOUTS, codec_grid
from edgequant.errors import ConfigError, ShapeError
from edgequant.gguf.codecs import dequantize, get_codec, quantize


@dataclass(frozen=True)
class CodeMap:
    """Where each element's code-index bits live in one block of a ggml type."""

    name: str
    block: int  # elements per block
    type_size: int  # bytes per block
    n_codes: int  # K
    base: np.ndarray  # uint8 [type_size]: the code-region bytes when every index is 0 (0 elsewhere)
    region: np.ndarray  # uint8 [type_size]: 0xFF over the code regions, 0 over the scale fields
    pack: np.ndarray  # int32 [block * nbits, type_size]: mask of bit b of element e at row e*nbits+b
    byte_at: np.ndarray  # int64 [block, nbits]
    mask_at: np.ndarray  # uint8 [block, nbits]

    @property
    def nbits(self) -> int:
        return self.byte_at.shape[1]


def supported_types() -> tuple[str, ...]:
    """ggml types whose codes can be rewritten (every type with an error model but the activation types)."""
    return tuple(t for t in _LAYOUTS if t not in ("Q8_1", "Q8_K"))


@cache
def code_map(qtype: str) -> CodeMap:
    """The probed bit map of ``qtype`` (module docstring). Raises ConfigError for a type without one."""
    codec = get_codec(qtype)
    name = codec.name
    layout = _LAYOUTS.get(name)
    if layout is None or name not in supported_types():
        raise ConfigError(f"{name}: codes cannot be rewritten in this type; use one of {supported_types()}")
    n = codec.block_size
    x = np.random.default_rng(12).standard_normal((1, n)).astype(np.float32)
    raw = quantize(x, name)[0]
    _, grid = codec_grid(x, name)
    if grid is None or np.any(grid.scale == 0):
        raise ConfigError(f"{name}: the probe block has a zero step; cannot map its code bits")
    step = grid.per_element(grid.scale, n)
    book = np.asarray(layout.codebook, np.float64)
    region = np.zeros(codec.type_size, np.uint8)
    base = raw.copy()
    for start, stop, byte in layout.regions:
        region[start:stop] = 0xFF
        base[start:stop] = byte(0)
    y0 = dequantize(base, name, (1, n))[0].astype(np.float64)
    nbits = int(np.ceil(np.log2(len(layout.codebook))))
    byte_at = np.full((n, nbits), -1, np.int64)
    mask_at = np.zeros((n, nbits), np.uint8)
    for p in np.flatnonzero(region):
        for bit in range(8):
            probe = base.copy()
            probe[p] ^= np.uint8(1 << bit)
            diff = dequantize(probe, name, (1, n))[0].astype(np.float64) - y0
            changed = np.flatnonzero(diff)
            if changed.size != 1:
                raise ConfigError(f"{name}: byte {p} bit {bit} changes {changed.size} elements; cannot map")
            e = int(changed[0])
            k = int(np.argmin(np.abs(diff[e] / step[e] + book[0] - book)))  # the index this bit gives
            b = int(np.rint(np.log2(max(k, 1))))
            if k != 1 << b:
                raise ConfigError(f"{name}: byte {p} bit {bit} moves a code to index {k}; cannot map")
            byte_at[e, b], mask_at[e, b] = p, 1 << bit
    if np.any(byte_at < 0):
        raise ConfigError(f"{name}: some code bits were not found in the code regions")
    pack = np.zeros((n * nbits, codec.type_size), np.int32)
    pack[np.arange(n * nbits), byte_at.reshape(-1)] = mask_at.reshape(-1)
    return CodeMap(
        name, n, codec.type_size, len(layout.codebook), base & region, region, pack, byte_at, mask_at
    )


def _blocks(raw: np.ndarray, cmap: CodeMap, shape: tuple[int, int]) -> np.ndarray:
    rows, n = shape
    if n % cmap.block or raw.size != rows * (n // cmap.block) * cmap.type_size:
        raise ShapeError(f"{cmap.name}: {raw.size} bytes do not hold a {rows}x{n} tensor")
    return np.ascontiguousarray(raw, np.uint8).reshape(-1, cmap.type_size)


def extract_codes(raw: np.ndarray, qtype: str, shape: tuple[int, int]) -> np.ndarray:
    """The code index (int64, 0..K-1) of every element of a (rows, n) tensor's block bytes."""
    cmap = code_map(qtype)
    blocks = _blocks(raw, cmap, shape) ^ cmap.base
    bits = (blocks[:, cmap.byte_at] & cmap.mask_at) != 0  # [nblocks, block, nbits]
    codes = (bits.astype(np.int64) << np.arange(cmap.nbits)).sum(-1)
    return codes.reshape(shape)


def pack_codes(raw: np.ndarray, codes: np.ndarray, qtype: str) -> np.ndarray:
    """``raw`` (rows, row_bytes) with every code replaced by ``codes`` (rows, n) int, 0..K-1; the scale and
    min fields are copied unchanged."""
    cmap = code_map(qtype)
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ShapeError(f"codes must be (rows, n), got shape {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= cmap.n_codes):
        raise ConfigError(f"{cmap.name}: code indices must lie in 0..{cmap.n_codes - 1}")
    blocks = _blocks(raw, cmap, codes.shape)
    bits = ((codes.reshape(-1, cmap.block, 1) >> np.arange(cmap.nbits)) & 1).astype(np.int32)
    delta = bits.reshape(blocks.shape[0], -1) @ cmap.pack
    out = (blocks & ~cmap.region) | (cmap.base ^ delta.astype(np.uint8))
    return out.reshape(np.asarray(raw).shape)
