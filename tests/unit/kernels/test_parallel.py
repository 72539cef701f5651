"""kernels.parallel.run_ranges: the one thread-pool runner (ggml codecs and bitsandbytes paths)."""

import threading

import numpy as np
import pytest

from edgequant.kernels.parallel import default_threads, run_ranges


def _record(out, calls, first, last):
    calls.append((first, last, threading.current_thread().name))
    out[first:last] += 1


@pytest.mark.parametrize(
    ("total", "threads", "min_chunk", "n_ranges"),
    [
        (0, 4, 1, 1),
        (1, 4, 1, 1),
        (10, 1, 1, 1),
        (10, 3, 1, 3),
        (10, 16, 1, 10),
        (100, 8, 30, 3),
        (7, None, 1, None),
    ],
)
def test_ranges_cover_every_index_once(total, threads, min_chunk, n_ranges):
    out, calls = np.zeros(total, np.int64), []
    run_ranges(_record, total, threads, out, calls, min_chunk=min_chunk)
    assert (out == 1).all()
    assert sorted(c[:2] for c in calls)[0][0] == 0  # contiguous from 0: every index once (checked above)
    expected = n_ranges if n_ranges is not None else min(default_threads(), total)
    assert len(calls) == expected


def test_the_caller_runs_the_first_range_and_errors_come_back():
    calls = []
    run_ranges(_record, 8, 4, np.zeros(8, np.int64), calls)
    first = min(calls)
    assert first[:2] == (0, 2)
    assert first[2] == threading.current_thread().name

    def boom(first, last):
        if first > 0:
            raise ValueError(f"range {first}")

    with pytest.raises(ValueError, match="range 2"):
        run_ranges(boom, 8, 4)


def test_codec_bytes_do_not_depend_on_threads():
    from edgequant.gguf import dequantize, quantize

    x = np.random.default_rng(0).standard_normal((37, 256)).astype(np.float32)
    ref = quantize(x, "Q4_K", threads=1)
    for threads in (2, 3, 0):
        assert np.array_equal(quantize(x, "Q4_K", threads=threads), ref)
        deq = dequantize(ref, "Q4_K", x.shape, threads=threads)
        assert np.array_equal(deq, dequantize(ref, "Q4_K", x.shape))
