"""Registers every ggml codec edgequant implements. Imported once, lazily, by ``codecs.get_codec``.

Block geometry (block_size, type_size) comes from ``reader.QUANT_SIZES`` (gguf-py's ``GGML_QUANT_SIZES`` with
ggml's 36-byte Q8_1), the one table the reader, the writer and the codecs share; the byte layouts are
documented in each kernel module. Kernels are named, not imported (``codecs.KernelRef``): registering the
codecs imports neither numba nor any kernel module.
"""

from __future__ import annotations

from gguf.constants import GGMLQuantizationType

from edgequant.gguf.codecs import Codec, KernelRef, register_codec
from edgequant.gguf.reader import QUANT_SIZES


class _KernelModule:
    """``floats.quantize_f32`` below is ``KernelRef("edgequant.kernels.floats", "quantize_f32")``."""

    def __init__(self, name: str) -> None:
        self._module = f"edgequant.kernels.{name}"

    def __getattr__(self, attr: str) -> KernelRef:
        return KernelRef(self._module, attr)


floats, iq4, kquants, legacy = (_KernelModule(m) for m in ("floats", "iq4", "kquants", "legacy"))


def _add(name, quant, dequant, uses_imatrix, in_files=True, fp16_fields=()):
    t = GGMLQuantizationType[name]
    block, size = QUANT_SIZES[t]
    register_codec(Codec(name, int(t), block, size, quant, dequant, uses_imatrix, in_files, fp16_fields))


_add("F32", floats.quantize_f32, floats.dequantize_f32, False)
_add("F16", floats.quantize_f16, floats.dequantize_f16, False)
_add("BF16", floats.quantize_bf16, floats.dequantize_bf16, False)
_add("Q4_0", legacy.quantize_q4_0, legacy.dequantize_q4_0, True, fp16_fields=(0,))
_add("Q4_1", legacy.quantize_q4_1, legacy.dequantize_q4_1, True, fp16_fields=(0, 2))
_add("Q5_0", legacy.quantize_q5_0, legacy.dequantize_q5_0, True, fp16_fields=(0,))
_add("Q5_1", legacy.quantize_q5_1, legacy.dequantize_q5_1, True, fp16_fields=(0, 2))
_add("Q8_0", legacy.quantize_q8_0, legacy.dequantize_q8_0, False, fp16_fields=(0,))
_add("Q8_1", legacy.quantize_q8_1, legacy.dequantize_q8_1, False, in_files=False)
_add("Q2_K", kquants.quantize_q2_k, kquants.dequantize_q2_k, True, fp16_fields=(80, 82))
_add("Q3_K", kquants.quantize_q3_k, kquants.dequantize_q3_k, True, fp16_fields=(108,))
_add("Q4_K", kquants.quantize_q4_k, kquants.dequantize_q4_k, True, fp16_fields=(0, 2))
_add("Q5_K", kquants.quantize_q5_k, kquants.dequantize_q5_k, True, fp16_fields=(0, 2))
_add("Q6_K", kquants.quantize_q6_k, kquants.dequantize_q6_k, True, fp16_fields=(208,))
_add("Q8_K", kquants.quantize_q8_k, kquants.dequantize_q8_k, False, in_files=False)
_add("IQ4_NL", iq4.quantize_iq4_nl, iq4.dequantize_iq4_nl, True, fp16_fields=(0,))
_add("IQ4_XS", iq4.quantize_iq4_xs, iq4.dequantize_iq4_xs, True, fp16_fields=(0,))
