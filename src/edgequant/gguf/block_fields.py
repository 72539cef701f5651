"""ggml blocks from given fields: lay out scales and codes chosen elsewhere as a type's bytes.

The codecs' quantizers choose their scales; a caller that has chosen them itself (QAT's learned block
scales, ``qat.ggml_grid``) needs only the layout. ``pack_blocks`` takes the geometry from the codec registry
(block size, bytes per block, the offsets of the fp16 scale fields) and writes, per block (little-endian):

* Q8_0 (34 B): ``d`` fp16 | 32 int8 codes; y = q * d.
* Q4_0 (18 B): ``d`` fp16 | 16 bytes, byte j = (q_j + 8) | (q_{j+16} + 8) << 4; y = q * d, q in [-8, 7].
* Q4_1 (20 B): ``d`` fp16 | ``m`` fp16 | 16 bytes, byte j = q_j | q_{j+16} << 4; y = q * d + m, q in [0, 15].

The bytes dequantize (``edgequant.gguf.dequantize``) to ``q * d (+ m)`` in float32, ggml's decoding.
``unpack_blocks`` is the inverse: the (signed) codes and fp16 fields of such bytes, written by anyone.
"""

from __future__ import annotations

import numpy as np

from edgequant.errors import ShapeError, UnsupportedTypeError
from edgequant.gguf.codecs import get_codec

# type -> (bits per code, offset added to the signed code before storing)
_CODES = {"Q8_0": (8, 0), "Q4_0": (4, 8), "Q4_1": (4, 0)}


def pack_blocks(qtype: str, codes: np.ndarray, d: np.ndarray, m: np.ndarray | None = None) -> np.ndarray:
    """Blocks of ``qtype`` from ``codes`` [rows, n_blocks, block_size] (integer values, any dtype) and the
    fp16-exact scales ``d`` (and, for types with a minimum, ``m``) [rows, n_blocks, 1] → uint8
    (rows, n_blocks * type_size)."""
    codec = get_codec(qtype)
    if codec.name not in _CODES:
        raise UnsupportedTypeError(f"pack_blocks: {codec.name} is not one of {sorted(_CODES)}")
    bits, offset = _CODES[codec.name]
    rows, nb, bs = codes.shape
    if bs != codec.block_size:
        raise ShapeError(f"pack_blocks: {codec.name} blocks hold {codec.block_size} codes, got {bs}")
    scales = [d, m][: len(codec.fp16_scale_fields)]  # the fp16 fields lead the block, 2 bytes each
    if any(s is None for s in scales):
        raise ShapeError(f"pack_blocks: {codec.name} needs the block minimum m")
    fields = [np.asarray(s).astype(np.float16).reshape(rows, nb, 1).view(np.uint8) for s in scales]
    if bits == 8:
        payload = np.asarray(codes).astype(np.int8).view(np.uint8)
    else:
        c = (np.asarray(codes) + offset).astype(np.uint8)
        payload = c[..., : bs // 2] | (c[..., bs // 2 :] << 4)
    out = np.concatenate([*fields, payload], axis=-1)
    return out.reshape(rows, nb * codec.type_size)


def unpack_blocks(qtype: str, raw: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Inverse of ``pack_blocks``: uint8 (rows, n_blocks * type_size) → (codes int16 [rows, n_blocks,
    block_size], d float32 [rows, n_blocks, 1], m float32 or None), codes signed as ``pack_blocks`` takes
    them (Q4_0 in [-8, 7], Q4_1 in [0, 15], Q8_0 in [-128, 127])."""
    codec = get_codec(qtype)
    if codec.name not in _CODES:
        raise UnsupportedTypeError(f"unpack_blocks: {codec.name} is not one of {sorted(_CODES)}")
    bits, offset = _CODES[codec.name]
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    if raw.size % (rows * codec.type_size):
        raise ShapeError(f"unpack_blocks: {raw.size} bytes are not {rows} rows of whole {codec.name} blocks")
    blocks = raw.reshape(rows, -1, codec.type_size)
    n_fields = len(codec.fp16_scale_fields)
    fields = [
        blocks[..., 2 * i : 2 * i + 2].copy().view(np.float16).astype(np.float32) for i in range(n_fields)
    ]
    payload = blocks[..., 2 * n_fields :]
    if bits == 8:
        codes = payload.view(np.int8).astype(np.int16)
    else:
        codes = np.concatenate([payload & 0x0F, payload >> 4], axis=-1).astype(np.int16) - offset
    return codes, fields[0], fields[1] if n_fields > 1 else None
