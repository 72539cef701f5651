"""Exceptions raised by edgequant. Importable from every layer.

Every message names the file, tensor, row or option at fault and, where one exists, the fix.
The CLI turns these into one-line errors with a non-zero exit code.
"""

from __future__ import annotations


class EdgequantError(Exception):
    """Base class of every error edgequant raises on purpose.

    ``option``: the library parameter at fault (``"allow_requantize"``, ``"outtype"``...) when the message
    names one, so that a front end can show its own spelling of it (the CLI's ``--allow-requantize``).
    """

    def __init__(self, *args: object, option: str | None = None) -> None:
        super().__init__(*args)
        self.option = option


class ConfigError(EdgequantError, ValueError):
    """An option or argument has a value that cannot work (unknown type name, bad thread count...)."""


class UnsupportedTypeError(ConfigError):
    """A quantization type or ftype that edgequant does not implement."""


class ShapeError(EdgequantError, ValueError):
    """An array or tensor has a shape the operation cannot take (e.g. a row length not a multiple of the
    block)."""


class FormatError(EdgequantError):
    """A file is malformed: wrong magic or version, truncated, absurd counts or offsets."""


class NonFiniteError(EdgequantError, ValueError):
    """NaN or Inf where finite values are required (a weight row, an importance vector)."""


class OutputError(EdgequantError, OSError):
    """The output path cannot be written."""


class VerificationError(EdgequantError):
    """A written model does not reproduce its source's outputs within tolerance (e.g. llama.cpp's logits of a
    converted GGUF against the Hugging Face model); the output is not kept."""
