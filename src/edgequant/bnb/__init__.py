"""bitsandbytes-compatible quantization: blockwise 8-bit, NF4/FP4 with double quantization, QuantState.

Same names, arguments and bytes as ``bitsandbytes.functional`` (0.50.2), on plain CPU tensors, so code can
switch between the two. Where bnb's CPU path deviates from its own definition (the 65536-step snapping of its
native 8-bit quantizer, its AVX-512 4-bit dequantization for some shapes) edgequant follows the definition by
default and reproduces bnb CPU with ``bnb_cpu_compatible=True``.
"""

from edgequant.bnb.bits import bits_per_parameter, measured_bits_per_parameter, state_bytes
from edgequant.bnb.blockwise import dequantize_blockwise, quantize_blockwise, recover_absmax
from edgequant.bnb.checks import BLOCKSIZES
from edgequant.bnb.codes import NF4_VALUES, create_dynamic_map, get_4bit_type
from edgequant.bnb.fourbit import (
    bnb_dequant4bit_is_misindexed,
    dequantize_4bit,
    dequantize_fp4,
    dequantize_nf4,
    quantize_4bit,
    quantize_fp4,
    quantize_nf4,
)
from edgequant.bnb.gemv import gemv_4bit, matmul_4bit
from edgequant.bnb.int8 import (
    int8_linear_matmul,
    int8_mm_dequant,
    int8_vectorwise_dequant,
    int8_vectorwise_quant,
)
from edgequant.bnb.maps import create_fp8_map, create_linear_map
from edgequant.bnb.quant_state import QuantState

__all__ = [
    "BLOCKSIZES",
    "NF4_VALUES",
    "QuantState",
    "bits_per_parameter",
    "bnb_dequant4bit_is_misindexed",
    "create_dynamic_map",
    "create_fp8_map",
    "create_linear_map",
    "dequantize_4bit",
    "dequantize_blockwise",
    "dequantize_fp4",
    "dequantize_nf4",
    "gemv_4bit",
    "get_4bit_type",
    "int8_linear_matmul",
    "int8_mm_dequant",
    "int8_vectorwise_dequant",
    "int8_vectorwise_quant",
    "matmul_4bit",
    "measured_bits_per_parameter",
    "quantize_4bit",
    "quantize_blockwise",
    "quantize_fp4",
    "quantize_nf4",
    "recover_absmax",
    "state_bytes",
]
