"""Input Hessians ``H = XᵀX`` of every linear weight llama-imatrix collects, for GPTQ rounding.

The same hooks, names and rules as :mod:`edgequant.eval.imatrix_collect` (micro-batches of ``UBATCH`` rows,
calls with fewer than ``MIN_ROWS`` rows skipped, a tied output head never collected), but the full matrix:
``H += xᵀx`` (float64) over every activation row ``x`` fed to the weight, ``count += rows``. So
``diag(H)`` is exactly imatrix's ``sum2`` and ``diag(H) / count`` its importance vector.

Weights that read the same input share one matrix: attn_q, attn_k and attn_v (the attention norm's output)
and ffn_gate and ffn_up (the FFN norm's output); only attn_q's and ffn_gate's hooks accumulate, and
``hessian(name)`` answers the others from them. Memory: per layer ``3 d² + d_ff²`` float64 values
(SmolLM2-135M: 27 MB per layer, 0.8 GB for 30 layers).
"""

from __future__ import annotations

import re

import numpy as np
import torch

from edgequant.errors import ConfigError
from edgequant.eval.imatrix_collect import MIN_ROWS, ImatrixCollector

_SHARED = {"attn_k": "attn_q", "attn_v": "attn_q", "ffn_up": "ffn_gate"}
_NAME_RE = re.compile(r"^(blk\.\d+)\.(\w+)\.weight$")


def hessian_owner(name: str) -> str:
    """GGUF name of the weight whose hook accumulates ``name``'s Hessian (``blk.3.attn_v.weight`` ->
    ``blk.3.attn_q.weight``)."""
    m = _NAME_RE.match(name)
    if m and m.group(2) in _SHARED:
        return f"{m.group(1)}.{_SHARED[m.group(2)]}.weight"
    return name


class HessianCollector(ImatrixCollector):
    """``run(chunks)`` as ImatrixCollector; ``hessian(name)`` -> (H float64 [n, n], rows) or None."""

    def __init__(self, model, process_output: bool = False, ubatch: int = 512) -> None:
        super().__init__(model, process_output, ubatch)
        owners = {hessian_owner(g) for g in self.weights}
        missing = sorted(o for o in owners if o not in self.weights)
        if missing:
            raise ConfigError(f"weight {missing[0]} shares its input with others but is not in the model")
        self.weights = {g: v for g, v in self.weights.items() if g in owners}
        self._h: dict[str, torch.Tensor] = {}

    def _hook(self, gname: str):
        def pre_hook(_mod, inputs):
            x = inputs[0].detach()
            rows = x.reshape(-1, x.shape[-1]).to(torch.float64)
            acc = self._h.get(gname)
            if acc is None:
                acc = self._h[gname] = torch.zeros((rows.shape[1], rows.shape[1]), dtype=torch.float64)
                self._counts[gname] = 0
            for s in range(0, rows.shape[0], self.ubatch):
                part = rows[s : s + self.ubatch]
                if part.shape[0] < MIN_ROWS:
                    continue
                acc.addmm_(part.T, part)
                self._counts[gname] += part.shape[0]

        return pre_hook

    def names(self) -> list[str]:
        """Every GGUF weight name a Hessian is available for (shared ones included)."""
        return [g for g in self._all_names() if self._counts.get(hessian_owner(g), 0) > 0]

    def _all_names(self) -> list[str]:
        out = list(self.weights)
        for g in self.weights:
            m = _NAME_RE.match(g)
            if m:
                out += [f"{m.group(1)}.{k}.weight" for k, v in _SHARED.items() if v == m.group(2)]
        return out

    def hessian(self, name: str) -> tuple[np.ndarray, int] | None:
        owner = hessian_owner(name)
        if owner not in self._h or self._counts.get(owner, 0) == 0:
            return None
        return self._h[owner].numpy(), int(self._counts[owner])
