"""Error analysis, sensitivity and budgeted allocation (row 4 of docs/architecture.md).

Pure functions over tensors, measurements and plans; no file loops (the whole-model jobs are in
:mod:`edgequant.workflows`: ``sensitivity`` and ``allocate``).

* :mod:`~edgequant.analysis.metrics`: tensor and output error metrics (MSE, relative error, cosine, SQNR,
  KL, JS, ΔPPL, ΔAcc, rank correlations).
* :mod:`~edgequant.analysis.codec_grids` and :mod:`~edgequant.analysis.decompose`: a tensor's quantization
  error split into rounding, clipping, step-size and code-choice parts under any codec.
* :mod:`~edgequant.analysis.propagation`: per-layer amplification by injection, the spectral-norm bound,
  the additive model, the book's accumulated-error formula.
* :mod:`~edgequant.analysis.sensitivity`: how much one tensor's quantization error moves a causal LM's
  output distribution (measured KL, imatrix-weighted MSE, first order, Hessian trace, the block
  second-order term, dynamic spread).
* :mod:`~edgequant.analysis.allocate`: one option per item under a cost budget (exact, greedy, policy
  gradient).
* :mod:`~edgequant.analysis.torch_plan`: per-layer NF4/FP4/int8/keep choice of a PyTorch model under a
  memory budget, applied through ``quantize_``.
* :mod:`~edgequant.analysis.gptq` and :mod:`~edgequant.analysis.ggml_codes`: GPTQ error-feedback rounding
  into ggml blocks (llama.cpp's scale fields kept, codes rewritten), the code bits of every storable type.
* :mod:`~edgequant.analysis.attribution`: each layer's contribution to a quantized candidate's output KLD
  (isolated, cumulative increments that sum to the total, interaction) and the critical path.
* :mod:`~edgequant.analysis.compensation`: PyTorch-side compensation (bias correction, per-channel / per-block
  scale search, batch-norm recalibration).

Names are imported lazily so that ``import edgequant.analysis`` stays cheap (no torch).
"""

from __future__ import annotations

from edgequant.core.lazy import lazy_exports

_M, _D, _G = "edgequant.analysis.metrics", "edgequant.analysis.decompose", "edgequant.analysis.codec_grids"
_P, _S = "edgequant.analysis.propagation", "edgequant.analysis.sensitivity"
_A, _T = "edgequant.analysis.allocate", "edgequant.analysis.torch_plan"
_C, _Q = "edgequant.analysis.compensation", "edgequant.analysis.gptq"
_R = "edgequant.analysis.attribution"

_LAZY = {
    **dict.fromkeys(
        ("mse", "relative_error", "cosine_similarity", "sqnr_db", "kl_divergence", "js_divergence"), _M
    ),
    **dict.fromkeys(("perplexity", "delta_ppl", "accuracy", "delta_accuracy", "pearson", "spearman"), _M),
    **dict.fromkeys(("decompose", "ErrorDecomposition", "DEFAULT_MULTIPLIERS"), _D),
    **dict.fromkeys(("Uniform", "Blockwise", "reconstruct", "codec_grid", "AffineGrid"), _G),
    **dict.fromkeys(
        ("layer_amplification", "additive_model", "accumulated_error", "spectral_bounds", "swapped_weights"),
        _P,
    ),
    **dict.fromkeys(
        (
            "fisher_sensitivity",
            "SensitivityEstimates",
            "measured_kld",
            "base_log_probs",
            "imatrix_weighted_error",
        ),
        _S,
    ),
    **dict.fromkeys(("allocate", "Allocation", "METHODS"), _A),
    **dict.fromkeys(("plan_layers", "apply_plan", "threshold_plan", "LayerPlan", "DEFAULT_CANDIDATES"), _T),
    **dict.fromkeys(("bias_correct", "scale_search", "bn_calibrate"), _C),
    **dict.fromkeys(("gptq_quantize", "GptqResult", "output_error"), _Q),
    **dict.fromkeys(("attribute_layers", "Attribution", "UnitAttribution", "critical_path"), _R),
}

__getattr__, __all__ = lazy_exports(__name__, _LAZY)
