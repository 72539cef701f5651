"""ggml's reference quantizers of Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 in C, compiled once with the system compiler.

Why: a whole-file ``edgequant quantize`` to a legacy ftype spends more time starting numba (about 0.35 s on
the first call of any cached kernel: numba's typing and lowering registries, and scipy, which numba imports
to look for BLAS) than quantizing (about 0.15 s for SmolLM2-135M). The C file ``legacy_native.c``
is a line-by-line transcription of ggml's ``quantize_row_q*_ref`` (no importance vector), with the same
float32 operations in the same order, ``-ffp-contract=off``, and x86's float->int conversion spelled out,
so its bytes are ggml's and the numba kernels' (``kernels.legacy``, ``kernels.legacy_q8``) for every input;
the tests compare the three. Callers that pass an importance vector, and every other type, use numba.

Build: on first use, ``cc -O3 -shared -fPIC -ffp-contract=off`` (``$CC`` if set) writes
``legacy_native-<hash of source, compiler, flags, platform>.so`` into ``$EDGEQUANT_CACHE_DIR`` or
``~/.cache/edgequant`` (a temporary name renamed into place, so concurrent first runs are safe; about 0.5 s,
once), then it is loaded with ctypes.
ctypes releases the GIL during a call, so ``threads=N`` runs N row ranges at once. Without a compiler,
without the source (an install that did not ship it), on a failed build, or with ``EDGEQUANT_NATIVE=0``,
``available()`` is False and the callers take the numba path: the output bytes are the same either way.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import sys

import numpy as np

_KINDS = {"Q4_0": 0, "Q4_1": 1, "Q5_0": 2, "Q5_1": 3, "Q8_0": 8}
TYPES = frozenset(_KINDS)
_FLAGS = ["-O3", "-shared", "-fPIC", "-ffp-contract=off", "-fno-strict-aliasing"]
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "legacy_native.c")


def _cache_dir() -> str:
    return os.environ.get("EDGEQUANT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "edgequant"
    )


def _build(src: bytes, cc: str) -> str | None:
    """Path of the shared library for this source and these flags, compiled if not cached; None on failure."""
    key = hashlib.sha256(src + " ".join([cc, *_FLAGS, sys.platform, platform.machine()]).encode()).hexdigest()
    lib = os.path.join(_cache_dir(), f"legacy_native-{key[:16]}.so")
    if os.path.exists(lib):
        return lib
    import subprocess
    import tempfile

    try:
        os.makedirs(os.path.dirname(lib), exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(lib))
        os.close(fd)
        try:
            done = subprocess.run(
                [cc, *_FLAGS, "-o", tmp, _SOURCE, "-lm"], capture_output=True, timeout=120, check=False
            )
            if done.returncode != 0:
                return None
            os.replace(tmp, lib)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except (OSError, subprocess.SubprocessError):
        return None
    return lib


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    if os.environ.get("EDGEQUANT_NATIVE", "1") == "0":
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc or not os.path.exists(_SOURCE):
        return None
    with open(_SOURCE, "rb") as f:
        path = _build(f.read(), cc)
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    lib.eq_quantize_ref.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    lib.eq_quantize_ref.restype = ctypes.c_int64
    lib.eq_first_nonfinite.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.eq_first_nonfinite.restype = ctypes.c_int64
    return lib


def available() -> bool:
    """True when the C kernels are built and loaded (see the module docstring)."""
    return _library() is not None


def quantize_rows(qtype: str, x: np.ndarray, out: np.ndarray) -> int:
    """ggml's ``quantize_row_<qtype>_ref`` over the rows of ``x`` (float32, C-contiguous, row length a
    multiple of 32) into ``out`` (uint8, C-contiguous, the rows' block bytes). Needs ``available()``.

    Returns the flat index in ``x`` of its first NaN/Inf, or -1 (found in the same pass: no extra scan)."""
    lib = _library()
    assert lib is not None
    assert x.dtype == np.float32 and x.flags.c_contiguous and out.flags.c_contiguous  # noqa: PT018
    if not x.size:
        return -1
    return int(lib.eq_quantize_ref(_KINDS[qtype], x.ctypes.data, out.ctypes.data, x.size))


def first_nonfinite(x: np.ndarray) -> int:
    """Flat index of the first NaN/Inf of a C-contiguous float32 array, or -1 (``kernels.floats``'s)."""
    lib = _library()
    assert lib is not None
    assert x.dtype == np.float32 and x.flags.c_contiguous  # noqa: PT018
    return int(lib.eq_first_nonfinite(x.ctypes.data, x.size)) if x.size else -1
