"""The CLI's spelling of library options, for errors that name one.

Library errors name the parameter at fault in library terms (``allow_requantize``, ``outtype``) and carry it
as ``error.option``; a command runs its library call inside ``flag_names()`` so that the one-line error the
user sees names the flag instead (``--allow-requantize``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from edgequant.errors import EdgequantError

FLAGS = {
    "allow_requantize": "--allow-requantize",
    "outtype": "--outtype",
    "output_format": "--output-format",
    "output_tensor_type": "--output-tensor-type",
    "token_embedding_type": "--token-embedding-type",
    "tensor_types": "--tensor-type",
}


def with_flag_names(e: EdgequantError) -> EdgequantError:
    """The same error with its option's name replaced by the CLI flag (unchanged when it names none)."""
    option = getattr(e, "option", None)
    flag = FLAGS.get(option or "")
    text = str(e)
    if flag is None or option not in text:
        return e
    return type(e)(text.replace(option, flag), option=option)


@contextlib.contextmanager
def flag_names() -> Iterator[None]:
    """Re-raise library errors of the block with CLI flag names."""
    try:
        yield
    except EdgequantError as e:
        renamed = with_flag_names(e)
        if renamed is e:
            raise
        raise renamed from None
