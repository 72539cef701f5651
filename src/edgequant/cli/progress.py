"""Progress bars for long work (rich, on stderr so --json output on stdout stays clean)."""

from __future__ import annotations

import sys
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

_stderr = Console(stderr=True)


@contextmanager
def tensor_progress(title: str, disable: bool = False):
    """Yield ``advance(i, n, label)``: call it after item i of n is done; the bar appears on first call."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[label]}"),
        TimeElapsedColumn(),
        console=_stderr,
        disable=disable or not sys.stderr.isatty(),
        transient=True,
    )
    task = None

    def advance(i: int, n: int, label: str) -> None:
        nonlocal task
        if task is None:
            task = progress.add_task(title, total=n, label="")
        progress.update(task, completed=i + 1, label=label)

    with progress:
        yield advance
