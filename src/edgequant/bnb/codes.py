"""Code tables of bitsandbytes: NF4, FP4 and the dynamic 8-bit map, bit-identical to bnb 0.50.2.

- NF4 (QLoRA, Dettmers et al. 2023): 16 float32 values sorted ascending; the 4-bit code is the index.
- FP4 (bnb's e2m1 variant): indexed by bit pattern; bit 3 is the sign, magnitudes
  [0, 0.0625, 8, 12, 4, 6, 2, 3] / 12 in float32. Pattern 0b1000 ("-0") is stored as +0.0.
- Dynamic map (``create_dynamic_map``): 256 float32 values built with torch float32 ops, exactly as bnb:
  for decade e = 0..6, the centres ``(a + b) / 2`` of ``torch.linspace(0.1, 1.0, 2**e + 1)`` (signed) or
  ``2**(e+1) + 1`` points (unsigned) times ``float32(10**(e-6))``, plus their negatives (signed), plus 0 and
  1, sorted. NumPy's linspace differs in the last bit for 22 values, hence torch.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from edgequant.bnb import maps
from edgequant.errors import UnsupportedTypeError

NF4_VALUES = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)

_FP4_MAGNITUDES = (0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0)

QUANT_TYPES = ("nf4", "fp4")


@functools.cache
def _nf4() -> np.ndarray:
    return np.array(NF4_VALUES, dtype=np.float32)


@functools.cache
def _fp4() -> np.ndarray:
    mags = np.array(_FP4_MAGNITUDES, dtype=np.float32) / np.float32(12.0)
    table = np.concatenate([mags, -mags]).astype(np.float32)
    table[8] = 0.0  # bnb stores the "-0" pattern as +0.0
    return table


def code_table_np(quant_type: str) -> np.ndarray:
    """The 16-entry float32 table indexed by 4-bit code (a read-only numpy view)."""
    if quant_type == "nf4":
        t = _nf4()
    elif quant_type == "fp4":
        t = _fp4()
    else:
        raise UnsupportedTypeError(f"quant_type {quant_type!r} is not supported; use one of {QUANT_TYPES}")
    t.flags.writeable = False
    return t


def get_4bit_type(quant_type: str) -> torch.Tensor:
    """bitsandbytes' ``get_4bit_type``: the 16-entry float32 table as a fresh tensor."""
    return torch.from_numpy(code_table_np(quant_type).copy())


@functools.cache
def _sorted_order(quant_type: str) -> tuple[np.ndarray, np.ndarray]:
    """(sorted index -> code, float32 midpoints between neighbouring sorted values).

    The sort is stable (torch.argsort on CPU sorts the FP4 +0 of pattern 0b0000 before the +0.0 stored for
    0b1000), so scaled values in (-0.0026, 0] get 0b0000 and (0, 0.0026] get 0b1000, as in bnb.
    """
    table = code_table_np(quant_type)
    order = np.argsort(table, kind="stable").astype(np.uint8)
    s = table[order]
    mids = ((s[:-1] + s[1:]) / np.float32(2.0)).astype(np.float32)
    return order, mids


def sorted_codes_and_midpoints(quant_type: str) -> tuple[np.ndarray, np.ndarray]:
    return _sorted_order(quant_type)


@functools.cache
def _dynamic_map(signed: bool) -> np.ndarray:
    out = maps.create_dynamic_map(signed).numpy().astype(np.float32)
    out.flags.writeable = False
    return out


def dynamic_map_np(signed: bool = True) -> np.ndarray:
    """The 256-entry dynamic map as a read-only float32 numpy array."""
    return _dynamic_map(bool(signed))


def create_dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """bitsandbytes' ``create_dynamic_map`` (full signature, see ``bnb.maps``); default table cached."""
    if (max_exponent_bits, total_bits) == (7, 8):
        return torch.from_numpy(dynamic_map_np(signed).copy())
    return maps.create_dynamic_map(signed, max_exponent_bits, total_bits)
