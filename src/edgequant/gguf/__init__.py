"""GGUF and llama.cpp's quantization formats: block codecs, files, ftype mixtures, importance matrices.

Public API::

    quantize(x, qtype, imatrix=None, *, threads=None) -> uint8 (rows, row_bytes)
    dequantize(data, qtype, shape) -> float32
    get_codec(qtype) -> Codec      (block size, type size, bits per weight)

Runs with numpy and numba alone (no torch).
"""

from edgequant.gguf.codecs import CODECS, Codec, codec_names, dequantize, get_codec, quantize

__all__ = ["CODECS", "Codec", "codec_names", "dequantize", "get_codec", "quantize"]
