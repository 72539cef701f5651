"""LLM.int8's batch-1..8 forward in two native calls (``edgequant._gemv.int8_quant_act`` and
``int8_linear_rows``, source ``native/int8_linear.h``): activation quantization with the outlier columns in
one pass over x; then, parallel over output rows with the caller's thread count, the int8 rows,
dequantization, bias and the outlier columns' dequantized weights (and optionally their product).

Why: the same steps as small torch ops (fp16 cast, outlier search, row absmax, rounding, the ``CB[:, cols]``
gather, the outlier weights' dequantization) each enter an OpenMP region; with 2 torch threads on a loaded
machine they cost tens of milliseconds per call against about 2 ms for the int8 rows themselves.

Numerics: those of ``nn.linear8bit.llm_int8_forward``'s torch path (bitsandbytes 0.50.2's LLM.int8), step by
step, for x (M, K) float32 (float16 / bfloat16 go through ``x.float()``, exact):

1. ``a = float32(float16(x))`` (round to nearest even); outliers: ``|a| >= float16(threshold)`` when
   ``threshold > 0``; ``cols`` = sorted columns holding one; ``SCA[i] = max |a[i, :]|`` over non-outliers;
   ``CA = round_half_even(a * float32(float32(1 / SCA[i]) * 127))`` as int8 (torch's ``127.0 / t`` is
   ``t.reciprocal() * 127``), 0 in every outlier column and in a row with ``SCA == 0``.
   CA, SCA and cols are **equal** to ``bnb.int8.int8_vectorwise_quant(x.half(), threshold)``'s.
2. ``acc`` = exact int32 ``CA @ CB.T``; ``y = float32(acc) * (SCA[i] * SCB[o])``, ``y *= mm_scale``,
   ``y += bias.to(x.dtype)`` -- each step rounded once in torch's order: **bit-identical** to the torch path.
   Then ``y.to(x.dtype)``.
3. Outlier columns: ``Wo[o, c] = float32(float32(CB[o, c]) * SCB[o]) * float32(1/127)`` (the int8-dequantized
   weight, the torch path's ``Wo``) is gathered by the kernel while it reads row o. By default
   (``FUSED_OUTLIERS = False``) the caller then does the torch path's own ``y.addmm(x[:, cols], Wo.T)`` in x's
   dtype: the whole result is **bit-identical** to the torch path (and to bitsandbytes). With
   ``FUSED_OUTLIERS = True`` (float32 x) the kernel adds ``s`` itself: ``s = x[i, c0] Wo[o, c0]``, then
   ``s = fma(x[i, c], Wo[o, c], s)`` over the further columns, ``y + s``; MKL's addmm sums the same ``nc + 1``
   terms in its own order (it depends on M), so ``|y - y_ref| <= 2 gamma_{nc+1} (|y0| + sum_c |x[i, c]
   Wo[o, c]|)``, ``gamma_n = n u / (1 - n u)``, ``u = 2**-24`` (tested). It saves the one torch op, which MKL
   runs multi-threaded from a few hundred thousand flops (batch 8 with several outlier columns).

Not covered, so ``None`` (the caller takes its torch path, whose results these equal): M outside 1..8, x
dtypes other than float32/float16/bfloat16, a CPU without AVX2/FMA/F16C or no compiled extension, and any
non-finite ``float16(x)`` (NaN, inf, or ``|x|`` beyond float16's 65504; the torch path defines what happens).
"""

from __future__ import annotations

import functools

import torch

from edgequant.errors import ShapeError
from edgequant.kernels.bnb4_native import MAX_BATCH, _gemv, available, resolve_threads

COVERED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=64)
def _threshold16(threshold: float) -> float:
    # torch compares a float16 tensor with a Python float in float16: the threshold rounds to float16
    return float(torch.tensor(threshold, dtype=torch.float16))


FUSED_OUTLIERS = False


def quantize_activations(
    xf: torch.Tensor, threshold: float, codes: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Step 1 for float32 (M, K), 1 <= M <= 8: (CA widened to int16, SCA, outlier columns), or None when a
    value is not finite. ``codes``: an optional contiguous int8 (M, K) tensor that receives CA (tests)."""
    m, k = xf.shape
    a16 = torch.empty((m, k), dtype=torch.int16)
    sca = torch.empty(m, dtype=torch.float32)
    cols = torch.empty(k, dtype=torch.int64)
    if codes is not None and (
        codes.dtype != torch.int8 or codes.shape != (m, k) or not codes.is_contiguous()
    ):
        raise ShapeError(f"quantize_activations: codes must be a contiguous int8 ({m}, {k}) tensor")
    use_thr = threshold > 0.0
    nc = _gemv.int8_quant_act(
        xf.data_ptr(),
        m,
        k,
        use_thr,
        _threshold16(threshold) if use_thr else 0.0,
        a16.data_ptr(),
        sca.data_ptr(),
        cols.data_ptr(),
        0 if codes is None else codes.data_ptr(),
    )
    return None if nc < 0 else (a16, sca, cols[:nc])


def llm_int8_gemv(
    x2: torch.Tensor,
    cb: torch.Tensor,
    scb: torch.Tensor,
    bias: torch.Tensor | None,
    threshold: float,
    mm_scale: float,
    deq_scale: float,
    threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(y in x's dtype (M, N), outlier columns int64), or None when not covered (module docstring)."""
    m, k = x2.shape
    if not available() or not 1 <= m <= MAX_BATCH or x2.dtype not in COVERED_DTYPES:
        return None
    n = cb.shape[0]
    if cb.dtype != torch.int8 or cb.shape[1] != k or scb.dtype != torch.float32 or scb.numel() != n:
        raise ShapeError(
            f"llm_int8_gemv needs CB int8 ({n}, {k}) and SCB float32 ({n},), got {cb.dtype} "
            f"{tuple(cb.shape)} and {scb.dtype} {tuple(scb.shape)}"
        )
    half = x2.dtype != torch.float32
    xf = (x2.float() if half else x2).contiguous()
    act = quantize_activations(xf, threshold)
    if act is None:
        return None
    a16, sca, cols = act
    nc = cols.numel()
    cb, scb = cb.contiguous(), scb.contiguous()
    b = None if bias is None else bias.detach().to(x2.dtype).float().contiguous()
    out = torch.empty((m, n), dtype=torch.float32)
    wo = torch.empty((n, nc), dtype=torch.float32) if nc else None
    xo = xf[:, cols].contiguous() if nc and FUSED_OUTLIERS and not half else None
    _gemv.int8_linear_rows(
        a16.data_ptr(),
        m,
        k,
        sca.data_ptr(),
        cb.data_ptr(),
        scb.data_ptr(),
        0 if b is None else b.data_ptr(),
        out.data_ptr(),
        n,
        resolve_threads(threads),
        mm_scale,
        deq_scale,
        cols.data_ptr(),
        nc,
        0 if xo is None else xo.data_ptr(),
        0 if wo is None else wo.data_ptr(),
    )
    if half:
        out = out.to(x2.dtype)
    if nc and xo is None:
        out = out.addmm(x2[:, cols].contiguous(), wo.to(x2.dtype).t())
    return out, cols
