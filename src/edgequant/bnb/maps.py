"""bitsandbytes' generated code tables: ``create_dynamic_map`` (full signature), ``create_linear_map``,
``create_fp8_map``; each a 256-entry float32 tensor, bit-identical to bnb 0.50.2 (no CPU dependence).

- ``create_linear_map(signed, total_bits, add_zero)``: ``torch.linspace(-1 or 0, 1, 2**bits)`` float32
  (``2**bits - 1`` points when signed and ``add_zero`` or ``total_bits < 8``, so 0 is a point); fewer than
  256 values are padded with zeros inserted in the middle (after the first half), as bnb does.
- ``create_fp8_map(signed, exponent_bits, precision_bits, total_bits)``: every (exponent, mantissa) pattern
  decoded in Python floats: normals ``(1 + m) * 2**-(e - 2**(E-1) - 1)``, subnormals (e = 0)
  ``m * 2**-(2**(E-1))``, with negatives when signed; zero-padded to 256, sorted, then divided by the
  maximum in float32. ``exponent_bits + precision_bits`` must be ``total_bits - signed``.
- ``create_dynamic_map(signed, max_exponent_bits, total_bits)``: for i < max_exponent_bits, the centres of
  ``torch.linspace(0.1, 1, 2**(i + total_bits - 1 - max_exponent_bits) + 1)`` (float32, one more exponent
  step of points when unsigned) times ``10**(i - max_exponent_bits + 1)`` (a Python float times the float32
  tensor, i.e. a float32 multiply), their negatives when signed, ``2**(total_bits - 1 - max_exponent_bits)
  - 1`` extra centres at the last scale, 0 and 1, zero-padded to 256 and sorted. With the defaults
  (True, 7, 8) this is the table of ``codes.dynamic_map_np``.
"""

from __future__ import annotations

import itertools

import torch

from edgequant.errors import ConfigError


def _pad_256(values: list[float], what: str) -> list[float]:
    if len(values) > 256:
        raise ConfigError(f"{what}: {len(values)} values do not fit a 256-entry code; use total_bits <= 8")
    return values + [0.0] * (256 - len(values))


def create_linear_map(signed: bool = True, total_bits: int = 8, add_zero: bool = True) -> torch.Tensor:
    """bnb's linear map (see the module docstring)."""
    if not 1 <= int(total_bits) <= 8:
        raise ConfigError(f"create_linear_map: total_bits={total_bits!r} must be in 1..8")
    total = 2**total_bits
    if (add_zero or total_bits < 8) and signed:
        total -= 1
    values = torch.linspace(-1.0 if signed else 0.0, 1.0, total)
    gap = 256 - values.numel()
    if gap == 0:
        return values
    half = values.numel() // 2
    return torch.tensor(values[:half].tolist() + [0.0] * gap + values[half:].tolist(), dtype=torch.float32)


def create_fp8_map(
    signed: bool = True, exponent_bits: int = 5, precision_bits: int = 2, total_bits: int = 8
) -> torch.Tensor:
    """bnb's float map (see the module docstring); e.g. bnb's FP4 is (True, 2, 1, 4)."""
    if exponent_bits + precision_bits != total_bits - (1 if signed else 0):
        raise ConfigError(
            f"create_fp8_map: exponent_bits {exponent_bits} + precision_bits {precision_bits} must equal "
            f"total_bits {total_bits} minus the sign bit ({int(bool(signed))})"
        )
    bias = 2 ** (exponent_bits - 1)
    values: list[float] = []
    for evalue in range(2**exponent_bits):
        for pattern in itertools.product([0, 1], repeat=precision_bits):
            value = 1.0 if evalue != 0 else 0.0
            for i, bit in enumerate(pattern):
                value += bit * 2.0 ** -(i + 1)
            value *= 2.0**-bias if evalue == 0 else 2.0 ** -(evalue - bias - 1)
            values.append(value)
            if signed:
                values.append(-value)
    code = torch.tensor(sorted(_pad_256(sorted(values), "create_fp8_map")))
    return code / code.max()


def _centres(n_points: int) -> torch.Tensor:
    bounds = torch.linspace(0.1, 1, n_points, dtype=torch.float32)
    return (bounds[:-1] + bounds[1:]) / 2.0


def create_dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """bnb's dynamic map with its full signature (see the module docstring)."""
    if not 1 <= max_exponent_bits <= total_bits or total_bits > 8:
        raise ConfigError(
            f"create_dynamic_map: max_exponent_bits={max_exponent_bits} must be in 1..total_bits and "
            f"total_bits={total_bits} at most 8"
        )
    data: list[float] = []
    non_sign_bits = total_bits - 1
    extra = 2 ** (non_sign_bits - max_exponent_bits) - 1
    scale = 1.0
    for i in range(max_exponent_bits):
        shift = i + non_sign_bits - max_exponent_bits
        means = _centres(int(2**shift + 1 if signed else 2 ** (shift + 1) + 1))
        scale = 10 ** (-(max_exponent_bits - 1) + i)
        data += (scale * means).tolist()
        if signed:
            data += (-scale * means).tolist()
    if extra > 0:  # bnb puts these at the last decade's scale
        means = _centres(extra + 1)
        data += (scale * means).tolist()
        if signed:
            data += (-scale * means).tolist()
    data += [0.0, 1.0]
    if len(data) != 2**total_bits:
        raise ConfigError(
            f"create_dynamic_map(signed={signed}, max_exponent_bits={max_exponent_bits}, "
            f"total_bits={total_bits}): {len(data)} values, not {2**total_bits}"
        )
    return torch.tensor(sorted(_pad_256(data, "create_dynamic_map")), dtype=torch.float32)
