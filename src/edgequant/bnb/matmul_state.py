"""``MatmulLtState``: bitsandbytes' per-layer LLM.int8 state record (``bitsandbytes.MatmulLtState``, 0.50.2).

A dataclass with bnb's fields and defaults, so code that reads or sets ``layer.state.threshold``,
``.has_fp16_weights``, ``.CB``, ``.SCB``, ``.is_training``, ``.use_pool``, ``.force_no_igemmlt`` works on
``edgequant.nn.Linear8bitLt``. edgequant's layer keeps ``CB`` (the int8 weight, ``weight.data``) and ``SCB``
(float32 row scales) here equal to its weight's after quantization; ``threshold`` and ``has_fp16_weights`` are
the layer's own settings (its ``threshold`` / ``has_fp16_weights`` attributes read and write them). The
other fields are kept for compatibility and unused. As bnb's, equality is the dataclass' field-by-field
``==``.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class MatmulLtState:
    force_no_igemmlt: bool = False
    CB: torch.Tensor | None = None
    SB: torch.Tensor | None = None
    SCB: torch.Tensor | None = None
    SBt: torch.Tensor | None = None
    CBt: torch.Tensor | None = None
    subB: torch.Tensor | None = None
    outlier_pool: object | None = None
    has_accumulated_gradients = False
    threshold = 0.0
    idx: torch.Tensor | None = None
    is_training = True
    has_fp16_weights = True
    use_pool = False

    def reset_grads(self) -> None:
        """bnb's ``reset_grads``: drop the cached weight tensors."""
        self.CB = self.SB = self.SCB = self.SBt = self.CBt = None
