"""QuantState: bitsandbytes' quantization state, with its exact state_dict keys and packing.

Fields (same names and meaning as ``bitsandbytes.functional.QuantState``):

- ``absmax``: float32 [n_blocks], or uint8 [n_blocks] when double-quantized (``nested``).
- ``shape``: the original tensor shape (``torch.Size``; None for 8-bit blockwise states).
- ``code``: the code table (16 float32 values for nf4/fp4, 256 for the dynamic 8-bit map).
- ``blocksize``, ``quant_type`` ("nf4"/"fp4"/None), ``dtype`` (the original dtype).
- ``offset`` (0-d float32 tensor, the mean of the absmax) and ``state2`` (the QuantState of the absmax
  codes: float32 absmax [ceil(n_blocks / nested_blocksize)], dynamic map, blocksize, dtype float32).

``as_dict(packed=True)`` gives the tensors bnb's ``Linear4bit`` stores under ``weight.``:
``absmax``, ``quant_map``, ``nested_absmax``, ``nested_quant_map`` and
``quant_state.bitsandbytes__<quant_type>``: uint8 UTF-8 bytes of ``json.dumps`` (default separators) of
``{"quant_type", "blocksize", "dtype", "shape", ["nested_blocksize", "nested_dtype", "nested_offset"]}``
in that key order; ``nested_offset`` is the float32 offset widened to a Python float.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from edgequant.errors import FormatError

_PACKED_PREFIX = "quant_state.bitsandbytes__"
VALID_KEYS = (
    "absmax",
    "quant_map",
    "nested_absmax",
    "nested_quant_map",
    "quant_state",
    "quant_type",
    "blocksize",
    "dtype",
    "shape",
    "nested_blocksize",
    "nested_dtype",
    "nested_offset",
)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_from_name(name: Any, where: str) -> torch.dtype:
    if name not in _DTYPES:
        raise QuantStateError(f"{where}: dtype {name!r} is not one of {sorted(_DTYPES)}")
    return _DTYPES[name]


class QuantStateError(FormatError, ValueError):
    """A state dict that is not a bitsandbytes 4-bit state (a ValueError, as bnb's ``from_dict`` raises)."""


class QuantState:
    """Container of a 4-bit or blockwise 8-bit quantization state (see the module docstring)."""

    def __init__(
        self,
        absmax: torch.Tensor,
        shape: torch.Size | tuple[int, ...] | None = None,
        code: torch.Tensor | None = None,
        blocksize: int | None = None,
        quant_type: str | None = None,
        dtype: torch.dtype | None = None,
        offset: torch.Tensor | None = None,
        state2: QuantState | None = None,
    ):
        self.absmax = absmax
        self.shape = torch.Size(shape) if shape is not None else None
        self.code = code
        self.dtype = dtype
        self.blocksize = blocksize
        self.quant_type = quant_type
        self.offset = offset
        self.state2 = state2
        self.nested = (
            state2 is not None
        )  # a plain attribute, as bnb's: its CPU repacking sets it and deletes state2

    def __getattr__(self, name: str):
        """``state.bitsandbytes__nf4`` (or ``__fp4``): the packed JSON tensor of ``as_dict(packed=True)``.

        FSDP's state_dict walk resolves the key ``weight.quant_state.bitsandbytes__nf4`` one attribute at a
        time (bnb's proxy, same behaviour). Any other missing attribute raises AttributeError.
        """
        if name.startswith("bitsandbytes__") and "quant_type" in self.__dict__:
            packed = self.as_dict(packed=True)
            if "quant_state." + name in packed:
                return packed["quant_state." + name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __getitem__(self, idx):
        """bnb's legacy list: [absmax, shape, dtype, blocksize, [offset, state2] | None, quant_type]."""
        nested = [self.offset, self.state2] if self.nested else None
        return [self.absmax, self.shape, self.dtype, self.blocksize, nested, self.quant_type][idx]

    def as_dict(self, packed: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "quant_type": self.quant_type,
            "absmax": self.absmax,
            "blocksize": self.blocksize,
            "quant_map": self.code,
            "dtype": dtype_name(self.dtype),
            "shape": tuple(self.shape) if self.shape is not None else None,
        }
        if self.nested:
            d.update(
                {
                    "nested_absmax": self.state2.absmax,
                    "nested_blocksize": self.state2.blocksize,
                    "nested_quant_map": self.state2.code.clone(),
                    "nested_dtype": dtype_name(self.state2.dtype),
                    "nested_offset": self.offset.item(),
                }
            )
        if not packed or self.quant_type is None:
            return d
        out = {k: v for k, v in d.items() if isinstance(v, torch.Tensor)}
        extra = {k: v for k, v in d.items() if not isinstance(v, torch.Tensor)}
        out[_PACKED_PREFIX + self.quant_type] = torch.tensor(
            list(json.dumps(extra).encode("utf-8")), dtype=torch.uint8
        )
        return out

    @classmethod
    def from_dict(
        cls, qs_dict: dict[str, Any], device: torch.device | str = "cpu", name: str = ""
    ) -> QuantState:
        """Rebuild from ``as_dict`` output (packed or not); keys may carry a prefix such as ``weight.``.

        Raises FormatError naming ``name`` (the layer/key) for a missing or foreign layout.
        """
        where = name or "quant_state"
        qs_dict = dict(qs_dict)
        packed_keys = [k for k, v in qs_dict.items() if "quant_state" in k and isinstance(v, torch.Tensor)]
        if "quant_type" not in qs_dict:
            if not packed_keys:
                raise QuantStateError(
                    f"{where}: no 'quant_state.bitsandbytes__nf4|fp4' entry and no unpacked 'quant_type'; "
                    f"this is not a bitsandbytes 4-bit state (keys: {sorted(qs_dict)})"
                )
            if len(packed_keys) != 1 or packed_keys[0].split(".")[-1] not in (
                "bitsandbytes__nf4",
                "bitsandbytes__fp4",
            ):
                raise QuantStateError(
                    f"{where}: expected exactly one 'quant_state.bitsandbytes__nf4|fp4' entry, "
                    f"found {packed_keys}"
                )
        if len(packed_keys) == 1:
            raw = qs_dict.pop(packed_keys[0])
            try:
                qs_dict.update(json.loads(bytes(raw.cpu().to(torch.uint8).numpy()).decode("utf-8")))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise QuantStateError(f"{where}: {packed_keys[0]} does not hold bnb's JSON ({exc})") from None
        qs = {k.split(".")[-1]: v for k, v in qs_dict.items()}
        unknown = set(qs) - set(VALID_KEYS)
        if unknown:
            raise QuantStateError(
                f"{where}: unknown quant_state keys {sorted(unknown)}; valid keys are {VALID_KEYS}"
            )
        for key in ("absmax", "quant_map", "blocksize", "dtype", "quant_type"):
            if key not in qs:
                raise QuantStateError(f"{where}: quant_state entry {key!r} is missing")
        state2 = offset = None
        if "nested_absmax" in qs:
            for key in ("nested_blocksize", "nested_quant_map", "nested_dtype", "nested_offset"):
                if key not in qs:
                    raise QuantStateError(f"{where}: nested quant_state entry {key!r} is missing")
            offset = torch.tensor(float(qs["nested_offset"])).to(device)
            state2 = cls(
                absmax=qs["nested_absmax"].to(device),
                blocksize=int(qs["nested_blocksize"]),
                code=qs["nested_quant_map"].to(device),
                dtype=_dtype_from_name(qs["nested_dtype"], where),
            )
        return cls(
            absmax=qs["absmax"].to(device),
            shape=torch.Size(qs["shape"]) if qs.get("shape") is not None else None,
            code=qs["quant_map"].to(device),
            blocksize=int(qs["blocksize"]),
            quant_type=qs["quant_type"],
            dtype=_dtype_from_name(qs["dtype"], where),
            offset=offset,
            state2=state2,
        )

    def to(self, device) -> QuantState:
        self.code = self.code.to(device)
        self.absmax = self.absmax.to(device)
        if self.nested:
            self.offset = self.offset.to(device)
            self.state2.to(device)
        return self

    def __eq__(self, other) -> bool:
        """bnb's ``__eq__``: absmax and code ``allclose`` (atol 1e-6), the rest equal, state2 compared alike.

        Where bnb's ``allclose`` would raise (different tensor dtypes or shapes, e.g. a nested state's uint8
        absmax against a float32 one) this returns False.
        """

        def close(a, b):
            return a.dtype == b.dtype and a.shape == b.shape and torch.allclose(a, b, atol=1e-6)

        if not isinstance(other, QuantState):
            return False
        same_offset = (
            bool(self.offset == other.offset)
            if self.offset is not None and other.offset is not None
            else self.offset is other.offset
        )
        s2, o2 = self.__dict__.get("state2"), other.__dict__.get("state2")
        return (
            close(self.absmax, other.absmax)
            and self.shape == other.shape
            and close(self.code, other.code)
            and self.dtype == other.dtype
            and self.blocksize == other.blocksize
            and self.quant_type == other.quant_type
            and same_offset
            and (s2 == o2 if s2 is not None and o2 is not None else s2 is o2)
        )

    __hash__ = object.__hash__  # identity, so states stay usable as dict keys (bnb's are unhashable)

    def equal(self, other: QuantState) -> bool:
        """Exact equality of every field and tensor (bnb's ``__eq__`` uses allclose)."""

        def same(a, b):
            if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
                return (
                    isinstance(a, torch.Tensor)
                    and isinstance(b, torch.Tensor)
                    and a.dtype == b.dtype
                    and a.shape == b.shape
                    and torch.equal(a, b)
                )
            return a == b

        fields = ("absmax", "shape", "code", "dtype", "blocksize", "quant_type", "offset")
        if not all(same(getattr(self, f), getattr(other, f)) for f in fields):
            return False
        if self.nested != other.nested:
            return False
        return not self.nested or self.state2.equal(other.state2)

    def __repr__(self) -> str:
        return (
            f"QuantState(quant_type={self.quant_type!r}, shape={tuple(self.shape) if self.shape else None}, "
            f"blocksize={self.blocksize}, dtype={self.dtype}, nested={self.nested})"
        )
