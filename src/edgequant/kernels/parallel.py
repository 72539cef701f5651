"""Split a GIL-free kernel over threads by contiguous index ranges (rows of a codec, blocks, output rows).

The one thread-pool runner of the package: the ggml codecs (``gguf.codecs``) and the bitsandbytes paths
(``bnb``, ``nn.linear8bit``) both call ``run_ranges``. One long-lived pool per thread count: a model has
hundreds of small tensors, and starting threads for each would cost more than quantizing some of them.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

_POOLS: dict[int, ThreadPoolExecutor] = {}
_LOCK = threading.Lock()


def default_threads() -> int:
    """The thread count used when a caller passes ``threads=None``: the cores, at most 16."""
    return max(1, min(os.cpu_count() or 1, 16))


def _pool(n: int) -> ThreadPoolExecutor:
    with _LOCK:
        if n not in _POOLS:
            _POOLS[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="edgequant")
        return _POOLS[n]


def run_ranges(kernel, total: int, threads: int | None, *args, min_chunk: int = 1) -> None:
    """Call ``kernel(*args, first, last)`` on [0, total) cut into at most ``threads`` contiguous ranges.

    Each range holds at least ``min_chunk`` indices (one range when ``total < 2 * min_chunk``); ``threads``
    None means ``default_threads()``. The calling thread runs the first range, the pool the others. The
    ranges are disjoint, so kernels that write only their own range give the same result for any thread
    count (bit-identical output whatever ``threads`` is).
    """
    threads = default_threads() if threads is None else max(1, int(threads))
    n_chunks = max(1, min(threads, total // max(1, min_chunk)))
    if n_chunks == 1:
        kernel(*args, 0, total)
        return
    bounds = [total * i // n_chunks for i in range(n_chunks + 1)]
    pool = _pool(n_chunks - 1)
    futures = [pool.submit(kernel, *args, bounds[i], bounds[i + 1]) for i in range(1, n_chunks)]
    try:
        kernel(*args, bounds[0], bounds[1])
    finally:
        wait(futures)  # no thread is left writing into the caller's arrays, even after an error
    for f in futures:
        f.result()
