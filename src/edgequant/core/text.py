"""Text from files made safe for terminals, error lines and strict JSON.

* ``clean(value, limit)``: one line, no raw control characters (``\\n``, ESC, OSC, DEL, U+2028... are written
  as Python escapes: ``\\n``, ``\\x1b``, ``\\u2028``), values longer than ``limit`` characters cut with "…".
  Every error line the CLI prints goes through it; messages quote names from files with ``quote``.
* ``json_safe(obj)``: a copy that ``json.dumps(..., allow_nan=False)`` accepts: non-finite floats become the
  strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (JavaScript's spellings), numpy scalars and arrays
  become Python numbers and lists, bytes become ``"<N bytes>"``, anything else unknown its ``str``.
* ``dumps(obj)``: strict JSON text (``--json`` output of every command).
"""

from __future__ import annotations

import json
import math
from typing import Any

ELLIPSIS = "…"
DEFAULT_LIMIT = 200
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    o = ord(ch)
    if o < 0x100:
        return f"\\x{o:02x}"
    if o < 0x10000:
        return f"\\u{o:04x}"
    return f"\\U{o:08x}"


def clean(value: Any, limit: int | None = DEFAULT_LIMIT) -> str:
    """``str(value)`` as one printable line: control and other non-printable characters escaped, cut to
    ``limit`` characters with "…"."""
    s = value if isinstance(value, str) else str(value)
    if limit is not None and len(s) > 4 * limit:
        s = s[: 4 * limit]  # enough for the cut below even if every character needs no escape
        long = True
    else:
        long = False
    if not s.isprintable():
        s = "".join(ch if ch.isprintable() else _escape_char(ch) for ch in s)
    if limit is not None and (long or len(s) > limit):
        s = s[: max(0, limit - 1)] + ELLIPSIS
    return s


def quote(value: Any, limit: int | None = DEFAULT_LIMIT) -> str:
    """``clean(value)`` in single quotes, for names from files inside messages: ``tensor 'blk.0\\n'``."""
    return f"'{clean(value, limit)}'"


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that strict JSON accepts (see the module docstring for the rules)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return "NaN" if obj != obj else ("Infinity" if obj > 0 else "-Infinity")
    if type(obj).__module__ == "numpy":  # numpy scalars and arrays (numpy is not imported here: CLI start-up)
        return json_safe(obj.tolist() if hasattr(obj, "tolist") else str(obj))
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return f"<{len(obj)} bytes>"
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return json_safe(vars(obj))
    return str(obj)


def dumps(obj: Any, indent: int | None = 1) -> str:
    """Strict JSON (no NaN/Infinity tokens): ``json.dumps(json_safe(obj), allow_nan=False)``."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False)
