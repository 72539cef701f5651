"""PyTorch (transformers) runtime for evaluation: logits of one chunk, only for the positions scored.

A chunk is one sequence with a fresh cache (position ids 0..n_ctx-1), as llama.cpp clears its KV cache
before every chunk. The decoder runs on the whole chunk; the output head (``lm_head``) runs only on the
rows that are scored, as llama.cpp's graph computes only the requested outputs.
"""

from __future__ import annotations

import numpy as np
import torch


class TorchBackend:
    """A transformers causal LM (float32 recommended); ``threads``: torch intra-op threads (None: keep)."""

    name = "torch"

    def __init__(self, model, threads: int | None = None, label: str = "") -> None:
        self.model = model.eval()
        self.label = label
        if threads:
            torch.set_num_threads(int(threads))
        head = model.get_output_embeddings()
        self.n_vocab = int(head.weight.shape[0]) if head is not None else int(model.config.vocab_size)
        self._split = head is not None and hasattr(model, "get_decoder") and _plain_head(model)

    @torch.inference_mode()
    def logits(self, chunk: np.ndarray, first: int, last: int) -> np.ndarray:
        """float32 ``[last - first, n_vocab]``: logits at positions ``first .. last-1`` of ``chunk``."""
        ids = torch.as_tensor(np.asarray(chunk, dtype=np.int64)).unsqueeze(0)
        if self._split:
            hidden = self.model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
            out = self.model.get_output_embeddings()(hidden[0, first:last])
        else:
            out = self.model(input_ids=ids, use_cache=False).logits[0, first:last]
        return out.float().numpy()


def _plain_head(model) -> bool:
    """True when logits = lm_head(decoder output) with no extra scaling (llama, mistral, qwen2)."""
    cfg = model.config
    return not any(
        getattr(cfg, k, None) not in (None, 1.0, 0.0)
        for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")
    )
