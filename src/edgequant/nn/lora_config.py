"""``LoraConfig``: which Linear layers get a LoRA adapter, of what rank and scale (frozen, validated).

Module selection follows PEFT 0.21 (``peft.tuners.tuners_utils.check_target_module_exists``) so that an
adapter config round-trips through PEFT and selects the same layers:

- ``target_modules`` as a **list** of names: a module whose full dotted name equals a name, or ends with
  ``"." + name``, is a target (``"q_proj"`` hits ``model.layers.3.self_attn.q_proj``);
- ``target_modules`` as a **string**: a regular expression that must match the whole dotted name
  (``re.fullmatch``); the string ``"all-linear"`` means every Linear layer except the model's output layer;
- ``exclude_modules`` uses the same two rules and wins over ``target_modules``;
- ``rank_pattern`` / ``alpha_pattern`` map a key to a rank / alpha for the modules whose name matches
  ``(.*\\.)?(key)$`` (first key that matches wins, as ``peft.utils.other.get_pattern_key``).

Scaling: ``alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``), as PEFT's ``LoraLayer.update_layer``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from edgequant.errors import ConfigError

ALL_LINEAR = "all-linear"
INIT_CHOICES = ("kaiming", "gaussian", "zeros")


@dataclass(frozen=True)
class LoraConfig:
    """LoRA hyper-parameters.

    r: rank of the update ``B @ A`` (A: r x in_features, B: out_features x r).
    alpha: the update is scaled by ``alpha / r`` (or ``alpha / sqrt(r)`` with ``use_rslora``).
    dropout: dropout probability applied to the adapter's input only (the frozen base sees the plain input).
    target_modules: list of module names (suffix match) or one regex (full match), or ``"all-linear"``.
    exclude_modules: same forms; a module matched here never gets an adapter.
    rank_pattern / alpha_pattern: per-module overrides of ``r`` / ``alpha`` (PEFT's semantics).
    init: ``"kaiming"`` (A ~ kaiming-uniform(a=sqrt 5), B = 0: PEFT's default, the model starts unchanged),
        ``"gaussian"`` (A ~ N(0, 1/r), B = 0) or ``"zeros"`` (A = B = 0; only for tests).
    """

    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | str = ("q_proj", "v_proj")
    exclude_modules: tuple[str, ...] | str | None = None
    rank_pattern: Mapping[str, int] = field(default_factory=dict)
    alpha_pattern: Mapping[str, float] = field(default_factory=dict)
    use_rslora: bool = False
    init: str = "kaiming"

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, (list, set, frozenset)):
            object.__setattr__(self, "target_modules", tuple(sorted(self.target_modules)))
        if isinstance(self.exclude_modules, (list, set, frozenset)):
            object.__setattr__(self, "exclude_modules", tuple(sorted(self.exclude_modules)))
        object.__setattr__(self, "rank_pattern", dict(self.rank_pattern))
        object.__setattr__(self, "alpha_pattern", dict(self.alpha_pattern))
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ConfigError(f"LoraConfig.r must be a positive integer, got {self.r!r}")
        if not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ConfigError(f"LoraConfig.alpha must be a positive finite number, got {self.alpha!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoraConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.init not in INIT_CHOICES:
            raise ConfigError(f"LoraConfig.init must be one of {INIT_CHOICES}, got {self.init!r}")
        _check_targets("target_modules", self.target_modules, allow_none=False)
        _check_targets("exclude_modules", self.exclude_modules, allow_none=True)
        for key, value in self.rank_pattern.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"LoraConfig.rank_pattern[{key!r}] must be a positive integer, got {value!r}"
                )
        for key, value in self.alpha_pattern.items():
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"LoraConfig.alpha_pattern[{key!r}] must be positive, got {value!r}")

    # -- selection -------------------------------------------------------------------------------------------

    def is_target(self, name: str) -> bool:
        """Whether the module with dotted ``name`` is selected (the caller resolves ``"all-linear"``)."""
        if self.exclude_modules is not None and _matches(self.exclude_modules, name):
            return False
        if self.target_modules == ALL_LINEAR:
            return True
        return _matches(self.target_modules, name)

    def rank_for(self, name: str) -> int:
        return self.rank_pattern.get(_pattern_key(self.rank_pattern, name), self.r)

    def alpha_for(self, name: str) -> float:
        return self.alpha_pattern.get(_pattern_key(self.alpha_pattern, name), self.alpha)

    def scaling_for(self, name: str) -> float:
        r = self.rank_for(name)
        alpha = self.alpha_for(name)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def _check_targets(option: str, value: object, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, str):
        if value != ALL_LINEAR:
            try:
                re.compile(value)
            except re.error as e:
                raise ConfigError(
                    f"LoraConfig.{option} {value!r} is not a valid regular expression: {e}"
                ) from None
        return
    if isinstance(value, Sequence) and value and all(isinstance(v, str) and v for v in value):
        return
    raise ConfigError(
        f"LoraConfig.{option} must be a non-empty list of module names or one regular expression, "
        f"got {value!r}"
    )


def _matches(targets: tuple[str, ...] | str, name: str) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return name in targets or any(name.endswith("." + t) for t in targets)


def _pattern_key(patterns: Mapping[str, object], name: str) -> str:
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", name):
            return key
    return name
