"""Progress bars for long work (rich, on stderr so --json output on stdout stays clean)."""

from __future__ import annotations

import sys
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgequant.core.text import clean

_stderr = Console(stderr=True)


@contextmanager
def tensor_progress(title: str, disable: bool = False):
    """Yield ``advance(i, n, label)``: call it after item i of n is done; the bar appears on first call."""
    progress = Progress(
        TextColumn("{task.description}", style="bold", markup=False),  # names from files: never markup
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[label]}", markup=False),
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
        progress.update(task, completed=i + 1, total=n, label=clean(label, 80))

    with progress:
        yield advance
