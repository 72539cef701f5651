"""The CLI's spelling of library options, for errors that name one.

Library errors name the option at fault in library terms (``allow_requantize``, ``outtype``, ``verify=False``)
and carry that spelling as ``error.option``; a command runs its library call inside ``flag_names()`` so that
the one-line error the user sees names the flag instead (``--allow-requantize``, ``--no-verify``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from edgequant.errors import EdgequantError

FLAGS = {
    "allow_requantize": "--allow-requantize",
    "backend": "--backend",
    "dtype": "--dtype",
    "n_chunks": "--chunks",
    "n_ctx": "--ctx",
    "outtype": "--outtype",
    "output_format": "--output-format",
    "output_tensor_type": "--output-tensor-type",
    "tensor_types": "--tensor-type",
    "token_embedding_type": "--token-embedding-type",
    "verify=False": "--no-verify",
}


def with_flag_names(e: EdgequantError, overrides: dict[str, str] | None = None) -> EdgequantError:
    """The same error with its option replaced by the CLI flag (``overrides`` first, then ``FLAGS``).

    Only whole words are replaced, never part of a path or a longer name; unchanged when none is named.
    """
    option = getattr(e, "option", None) or ""
    flag = (overrides or {}).get(option) or FLAGS.get(option)
    if flag is None:
        return e
    text, n = re.subn(rf"(?<![\w/.\-]){re.escape(option)}(?![\w/\-])", flag, str(e))
    if not n:
        return e
    return type(e)(text, option=option)


@contextlib.contextmanager
def flag_names(**overrides: str) -> Iterator[None]:
    """Re-raise library errors of the block with CLI flag names; ``overrides`` for this command's own
    spelling of an option (``n_ctx="--quality-ctx"``)."""
    try:
        yield
    except EdgequantError as e:
        renamed = with_flag_names(e, overrides)
        if renamed is e:
            raise
        raise renamed from None
