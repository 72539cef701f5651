"""Error analysis, sensitivity and budgeted allocation (row 4 of docs/architecture.md).

Pure functions over tensors, measurements and plans; no file loops (the whole-model jobs are in
:mod:`edgequant.workflows`).

* :mod:`~edgequant.analysis.metrics`: tensor and output error metrics (MSE, relative error, cosine, SQNR, KL, JS,
  ΔPPL, ΔAcc).
* :mod:`~edgequant.analysis.decompose`: a tensor's quantization error split into rounding, clipping and step-size
  parts under any codec.
* :mod:`~edgequant.analysis.propagation`: per-layer amplification by injection, the spectral-norm bound, the
  additive model.
* :mod:`~edgequant.analysis.allocate`: one option per item under a cost budget (exact, greedy, policy gradient).
* :mod:`~edgequant.analysis.sensitivity`: per-tensor sensitivity of a causal LM to each candidate type.

Names are imported lazily so that ``import edgequant.analysis`` stays cheap.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "allocate": "edgequant.analysis.allocate",
    "Allocation": "edgequant.analysis.allocate",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgequant.analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = sorted(_LAZY)
