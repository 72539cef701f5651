"""Seeded test inputs for codec comparisons: ordinary and adversarial float32 rows, and imatrix vectors.

Shared by the llama.cpp reference tests, the golden-fixture generator (``scripts/make_golden.py``) and
the golden tests, so the fixtures only need to store a seed and the expected bytes.

``row_cases(n_per_row, rows_per_case, seed)`` returns ``(names, x)``: one label per row and a float32
matrix whose rows come from many families (gaussian, uniform, heavy tails, zeros, ties, spikes, tiny
and huge magnitudes ...). ``imatrix_cases(n_per_row, seed)`` returns named importance vectors
(random, all-zero, sparse, ...). Everything is a pure function of its arguments (numpy PCG64).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

Family = Callable[[np.random.Generator, int, int], np.ndarray]


def _gauss(scale: float) -> Family:
    return lambda g, r, n: g.standard_normal((r, n)) * scale


def _blockwise(fn: Callable[[np.random.Generator, int, int], np.ndarray], block: int = 32) -> Family:
    """Apply ``fn`` to get rows, then zero every other ``block``-wide chunk."""

    def f(g: np.random.Generator, r: int, n: int) -> np.ndarray:
        x = fn(g, r, n)
        mask = (np.arange(n) // block) % 2 == 1
        x[:, mask] = 0.0
        return x

    return f


def _spike(g: np.random.Generator, r: int, n: int) -> np.ndarray:
    x = np.zeros((r, n))
    for i in range(r):
        x[i, g.integers(n)] = g.choice([-1.0, 1.0]) * 10.0 ** g.uniform(-3, 3)
    return x


def _spike_on_noise(g: np.random.Generator, r: int, n: int) -> np.ndarray:
    x = g.standard_normal((r, n)) * 0.01
    for i in range(r):
        k = g.integers(1, 4)
        x[i, g.integers(0, n, size=k)] = g.choice([-1.0, 1.0], size=k) * g.uniform(5, 50, size=k)
    return x


def _outliers(g: np.random.Generator, r: int, n: int) -> np.ndarray:
    x = g.standard_normal((r, n))
    m = g.random((r, n)) < 0.01
    x[m] *= 100.0
    return x


def _block_scales(g: np.random.Generator, r: int, n: int) -> np.ndarray:
    """Each 16-block has its own magnitude between 1e-4 and 1e3."""
    x = g.standard_normal((r, n))
    s = 10.0 ** g.uniform(-4, 3, size=(r, n // 16))
    return x * np.repeat(s, 16, axis=1)


def _sym_ties(g: np.random.Generator, r: int, n: int) -> np.ndarray:
    """Blocks whose max |x| appears with both signs (first-occurrence tie rules)."""
    x = g.uniform(-1, 1, (r, n))
    for b in range(0, n, 16):
        x[:, b] = 1.0
        x[:, b + 7] = -1.0
    return x


def _small_ints(g: np.random.Generator, r: int, n: int) -> np.ndarray:
    return g.integers(-8, 8, (r, n)).astype(np.float64)


def _grid(step: float, lo: int, hi: int) -> Family:
    return lambda g, r, n: g.integers(lo, hi + 1, (r, n)) * step


def _constant(g: np.random.Generator, r: int, n: int) -> np.ndarray:
    c = g.choice([-1.0, 1.0], size=(r, 1)) * 10.0 ** g.uniform(-3, 2, size=(r, 1))
    return np.repeat(c, n, axis=1)


def _ramp(g: np.random.Generator, r: int, n: int) -> np.ndarray:
    base = np.linspace(-1.0, 1.0, n)
    return np.stack([base * 10.0 ** g.uniform(-2, 2) for _ in range(r)])


def _sparse(g: np.random.Generator, r: int, n: int) -> np.ndarray:
    return g.standard_normal((r, n)) * (g.random((r, n)) < 0.1)


def _fp16_edge(g: np.random.Generator, r: int, n: int) -> np.ndarray:
    """Magnitudes near fp16's max (65504) and min normal (6.1e-5)."""
    x = g.standard_normal((r, n))
    half = r // 2
    x[:half] *= 6.0e4 / np.abs(x[:half]).max(axis=1, keepdims=True)
    x[half:] *= 6.1e-5
    return x


FAMILIES: dict[str, Family] = {
    "gauss": _gauss(1.0),
    "gauss_w": _gauss(0.02),
    "uniform": lambda g, r, n: g.uniform(-1, 1, (r, n)),
    "positive": lambda g, r, n: g.uniform(0, 1, (r, n)),
    "negative": lambda g, r, n: -g.uniform(0, 1, (r, n)),
    "pos_offset": lambda g, r, n: 3.0 + g.standard_normal((r, n)) * 0.1,
    "student_t2": lambda g, r, n: g.standard_t(2.0, (r, n)),
    "laplace": lambda g, r, n: g.laplace(0.0, 1.0, (r, n)),
    "outliers": _outliers,
    "zeros": lambda g, r, n: np.zeros((r, n)),
    "half_zero_blocks": _blockwise(_gauss(1.0), 32),
    "half_zero_16": _blockwise(_gauss(1.0), 16),
    "half_zero_256": _blockwise(_gauss(1.0), 256),
    "sparse": _sparse,
    "constant": _constant,
    "ramp": _ramp,
    "grid_0.25": _grid(0.25, -16, 16),
    "grid_0.5": _grid(0.5, -8, 8),
    "small_ints": _small_ints,
    "sym_ties": _sym_ties,
    "spike": _spike,
    "spike_on_noise": _spike_on_noise,
    "block_scales": _block_scales,
    "mag_1e-9": _gauss(1e-9),
    "mag_1e-20": _gauss(1e-20),
    "mag_1e-30": _gauss(1e-30),
    "mag_1e4": _gauss(1e4),
    "mag_1e6": _gauss(1e6),
    "fp16_edge": _fp16_edge,
}


def row_cases(
    n_per_row: int, rows_per_case: int = 4, seed: int = 0, families: list[str] | None = None
) -> tuple[list[str], np.ndarray]:
    """Rows from every family (``rows_per_case`` each), float32 ``(len(families)*rows_per_case, n_per_row)``.

    Each family has its own generator stream (seed, family index), so adding a family does not change
    the others. ``half_zero_256`` needs n_per_row >= 512 to have any zero block; it is kept anyway.
    """
    names: list[str] = []
    parts: list[np.ndarray] = []
    keys = list(FAMILIES) if families is None else families
    all_keys = list(FAMILIES)
    for key in keys:
        g = np.random.default_rng([seed, all_keys.index(key), n_per_row])
        x = np.asarray(FAMILIES[key](g, rows_per_case, n_per_row), np.float64).astype(np.float32)
        parts.append(x)
        names += [key] * rows_per_case
    return names, np.ascontiguousarray(np.concatenate(parts, axis=0))


def imatrix_cases(n_per_row: int, seed: int = 0) -> dict[str, np.ndarray | None]:
    """Named importance vectors of length ``n_per_row`` (float32), plus ``"none"`` -> None."""
    g = np.random.default_rng([seed, 1000, n_per_row])
    random = np.exp(g.standard_normal(n_per_row) * 1.5).astype(np.float32)
    sparse = np.where(g.random(n_per_row) < 0.1, g.uniform(0.1, 10.0, n_per_row), 0.0).astype(np.float32)
    wide = (10.0 ** g.uniform(-6, 4, n_per_row)).astype(np.float32)
    return {
        "none": None,
        "random": random,
        "zeros": np.zeros(n_per_row, np.float32),
        "sparse": sparse,
        "ones": np.ones(n_per_row, np.float32),
        "wide_range": wide,
    }


def sha256(a: np.ndarray) -> str:
    """Hex SHA-256 of an array's bytes (C order)."""
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def random_blocks(
    type_size: int,
    n_blocks: int,
    fp16_fields: tuple[int, ...],
    seed: int = 0,
    f32_fields: tuple[int, ...] = (),
    finite: bool = True,
) -> np.ndarray:
    """Random block bytes (uint8 ``(n_blocks, type_size)``) whose scale fields hold random values.

    ``fp16_fields`` / ``f32_fields``: byte offsets of fp16 / fp32 scales; with ``finite`` they get random
    finite values of every magnitude (subnormals included), otherwise they are left as random bits.
    """
    g = np.random.default_rng([seed, type_size, n_blocks])
    b = g.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
    if finite:
        for off in fp16_fields:
            h = g.integers(0, 0x10000, n_blocks, dtype=np.uint32).astype(np.uint16)
            h = np.where((h & 0x7C00) == 0x7C00, h & 0xBBFF, h).astype(np.uint16)  # clear an exp bit
            b[:, off : off + 2] = h.view(np.uint8).reshape(n_blocks, 2)
        for off in f32_fields:
            f = (g.standard_normal(n_blocks) * 10.0 ** g.uniform(-30, 30, n_blocks)).astype(np.float32)
            b[:, off : off + 4] = f.view(np.uint8).reshape(n_blocks, 4)
    return b
