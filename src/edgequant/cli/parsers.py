"""One subcommand's parser, set up as every command's, from the command module's docstring.

The docstring's first line (one sentence) is the command's line in ``edgequant -h``, its first letter
lowered and the final period dropped, as argparse's help lines read; the whole docstring is the
description of ``edgequant NAME -h``, printed as written (``RawDescriptionHelpFormatter``), and the
examples are the epilog.
"""

from __future__ import annotations

import argparse


def add_command(sub, name: str, doc: str | None, examples: str) -> argparse.ArgumentParser:
    """``sub.add_parser(name)`` with the help line and description from ``doc`` (None under ``python -OO``)
    and ``examples`` after."""
    summary = (doc or "").strip().split("\n", 1)[0].rstrip(".")
    return sub.add_parser(
        name,
        help=summary[:1].lower() + summary[1:],
        description=doc,
        epilog=examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
