"""llama.cpp runtime for evaluation, through llama-cpp-python (optional peer; import only when used).

The model is loaded with ``llama_cpp.Llama`` (``n_ctx`` = chunk size, ``n_batch`` = ``n_ctx``,
``n_ubatch`` = min(512, n_ctx) as llama-perplexity's defaults, no mmap of extra state); each chunk is decoded
with the C API exactly as llama-perplexity does: the KV cache is cleared, one batch holds the chunk at
positions 0..n_ctx-1 in sequence 0, and output (logits) flags are set only for the scored positions.

Tokenization is llama.cpp's own (``llama_tokenize(vocab, text, add_special=true, parse_special=false)``),
the same call as ``common_tokenize(ctx, text, true)`` in llama-perplexity.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

from edgequant.errors import ConfigError


def available() -> bool:
    """True when llama-cpp-python can be imported."""
    try:
        import llama_cpp  # noqa: F401
    except Exception:
        return False
    return True


class LlamaCppBackend:
    """One GGUF model in llama.cpp. ``close()`` frees it (also on garbage collection)."""

    name = "llama.cpp"

    def __init__(self, path: str | os.PathLike, n_ctx: int, threads: int = 2) -> None:
        try:
            import llama_cpp
        except Exception as e:
            raise ConfigError(
                f"backend llama.cpp needs llama-cpp-python, which cannot be imported here ({e})",
                option="backend",
            ) from None
        self._lc = llama_cpp
        self.path = os.fspath(path)
        self.label = self.path
        self.n_ctx = int(n_ctx)
        try:
            self.llm = llama_cpp.Llama(
                model_path=self.path,
                n_ctx=self.n_ctx,
                n_batch=self.n_ctx,
                n_ubatch=min(512, self.n_ctx),
                n_threads=threads,
                n_threads_batch=threads,
                logits_all=False,
                verbose=False,
            )
        except (ValueError, RuntimeError) as e:
            raise ConfigError(f"llama.cpp cannot load {self.path}: {e}") from None
        self.n_vocab = int(self.llm.n_vocab())
        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
        self.bos_id = int(llama_cpp.llama_vocab_bos(vocab)) if self.add_bos else None
        self._batch = llama_cpp.llama_batch_init(self.n_ctx, 0, 1)

    def tokenize(self, text: str) -> tuple[np.ndarray, int | None]:
        """(tokens, bos_id or None) as llama-perplexity tokenizes its input."""
        ids = self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        return np.asarray(ids, dtype=np.int32), self.bos_id

    def logits(self, chunk: np.ndarray, first: int, last: int, all_outputs: bool = False) -> np.ndarray:
        """float32 ``[last - first, n_vocab]`` logits at positions ``first .. last-1`` (a copy).

        ``all_outputs``: request logits for every position (what llama-imatrix does), still returning the
        same rows; used to time llama.cpp doing imatrix-equivalent work.
        """
        lc, ctx, b = self._lc, self.llm.ctx, self._batch
        n = len(chunk)
        if n > self.n_ctx:
            raise ConfigError(f"chunk of {n} tokens exceeds the llama.cpp context {self.n_ctx}")
        lc.llama_memory_clear(lc.llama_get_memory(ctx), True)
        b.n_tokens = n
        for i, tok in enumerate(np.asarray(chunk).tolist()):
            b.token[i] = tok
            b.pos[i] = i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = 1 if (all_outputs or first <= i < last) else 0
        rc = lc.llama_decode(ctx, b)
        if rc != 0:
            raise ConfigError(
                f"llama.cpp failed to decode a chunk of {self.path} (llama_decode returned {rc})"
            )
        if all_outputs:
            ptr = lc.llama_get_logits(ctx)
            arr = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (n, self.n_vocab))
            return arr[first:last].copy()
        ptr = lc.llama_get_logits(ctx)
        rows = last - first
        return np.ctypeslib.as_array(
            ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (rows, self.n_vocab)
        ).copy()

    def close(self) -> None:
        if getattr(self, "_batch", None) is not None:
            self._lc.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "llm", None) is not None:
            self.llm.close()
            self.llm = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
