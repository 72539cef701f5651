"""Evaluation and calibration text: the default file, reading, tokenizing, and llama.cpp's chunking.

Default text: ``/usr/share/common-licenses/GPL-3`` (the GNU GPL v3, present on every Debian/Ubuntu system,
35,149 bytes, about 7,600 SmolLM2 tokens). Nothing is downloaded. The calibration default for
``edgequant imatrix`` is the same file; the benchmark calibrates on ``/usr/share/common-licenses/Apache-2.0``
instead so that calibration and evaluation text differ.

Chunking is llama-perplexity's and llama-imatrix's (``tools/perplexity/perplexity.cpp``):

* the whole text is tokenized once, with the vocabulary's BOS prepended when it adds one
  (``common_tokenize(ctx, text, add_special=true, parse_special=false)``);
* it needs at least ``2 * n_ctx`` tokens (both tools refuse less);
* chunk ``i`` is ``tokens[i*n_ctx : (i+1)*n_ctx]``, ``n_chunks = min(requested, len(tokens) // n_ctx)``;
* when the vocabulary adds BOS, the first token of every chunk is replaced by BOS for the evaluation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from edgequant.errors import ConfigError

DEFAULT_TEXT = "/usr/share/common-licenses/GPL-3"
DEFAULT_CALIBRATION_TEXT = "/usr/share/common-licenses/Apache-2.0"


def read_text(path: str | os.PathLike | None) -> tuple[str, str]:
    """(text, path) of ``path``, or of :data:`DEFAULT_TEXT` when None. Raises ConfigError naming the file."""
    path = os.fspath(path) if path is not None else DEFAULT_TEXT
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as e:
        hint = " (the default text; pass another with -f FILE)" if path == DEFAULT_TEXT else ""
        raise ConfigError(f"cannot read text file {path}{hint}: {e.strerror or e}") from None
    if not text.strip():
        raise ConfigError(f"text file {path} is empty")
    return text, path


@dataclass(frozen=True)
class Chunking:
    """How a token stream is cut: ``n_ctx`` tokens per chunk, at most ``n_chunks`` (None = all)."""

    n_ctx: int = 512
    n_chunks: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.n_ctx, int) or self.n_ctx < 4:
            raise ConfigError(f"n_ctx must be an integer >= 4, got {self.n_ctx!r}", option="n_ctx")
        if self.n_chunks is not None and (not isinstance(self.n_chunks, int) or self.n_chunks < 1):
            raise ConfigError(
                f"n_chunks must be a positive integer, got {self.n_chunks!r}", option="n_chunks"
            )

    @property
    def first_scored(self) -> int:
        """Position of the first logit that is scored (llama-perplexity: ``n_ctx / 2``)."""
        return self.n_ctx // 2

    @property
    def scored_per_chunk(self) -> int:
        """Tokens scored per chunk: ``n_ctx - 1 - n_ctx/2`` (logits ``first .. n_ctx-2``)."""
        return self.n_ctx - 1 - self.first_scored


def split_chunks(
    tokens: np.ndarray, chunking: Chunking, bos_id: int | None, source: str = "the text"
) -> list[np.ndarray]:
    """The chunks llama.cpp evaluates: int32 arrays of ``n_ctx``, first token replaced by ``bos_id`` if given.

    Raises ConfigError when the text is shorter than ``2 * n_ctx`` tokens, naming the counts and the fix.
    """
    tokens = np.asarray(tokens, dtype=np.int32).reshape(-1)
    n_ctx = chunking.n_ctx
    if tokens.size < 2 * n_ctx:
        raise ConfigError(
            f"{source} tokenizes to {tokens.size} tokens; a context of {n_ctx} needs at least {2 * n_ctx} "
            f"(llama.cpp's rule: 2 x ctx). Give a longer text with -f or a smaller --ctx "
            f"(at most {max(tokens.size // 2, 0)})"
        )
    n = tokens.size // n_ctx
    if chunking.n_chunks is not None:
        n = min(n, chunking.n_chunks)
    chunks = []
    for i in range(n):
        c = tokens[i * n_ctx : (i + 1) * n_ctx].copy()
        if bos_id is not None:
            c[0] = bos_id
        chunks.append(c)
    return chunks


def hf_tokenize(tokenizer, text: str) -> tuple[np.ndarray, int | None]:
    """Tokenize like ``common_tokenize(ctx, text, true, false)`` with a transformers tokenizer.

    Returns (tokens, bos_id) where bos_id is the BOS id if the tokenizer adds one (then tokens start with it),
    else None. Special-token strings inside the text are not parsed as special tokens. A tokenizer that
    appends EOS is refused, as llama.cpp asserts ``!add_eos`` for these tools.
    """
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    special = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None)
    add_bos = bos is not None and len(special) > len(plain) and special[0] == bos
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None and len(special) > len(plain) and special[-1] == eos and plain[-1:] != [eos]:
        raise ConfigError(
            "the tokenizer appends EOS to every text; llama-perplexity refuses such vocabularies"
        )
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    if add_bos:
        ids = [bos, *ids]
    return np.asarray(ids, dtype=np.int32), (bos if add_bos else None)
