"""Bits per parameter of 4-bit states, with and without double quantization.

Formula (QLoRA paper, section 3): 4 bits of code, plus the absmax per block.

- plain: ``4 + 32 / blocksize`` (float32 absmax) -> 4.5 at blocksize 64: overhead 0.5 bit/param.
- double quantization: ``4 + 8 / blocksize + 32 / (blocksize * 256)`` (uint8 absmax, a float32 absmax per 256
  of them) -> 4.127 at blocksize 64: overhead 0.127 bit/param. The float32 offset (32 bits per tensor) is
  counted by ``measured_bits_per_parameter`` but not by the asymptotic formula.
"""

from __future__ import annotations

import math

import torch

from edgequant.bnb.checks import check_blocksize
from edgequant.bnb.quant_state import QuantState


def bits_per_parameter(
    blocksize: int = 64, compress_statistics: bool = False, nested_blocksize: int = 256
) -> float:
    """Asymptotic bits per parameter of a 4-bit state (the QLoRA paper's figures)."""
    check_blocksize(blocksize)
    if not compress_statistics:
        return 4.0 + 32.0 / blocksize
    return 4.0 + 8.0 / blocksize + 32.0 / (blocksize * nested_blocksize)


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def state_bytes(packed: torch.Tensor, state: QuantState) -> dict[str, int]:
    """Bytes of each part actually stored: codes, absmax, nested absmax, offset (code tables excluded)."""
    parts = {"codes": _nbytes(packed), "absmax": _nbytes(state.absmax)}
    if state.nested:
        parts["nested_absmax"] = _nbytes(state.state2.absmax)
        parts["offset"] = 4
    return parts


def measured_bits_per_parameter(packed: torch.Tensor, state: QuantState) -> float:
    """8 * stored bytes / parameters, from the tensors themselves (code tables excluded: shared constants)."""
    n = math.prod(state.shape) if state.shape is not None else packed.numel()
    return 8.0 * sum(state_bytes(packed, state).values()) / n
