"""llama.cpp file types (ftypes): names, ids, default tensor types, and the options of ``llama-quantize``.

An ftype such as Q4_K_M is not one tensor type but a *mixture*: a default type plus rules that give some
tensors more bits; the rules are :mod:`edgequant.gguf.type_rules`. User input is parsed once into an
:class:`FType` at the edge (``FType.parse``); the rules take that value.

Only the ftypes whose tensor types edgequant can encode are accepted; the IQ1/IQ2/IQ3 ftypes are
listed with their ids so that a clear error can name them.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from edgequant.errors import ConfigError, UnsupportedTypeError

# ftype name -> (llama_ftype id, default tensor type)
_FTYPES = {
    "F32": (0, "F32"),
    "F16": (1, "F16"),
    "Q4_0": (2, "Q4_0"),
    "Q4_1": (3, "Q4_1"),
    "Q8_0": (7, "Q8_0"),
    "Q5_0": (8, "Q5_0"),
    "Q5_1": (9, "Q5_1"),
    "Q2_K": (10, "Q2_K"),
    "Q3_K_S": (11, "Q3_K"),
    "Q3_K_M": (12, "Q3_K"),
    "Q3_K_L": (13, "Q3_K"),
    "Q4_K_S": (14, "Q4_K"),
    "Q4_K_M": (15, "Q4_K"),
    "Q5_K_S": (16, "Q5_K"),
    "Q5_K_M": (17, "Q5_K"),
    "Q6_K": (18, "Q6_K"),
    "IQ4_NL": (25, "IQ4_NL"),
    "IQ4_XS": (30, "IQ4_XS"),
    "BF16": (32, "BF16"),
}
FTYPES = MappingProxyType(_FTYPES)
FTYPE_ALIASES = MappingProxyType(
    {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "ALL_F32": "F32", "MOSTLY_F16": "F16"}
)
# llama.cpp ftypes edgequant does not encode (their IQ1/IQ2/IQ3/TQ grids are not implemented).
UNSUPPORTED_FTYPES = MappingProxyType(
    {
        "IQ2_XXS": 19,
        "IQ2_XS": 20,
        "Q2_K_S": 21,
        "IQ3_XS": 22,
        "IQ3_XXS": 23,
        "IQ1_S": 24,
        "IQ3_S": 26,
        "IQ3_M": 27,
        "IQ2_S": 28,
        "IQ2_M": 29,
        "IQ1_M": 31,
        "TQ1_0": 36,
        "TQ2_0": 37,
        "MXFP4_MOE": 38,
        "NVFP4": 39,
        "Q1_0": 40,
        "Q2_0": 41,
    }
)
FTYPE_NAMES_BY_ID = MappingProxyType({v[0]: k for k, v in _FTYPES.items()})

# Block size of each tensor type that can be chosen (for the fallback rules); non-quantized = 1.
BLOCK_SIZES = {
    "F32": 1,
    "F16": 1,
    "BF16": 1,
    "Q4_0": 32,
    "Q4_1": 32,
    "Q5_0": 32,
    "Q5_1": 32,
    "Q8_0": 32,
    "Q2_K": 256,
    "Q3_K": 256,
    "Q4_K": 256,
    "Q5_K": 256,
    "Q6_K": 256,
    "IQ4_NL": 32,
    "IQ4_XS": 256,
}
FLOAT_TYPES = frozenset({"F32", "F16", "BF16"})


@dataclass(frozen=True)
class FType:
    """A llama.cpp file type: its name (``Q4_K_M``), ``llama_ftype`` id and default tensor type (``Q4_K``).

    Parse user input once with :meth:`FType.parse`; the type rules take the parsed value.
    """

    name: str
    id: int
    default_type: str

    @classmethod
    def parse(cls, value: str | int | FType) -> FType:
        """An ftype name (any case; aliases Q4_K -> Q4_K_M), a numeric id, or an FType (returned as is)."""
        if isinstance(value, FType):
            return value
        key = str(value).strip().upper()
        if key.isdigit():
            fid = int(key)
            if fid in FTYPE_NAMES_BY_ID:
                key = FTYPE_NAMES_BY_ID[fid]
            else:
                key = next((n for n, i in UNSUPPORTED_FTYPES.items() if i == fid), "")
                if not key:
                    raise UnsupportedTypeError(f"unknown ftype id {fid}; supported: {supported_ftypes()}")
        key = FTYPE_ALIASES.get(key, key)
        if key in _FTYPES:
            return cls(key, *_FTYPES[key])
        if key in UNSUPPORTED_FTYPES:
            raise UnsupportedTypeError(
                f"ftype {key} needs IQ1/IQ2/IQ3/TQ grid codecs that edgequant does not implement; "
                f"supported: {supported_ftypes()}"
            )
        raise UnsupportedTypeError(f"unknown ftype '{value}'; supported: {supported_ftypes()}")

    @property
    def is_float(self) -> bool:
        return self.default_type in FLOAT_TYPES


def parse_ftype(name: str | int | FType) -> tuple[str, int]:
    """``FType.parse`` as a (name, id) pair."""
    ft = FType.parse(name)
    return ft.name, ft.id


def supported_ftypes() -> str:
    return ", ".join(_FTYPES)


def parse_tensor_type(name: str, option: str) -> str:
    """A tensor *type* name for an override option (q6_k, Q8_0, f16...); mixture names get a hint."""
    key = str(name).strip().upper()
    if key in BLOCK_SIZES:
        return key
    hint = ""
    if key in _FTYPES or key in FTYPE_ALIASES:
        example = _FTYPES.get(key, ("", key))[1] or key
        hint = f" ('{name}' is a file mixture; give a tensor type such as {example})"
    raise ConfigError(f"{option}: unknown tensor type '{name}'{hint}; choose one of {', '.join(BLOCK_SIZES)}")


@dataclass(frozen=True)
class QuantizeOptions:
    """The llama-quantize options that decide tensor types (§6.10)."""

    pure: bool = False
    leave_output_tensor: bool = False
    output_tensor_type: str | None = None
    token_embedding_type: str | None = None
    tensor_types: tuple[tuple[str, str], ...] = ()  # (regex pattern, lower-cased; tensor type)


@dataclass(frozen=True)
class ModelInfo:
    """What the type rules need to know of the model (from its metadata)."""

    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int = 0
    is_70b: bool = False

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0


@dataclass(frozen=True)
class TensorChoice:
    name: str
    new_type: str
    quantize: bool  # False: kept in its input type (ineligible)
    fallback_from: str | None = None  # the type that did not fit the row length
    manual: bool = False
