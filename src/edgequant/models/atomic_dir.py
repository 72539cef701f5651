"""An output *folder* that appears complete or not at all (the directory form of ``core.atomic``).

Files are written into ``.<name>.tmp-<pid>-<random>`` beside the target, which is renamed onto the
target when the ``with`` block ends without an error and removed otherwise (also on SIGTERM/SIGHUP/Ctrl-C,
through ``atomic_output_guard``). An existing non-empty target is refused rather than overwritten.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator

from edgequant.core.atomic import atomic_output_guard, remove_stale_temps
from edgequant.errors import OutputError


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary folder to fill; it becomes ``path`` on success."""
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    if not os.path.isdir(parent):
        raise OutputError(f"cannot write {path}: the directory {parent} does not exist")
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise OutputError(f"cannot write {path}: it exists and is not an empty folder; choose a new one")
    remove_stale_temps(path)  # what a SIGKILLed run left behind
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.mkdir(tmp)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    with atomic_output_guard() as guard:
        try:
            yield tmp
            with guard.deferred():
                if os.path.isdir(path):
                    os.rmdir(path)  # empty, checked above
                os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
