"""Typed access to GGUF metadata: the one place that checks a value's GGUF type and range.

``GGUFFile.meta`` is a ``Metadata``::

    n_layer = r.meta.get_int("llama.block_count", min=1, max=LLAMA_MAX_LAYERS)
    arch = r.meta.get_str("general.architecture")
    eps = r.meta.get_float("llama.attention.layer_norm_rms_epsilon", 1e-5, min=0)
    tokens = r.meta.get_array("tokenizer.ggml.tokens", etype="str")

A key that is missing (and has no default), has another type or is out of range raises ``FormatError``
naming the file, the key, the value's type (and the value, cleaned and cut) and what was expected. Integers
are Python ints of any GGUF integer width (BOOL is not an integer here); floats are finite unless
``finite=False``; strings are what the reader decoded (valid UTF-8).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from gguf.constants import GGUFValueType

from edgequant.core.text import clean, quote
from edgequant.errors import FormatError

_MISSING: Any = object()
_INT_TYPES = frozenset(
    {
        GGUFValueType.UINT8,
        GGUFValueType.INT8,
        GGUFValueType.UINT16,
        GGUFValueType.INT16,
        GGUFValueType.UINT32,
        GGUFValueType.INT32,
        GGUFValueType.UINT64,
        GGUFValueType.INT64,
    }
)
_FLOAT_TYPES = frozenset({GGUFValueType.FLOAT32, GGUFValueType.FLOAT64})
# get_array's ``etype`` families.
_FAMILIES = {
    "int": _INT_TYPES,
    "float": _FLOAT_TYPES,
    "number": _INT_TYPES | _FLOAT_TYPES,
    "str": frozenset({GGUFValueType.STRING}),
    "bool": frozenset({GGUFValueType.BOOL}),
}


def describe(kv: Any) -> str:
    """A short, safe description of a KV's value for messages: ``STRING 'abc'``, ``ARRAY of 3 UINT32``."""
    if kv.vtype == GGUFValueType.ARRAY:
        n = len(kv.value)
        return f"an ARRAY of {n} {kv.array_type.name if kv.array_type is not None else '?'}"
    v = kv.value
    shown = quote(v, 40) if isinstance(v, str) else clean(v, 40)
    return f"{kv.vtype.name} {shown}"


class Metadata(Mapping):
    """Read-only mapping key -> KV (file order) with typed getters; see the module docstring."""

    def __init__(self, path: str, kvs: Mapping[str, Any]) -> None:
        self.path = path
        self._kvs = kvs

    # Mapping
    def __getitem__(self, key: str) -> Any:
        return self._kvs[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._kvs)

    def __len__(self) -> int:
        return len(self._kvs)

    # helpers
    def _fail(self, key: str, kv: Any, expected: str) -> FormatError:
        return FormatError(
            f"{self.path}: metadata key {quote(key, 80)} is {describe(kv)}; expected {expected}"
        )

    def _lookup(self, key: str, default: Any, expected: str) -> Any:
        kv = self._kvs.get(key)
        if kv is None and default is _MISSING:
            raise FormatError(f"{self.path}: metadata key {quote(key, 80)} is missing; expected {expected}")
        return kv

    @staticmethod
    def _range(lo: float | None, hi: float | None) -> str:
        if lo is not None and hi is not None:
            return f" in [{lo}, {hi}]"
        if lo is not None:
            return f" >= {lo}"
        if hi is not None:
            return f" <= {hi}"
        return ""

    # getters
    def get_int(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        min: int | None = None,
        max: int | None = None,
        types: frozenset[GGUFValueType] | tuple[GGUFValueType, ...] | None = None,
        first_of_array: bool = False,
    ) -> int:
        """An integer of one of ``types`` (default: any integer type) within [min, max].

        ``first_of_array``: an array of integers is also accepted and its first element taken (llama.cpp's
        per-layer hyper-parameters such as ``head_count``, read as the first layer's value)."""
        allowed = frozenset(types) if types is not None else _INT_TYPES
        names = "/".join(sorted(t.name for t in allowed)) if types is not None else "an integer"
        expected = names + self._range(min, max) + (" (or an array of them)" if first_of_array else "")
        kv = self._lookup(key, default, expected)
        if kv is None:
            return default
        if kv.vtype == GGUFValueType.ARRAY and first_of_array:
            if kv.array_type not in allowed or len(kv.value) == 0:
                raise self._fail(key, kv, expected)
            v = int(kv.value[0])
        elif kv.vtype in allowed:
            v = int(kv.value)
        else:
            raise self._fail(key, kv, expected)
        if (min is not None and v < min) or (max is not None and v > max):
            raise self._fail(key, kv, expected)
        return v

    def get_float(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        min: float | None = None,
        max: float | None = None,
        finite: bool = True,
    ) -> float:
        """A FLOAT32/FLOAT64 (an integer type is accepted too), finite unless ``finite=False``, in range."""
        expected = "a " + ("finite " if finite else "") + "float" + self._range(min, max)
        kv = self._lookup(key, default, expected)
        if kv is None:
            return default
        if kv.vtype not in _FLOAT_TYPES and kv.vtype not in _INT_TYPES:
            raise self._fail(key, kv, expected)
        v = float(kv.value)
        if (
            (finite and not math.isfinite(v))
            or (min is not None and v < min)
            or (max is not None and v > max)
        ):
            raise self._fail(key, kv, expected)
        return v

    def get_str(self, key: str, default: Any = _MISSING, *, choices: tuple[str, ...] | None = None) -> str:
        """A STRING (optionally one of ``choices``)."""
        expected = "a STRING" + (f" (one of {', '.join(choices)})" if choices else "")
        kv = self._lookup(key, default, expected)
        if kv is None:
            return default
        if kv.vtype != GGUFValueType.STRING or (choices is not None and kv.value not in choices):
            raise self._fail(key, kv, expected)
        return kv.value

    def get_bool(self, key: str, default: Any = _MISSING) -> bool:
        kv = self._lookup(key, default, "a BOOL")
        if kv is None:
            return default
        if kv.vtype != GGUFValueType.BOOL:
            raise self._fail(key, kv, "a BOOL")
        return bool(kv.value)

    def get_array(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        etype: str | GGUFValueType | None = None,
        min_len: int = 0,
        max_len: int | None = None,
        finite: bool = False,
    ) -> Any:
        """An ARRAY's items: a numpy array for numbers and bools, ``list[str]`` for strings.

        ``etype``: a GGUFValueType or a family ``"int"``, ``"float"``, ``"number"``, ``"str"``, ``"bool"``
        (nested arrays are refused unless ``etype`` is ``GGUFValueType.ARRAY``); ``finite``: float elements
        must be finite."""
        if etype is None:
            allowed = frozenset(GGUFValueType) - {GGUFValueType.ARRAY}
            what = "an ARRAY"
        elif isinstance(etype, str):
            allowed = _FAMILIES[etype]
            what = f"an ARRAY of {etype}"
        else:
            allowed = frozenset({etype})
            what = f"an ARRAY of {etype.name}"
        if min_len or max_len is not None:
            what += f" with {min_len}..{max_len if max_len is not None else ''} elements"
        kv = self._lookup(key, default, what)
        if kv is None:
            return default
        if kv.vtype != GGUFValueType.ARRAY or kv.array_type not in allowed:
            raise self._fail(key, kv, what)
        n = len(kv.value)
        if n < min_len or (max_len is not None and n > max_len):
            raise self._fail(key, kv, what)
        if finite and kv.array_type in _FLOAT_TYPES and n and not np.isfinite(kv.value).all():
            raise FormatError(
                f"{self.path}: metadata key {quote(key, 80)}: element "
                f"{int(np.flatnonzero(~np.isfinite(kv.value))[0])} is not finite; expected finite floats"
            )
        return kv.value
