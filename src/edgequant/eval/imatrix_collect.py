"""Importance-matrix collection in PyTorch, by llama-imatrix's rules (``tools/imatrix/imatrix.cpp``).

What is collected (``shared/reference/ggml-quants.md`` §7.1):

* every dense matmul whose weight lives in a transformer block (GGUF name ``blk.N.*``): attn_q, attn_k,
  attn_v, attn_output, ffn_gate, ffn_up, ffn_down; ``output.weight`` only with ``process_output`` and only
  when the model has its own output matrix (a tied ``token_embd`` is never collected: it is a row lookup);
* per weight: ``sum2[j] += x[j]^2`` over every activation row ``x`` fed to it and ``counts[0] += rows``;
  the quantizer later uses ``sum2 / count`` per input column;
* llama.cpp calls the collector once per micro-batch (``n_ubatch`` = 512 tokens by default) and skips
  calls with fewer than 16 rows; a chunk is split into micro-batches the same way here, so ``--ctx 520``
  collects 512 rows per chunk, exactly as llama-imatrix does;
* the text is tokenized and chunked as for perplexity (:mod:`edgequant.eval.text`): chunks of ``n_ctx``
  tokens, first token replaced by BOS when the vocabulary adds one, every token of a chunk contributes.

Differences on purpose: sums are accumulated in float64 (llama.cpp: float32, sequentially), so long runs do
not lose small contributions; the values agree to float32 rounding. MoE expert matmuls (``MUL_MAT_ID``) do
not occur in the supported architectures (llama, mistral, qwen2) and are refused rather than guessed.

The HF module names map to GGUF tensor names as llama.cpp's converter names them
(``model.layers.3.mlp.down_proj`` -> ``blk.3.ffn_down.weight``; ``models.architectures.gguf_weight_name``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from edgequant.errors import ConfigError, ShapeError
from edgequant.gguf.imatrix import ImatrixEntry
from edgequant.models.architectures import LAYER_RE as _LAYER_RE
from edgequant.models.architectures import gguf_weight_name

MIN_ROWS = 16  # llama-imatrix ignores matmuls with fewer activation rows
UBATCH = 512  # llama.cpp's default n_ubatch: the rows of one collector call


def _tied(model) -> bool:
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or emb is None:
        return True
    return head.weight is emb.weight or head.weight.data_ptr() == emb.weight.data_ptr()


def matmul_weights(model, process_output: bool = False) -> dict[str, tuple[str, torch.nn.Linear]]:
    """{GGUF name: (module name, nn.Linear)} of the weights llama-imatrix collects for this model.

    Raises ConfigError for a linear layer inside a block that has no llama.cpp name (an architecture the
    collector does not know), so nothing is silently left out.
    """
    out: dict[str, tuple[str, torch.nn.Linear]] = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        gname = gguf_weight_name(name)
        if gname is None:
            if _LAYER_RE.match(name) or ".layers." in name:
                raise ConfigError(
                    f"linear layer '{name}' has no llama.cpp tensor name; imatrix collection supports the "
                    f"llama family (q/k/v/o_proj, gate/up/down_proj)"
                )
            continue
        if gname == "output.weight" and (not process_output or _tied(model)):
            continue
        out[gname] = (name, mod)
    if not any(k.startswith("blk.") for k in out):
        raise ConfigError("the model has no llama-style block matmuls (model.layers.N.*_proj) to collect")
    return out


def expected_entries(model, process_output: bool = True) -> dict[str, int]:
    """{GGUF name: row length ne0 (input features)} of every weight an imatrix for this model may hold."""
    return {k: int(m.in_features) for k, (_, m) in matmul_weights(model, process_output).items()}


class ImatrixCollector:
    """Forward pre-hooks on the collected linears; ``run(chunks)`` evaluates chunks and accumulates."""

    def __init__(self, model, process_output: bool = False, ubatch: int = UBATCH) -> None:
        self.model = model.eval()
        self.process_output = process_output and not _tied(model)
        self.ubatch = int(ubatch)
        self.weights = matmul_weights(model, self.process_output)
        self._sum2: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self._handles = []

    def _hook(self, gname: str):
        def pre_hook(_mod, inputs):
            x = inputs[0].detach()
            rows = x.reshape(-1, x.shape[-1]).float()
            acc = self._sum2.get(gname)
            if acc is None:
                acc = self._sum2[gname] = torch.zeros(rows.shape[1], dtype=torch.float64)
                self._counts[gname] = 0
            for s in range(0, rows.shape[0], self.ubatch):
                part = rows[s : s + self.ubatch]
                if part.shape[0] < MIN_ROWS:
                    continue
                acc += (part * part).sum(0, dtype=torch.float64)
                self._counts[gname] += part.shape[0]

        return pre_hook

    @torch.inference_mode()
    def run(self, chunks: list[np.ndarray], on_chunk: Callable[[int, int], None] | None = None) -> None:
        """Evaluate each chunk (one sequence, positions 0..n_ctx-1) with the hooks in place."""
        self._handles = [m.register_forward_pre_hook(self._hook(g)) for g, (_, m) in self.weights.items()]
        try:
            for i, c in enumerate(chunks):
                ids = torch.as_tensor(np.asarray(c, dtype=np.int64)).unsqueeze(0)
                if self.process_output:
                    self.model(input_ids=ids, use_cache=False)
                else:  # the output head is not collected: skip its (largest) matmul
                    self.model.get_decoder()(input_ids=ids, use_cache=False)
                if on_chunk:
                    on_chunk(i, len(chunks))
        finally:
            for h in self._handles:
                h.remove()
            self._handles = []

    def stats(self) -> dict[str, ImatrixEntry]:
        """Raw statistics per GGUF weight name: ``sum2`` (1, ne0) float32 and ``counts`` (1,) int64."""
        out = {}
        for g, acc in self._sum2.items():
            if self._counts[g] == 0:
                continue
            out[g] = ImatrixEntry(
                acc.numpy().astype(np.float32).reshape(1, -1), np.array([self._counts[g]], np.int64)
            )
        return out


def check_fits(entries: dict[str, ImatrixEntry], expected: dict[str, int], source: str, model: str) -> None:
    """Raise ShapeError unless every entry names a weight of the model with a matching row length."""
    for name, e in sorted(entries.items()):
        if name not in expected:
            raise ShapeError(
                f"{source}: imatrix entry '{name}' is not a matmul weight of {model} "
                f"(it has {sum(k.startswith('blk.') for k in expected)} block weights, e.g. "
                f"'{next(iter(sorted(expected)))}'); is the imatrix for another model?"
            )
        n = e.sum2.size
        ne0 = expected[name]
        if n != ne0:
            raise ShapeError(
                f"{source}: imatrix entry '{name}' has {n} values, {model} needs {ne0} (its row length); "
                f"is the imatrix for another model?"
            )
