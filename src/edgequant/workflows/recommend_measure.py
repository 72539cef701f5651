"""What llama.cpp allocates for one GGUF file at a context size, measured by loading it with llama-cpp-python.

``measure_buffers(path, n_ctx, kv_type)`` loads the file (``llama_cpp.Llama``, mmap on, ``n_batch =
min(2048, n_ctx)`` and ``n_ubatch = min(512, n_ctx)``: llama-cli's and llama-server's defaults, ``type_k =
type_v = kv_type``, flash attention as llama-cpp-python's default) and reads the buffer sizes llama.cpp itself
logs while it loads the model and creates the context (llama-cpp-python 0.3.36):

    load_tensors:   CPU_Mapped model buffer size =    92.10 MiB
    llama_context: n_ctx                 = 1280
    llama_context:        CPU  output buffer size =     0.19 MiB
    llama_kv_cache:        CPU KV buffer size =    28.12 MiB
    sched_reserve:        CPU compute buffer size =    98.25 MiB

The compute buffer is what ggml's scheduler reserves for the largest graph (one ubatch at full context). It is
measured, never modelled: it depends on the vocabulary (a ubatch's logits: 512 x 49152 x 4 bytes = 96 MiB of
SmolLM2-135M's 98.25 MiB), n_ubatch, the attention path and the backend. Each figure is printed with two
decimals of MiB, so it is known to +-0.005 MiB (5243 bytes); we take the printed value. Buffers of several
devices are added up per kind.

``measure_rss(path, n_ctx, kv_type, tokens)``: VmRSS of this process (``/proc/self/status``, Linux) before
loading and after loading plus one decode of ``tokens`` tokens (which reads every weight and writes the KV
cache and the compute buffer), in a child process so that nothing else of this process is counted and the
memory is given back. ``probe_threads``: generation speed (tokens/s over ``n_gen`` single-token decodes after
a prompt) for each thread count, the fastest first.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass

from edgequant.errors import ConfigError

MIB = 1 << 20
_BUFFER = re.compile(r"(\S+)\s+(model|output|KV|compute) buffer size\s*=\s*([0-9.]+)\s*MiB")
_N_CTX = re.compile(r"llama_context: n_ctx\s*=\s*([0-9]+)")


@dataclass(frozen=True)
class Buffers:
    """llama.cpp's own figures for one file and context (bytes, from its MiB log lines)."""

    model: int
    kv: int
    compute: int
    output: int
    n_ctx: int  # the context llama.cpp made (n_ctx rounded up to its padding)


def context_params(n_ctx: int) -> dict:
    return {"n_ctx": int(n_ctx), "n_batch": min(2048, int(n_ctx)), "n_ubatch": min(512, int(n_ctx))}


def _llama_cpp():
    try:
        import llama_cpp
    except Exception as e:
        raise ConfigError(
            "measuring llama.cpp's compute buffer needs llama-cpp-python, which cannot be imported here "
            f"({e}); pip install llama-cpp-python"
        ) from None
    return llama_cpp


def _ggml_type_id(llama_cpp, kv_type: str) -> int:
    return int(getattr(llama_cpp, f"GGML_TYPE_{kv_type.upper()}"))


def _restore_log(llama_cpp) -> None:
    try:
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    except Exception:  # pragma: no cover - older llama-cpp-python
        llama_cpp.llama_log_set(_SILENT.setdefault("cb", llama_cpp.llama_log_callback(lambda *a: None)), None)


_SILENT: dict = {}


def parse_buffers(log: str) -> Buffers:
    """Sum llama.cpp's ``<device> <kind> buffer size = X MiB`` lines per kind; ConfigError without a compute
    buffer line."""
    sizes = {"model": 0.0, "output": 0.0, "KV": 0.0, "compute": 0.0}
    for _, kind, mib in _BUFFER.findall(log):
        sizes[kind] += float(mib)
    if not any(k == "compute" for _, k, _ in _BUFFER.findall(log)):
        raise ConfigError(
            "llama.cpp did not log its compute buffer size; is llama-cpp-python too old or new?"
        )
    m = _N_CTX.search(log)
    return Buffers(
        model=round(sizes["model"] * MIB),
        kv=round(sizes["KV"] * MIB),
        compute=round(sizes["compute"] * MIB),
        output=round(sizes["output"] * MIB),
        n_ctx=int(m.group(1)) if m else 0,
    )


def load(path: str, n_ctx: int, kv_type: str = "F16", threads: int | None = None, log: list | None = None):
    """``llama_cpp.Llama`` for ``path`` with the module's context parameters; llama.cpp's log lines are
    appended to ``log`` while it loads."""
    llama_cpp = _llama_cpp()
    lines = log if log is not None else []

    @llama_cpp.llama_log_callback
    def _cb(level, text, user_data):
        lines.append(text.decode(errors="replace") if text else "")

    llama_cpp.llama_log_set(_cb, ctypes.c_void_p(0))
    try:
        t = _ggml_type_id(llama_cpp, kv_type)
        return llama_cpp.Llama(
            model_path=path,
            **context_params(n_ctx),
            n_threads=threads,
            type_k=t,
            type_v=t,
            verbose=False,
        )
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"llama.cpp cannot load {path} at n_ctx {n_ctx}: {e}") from None
    finally:
        _restore_log(llama_cpp)


def measure_buffers(path: str, n_ctx: int, kv_type: str = "F16") -> Buffers:
    """Load ``path`` in llama.cpp at ``n_ctx`` and return the buffers it logged."""
    log: list[str] = []
    llm = load(path, n_ctx, kv_type, log=log)
    try:
        return parse_buffers("".join(log))
    finally:
        llm.close()


def rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ConfigError("cannot read VmRSS from /proc/self/status (RSS is measured on Linux only)")


def _child_rss(path: str, n_ctx: int, kv_type: str, tokens: int) -> dict:
    """Run in the child: RSS growth of loading ``path`` and decoding ``tokens`` tokens."""
    _llama_cpp()
    before = rss_bytes()
    llm = load(path, n_ctx, kv_type)
    loaded = rss_bytes()
    n = max(1, min(tokens, n_ctx))
    llm.eval([int(llm.token_bos()) if llm.token_bos() >= 0 else 0] * n)
    after = rss_bytes()
    llm.close()
    return {"before": before, "loaded": loaded - before, "decoded": after - before, "tokens": n}


def measure_rss(path: str, n_ctx: int, kv_type: str = "F16", tokens: int = 512) -> dict:
    """RSS growth (bytes) of loading ``path`` at ``n_ctx`` (``loaded``) and then decoding ``tokens`` tokens
    (``decoded``), measured in a child Python process."""
    code = (
        "import json, sys; from edgequant.workflows.recommend_measure import _child_rss; "
        "print(json.dumps(_child_rss(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))))"
    )
    args = [sys.executable, "-c", code, os.fspath(path), str(n_ctx), kv_type, str(tokens)]
    r = subprocess.run(args, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"measuring the RSS of {path} in llama.cpp failed: {last}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def probe_threads(
    path: str,
    n_ctx: int,
    kv_type: str = "F16",
    counts: list[int] | None = None,
    n_gen: int = 16,
    repeats: int = 3,
) -> list[tuple[int, float]]:
    """(threads, generation tokens/s) for each thread count (default 1 .. os.cpu_count()), fastest first.

    Each count, ``repeats`` times: the KV cache is cleared, an 8-token prompt is decoded, then ``n_gen``
    single tokens, timed with ``time.perf_counter``; the best of the repeats is kept (other processes only
    slow a run down). On a machine whose cores are busy, more threads than free cores is much slower
    (ggml's threads spin while they wait for each other): the probe measures the machine as it is."""
    llama_cpp = _llama_cpp()
    counts = counts or list(range(1, (os.cpu_count() or 1) + 1))
    llm = load(path, n_ctx, kv_type)
    try:
        tok = int(llm.token_bos()) if llm.token_bos() >= 0 else 0
        speeds = []
        for t in counts:
            llama_cpp.llama_set_n_threads(llm.ctx, int(t), int(t))
            best = 0.0
            for _ in range(max(1, repeats)):
                llm.reset()
                llm.eval([tok] * 8)
                start = time.perf_counter()
                for _ in range(n_gen):
                    llm.eval([tok])
                best = max(best, n_gen / (time.perf_counter() - start))
            speeds.append((int(t), best))
    finally:
        llm.close()
    return sorted(speeds, key=lambda ts: -ts[1])
