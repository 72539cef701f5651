"""Frozen, self-validating configs for ``quantize_(model, config)``.

Common fields (which layers, and the precision escape hatch):

- ``include`` / ``exclude``: fnmatch patterns on qualified module names (``"model.layers.*.mlp.*"``).
  A layer is quantized when it matches some include pattern and no exclude pattern.
- ``skip_modules``: names whose last component (or full name) matches are never quantized; default
  ``("lm_head",)`` -- the output head is the most error-sensitive layer and is often tied to the embeddings.
- ``keep_high_precision_above``: if set, a layer whose relative weight error
  ``||W - dequant(quant(W))||_F / ||W||_F`` exceeds this threshold stays in float (reported by quantize_).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from edgequant.bnb.checks import BLOCKSIZES
from edgequant.errors import ConfigError

COMPUTE_DTYPES = ("float32", "bfloat16")


def _check_patterns(name: str, value) -> None:
    if isinstance(value, str) or not all(isinstance(p, str) for p in value):
        raise ConfigError(f"{name} must be a tuple of pattern strings, got {value!r} (write ('{value}',))")


@dataclass(frozen=True)
class _LayerSelection:
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    skip_modules: tuple[str, ...] = ("lm_head",)
    keep_high_precision_above: float | None = None

    def __post_init__(self):
        for f in ("include", "exclude", "skip_modules"):
            value = getattr(self, f)
            _check_patterns(f, value)
            object.__setattr__(self, f, tuple(value))
        k = self.keep_high_precision_above
        if k is not None and not (isinstance(k, int | float) and math.isfinite(k) and k > 0):
            raise ConfigError(f"keep_high_precision_above must be a positive number or None, got {k!r}")

    def to_dict(self) -> dict:
        return {"_type": type(self).__name__, "_version": 1, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class _FourBitConfig(_LayerSelection):
    blocksize: int = 64
    compress_statistics: bool = True
    compute_dtype: str = "float32"
    bnb_cpu_compatible: bool = False

    quant_type = "nf4"

    def __post_init__(self):
        super().__post_init__()
        if self.blocksize not in BLOCKSIZES:
            raise ConfigError(f"{type(self).__name__}: blocksize={self.blocksize!r} not in {BLOCKSIZES}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(
                f"{type(self).__name__}: compute_dtype={self.compute_dtype!r} not in {COMPUTE_DTYPES}"
            )


@dataclass(frozen=True)
class NF4Config(_FourBitConfig):
    """NF4 weights (QLoRA), double quantization on by default -> Linear4bit."""

    quant_type = "nf4"


@dataclass(frozen=True)
class FP4Config(_FourBitConfig):
    """bitsandbytes' FP4 weights -> Linear4bit."""

    quant_type = "fp4"


@dataclass(frozen=True)
class Int8Config(_LayerSelection):
    """LLM.int8 -> Linear8bitLt; outlier threshold 6.0 (0 disables the mixed decomposition)."""

    threshold: float = 6.0

    def __post_init__(self):
        super().__post_init__()
        if not (
            isinstance(self.threshold, int | float) and self.threshold >= 0 and math.isfinite(self.threshold)
        ):
            raise ConfigError(f"Int8Config: threshold must be a finite number >= 0, got {self.threshold!r}")


@dataclass(frozen=True)
class Int8DynamicConfig(_LayerSelection):
    """int8 weights per output row + int8 activations quantized per token or per tensor at run time."""

    granularity: str = "per_token"
    percentile: float = 99.9

    def __post_init__(self):
        super().__post_init__()
        if self.granularity not in ("per_token", "per_tensor"):
            raise ConfigError(
                f"Int8DynamicConfig: granularity={self.granularity!r}; use 'per_token' or 'per_tensor'"
            )
        if not (isinstance(self.percentile, int | float) and 0 < self.percentile <= 100):
            raise ConfigError(f"Int8DynamicConfig: percentile={self.percentile!r} must be in (0, 100]")


CONFIG_TYPES = {c.__name__: c for c in (NF4Config, FP4Config, Int8Config, Int8DynamicConfig)}


def config_from_dict(d: dict):
    """Inverse of ``config.to_dict()``."""
    d = dict(d)
    name = d.pop("_type", None)
    d.pop("_version", None)
    if name not in CONFIG_TYPES:
        raise ConfigError(f"unknown quantization config type {name!r}; known: {sorted(CONFIG_TYPES)}")
    for k in ("include", "exclude", "skip_modules"):
        if k in d:
            d[k] = tuple(d[k])
    return CONFIG_TYPES[name](**d)
