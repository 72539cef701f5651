"""Split a GIL-free numba kernel over threads by contiguous index ranges (blocks or output rows)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

_POOLS: dict[int, ThreadPoolExecutor] = {}
_LOCK = threading.Lock()


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 16))


def _pool(n: int) -> ThreadPoolExecutor:
    with _LOCK:
        if n not in _POOLS:
            _POOLS[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="edgequant-bnb")
        return _POOLS[n]


def run_ranges(kernel, total: int, threads: int | None, *args, min_chunk: int = 1) -> None:
    """Call ``kernel(*args, first, last)`` on [0, total) cut into at most ``threads`` contiguous ranges.

    The ranges are disjoint, so kernels that write only their own range give the same result for any thread
    count (bit-identical output whatever ``threads`` is).
    """
    threads = default_threads() if threads is None else max(1, int(threads))
    n_chunks = max(1, min(threads, total // max(1, min_chunk)))
    if n_chunks == 1 or total == 0:
        kernel(*args, 0, total)
        return
    bounds = [total * i // n_chunks for i in range(n_chunks + 1)]
    futures = [_pool(n_chunks).submit(kernel, *args, bounds[i], bounds[i + 1]) for i in range(n_chunks)]
    for f in futures:
        f.result()
