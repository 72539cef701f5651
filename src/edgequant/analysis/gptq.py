"""GPTQ-style error-feedback rounding into ggml blocks (Frantar et al., 2022, "GPTQ"), same bytes layout.

Input: a weight ``W`` in ggml layout (rows = output channels, columns = the ``n`` input features; a block
spans consecutive columns of one row), the layer's input Hessian ``H = XᵀX`` (n x n, X = the calibration
activations fed to it, one row per token) and a ggml type.

1. **Scales first.** ``codecs.quantize(W, qtype, imatrix)`` (llama.cpp's own search, byte-identical) fixes
   every block's scale and min fields; ``imatrix`` defaults to ``diag(H) / rows_of_X`` when the caller gives
   its token count, else to ``diag(H)`` (llama.cpp's search is invariant to a common factor of the
   importances). Under those fields element (r, j) can only take the levels ``o + a * c_k`` of its group
   (:mod:`edgequant.analysis.codec_grids`).
2. **Codes column by column** (GPTQ's algorithm 1): ``Hd = H + λ I`` with ``λ = damp * mean(diag H)``
   (``damp = 0.01``); a dead input column (``H_jj = 0``) gets ``Hd_jj = 1`` besides, as in GPTQ. ``U`` is
   the upper Cholesky factor of ``Hd⁻¹``. For j = 0..n-1: ``q_j`` = the nearest level of each row's group
   to the current ``w_j`` (the code index clamped to 0..K-1; the nearest codebook value for IQ4); the error
   ``e_j = (w_j - q_j) / U_jj`` is pushed onto the later columns ``w_l -= e_j U_jl``, lazily in batches of
   128 columns. If the Cholesky factorization fails, λ is multiplied by 10 (up to 6 times) before a
   ConfigError. Columns are processed in act-order (decreasing ``H_jj``, stable on ties, so the run is
   deterministic); the block fields stay fixed, so the order changes only where the error goes. On SmolLM2's
   Q4_K_M tensors (Hessians of 16 x 512 tokens) act-order lowered Σ tr(ΔW H ΔWᵀ) GPTQ/plain from 0.876 to
   0.814 (Q4_K), 0.231 to 0.198 (Q5_0), 0.220 to 0.087 (Q6_K) and 0.186 to 0.147 (Q8_0). Choosing each
   block's fields from the error-updated weights when GPTQ reaches it (act-order inside the block) was
   worse than static act-order on all four (0.824, 0.208, 0.132, 0.178), so it is not offered.
3. **Pack** the code indices into the block bytes (:mod:`edgequant.analysis.ggml_codes`); the scale fields
   are llama.cpp's, so llama.cpp decodes the levels chosen here.
4. **Check.** The output error of a reconstruction ``Ŵ`` is ``tr((W-Ŵ) H (W-Ŵ)ᵀ) = ‖(W-Ŵ)Xᵀ‖²_F``, computed
   in float64 from ggml's own decode of the bytes. GPTQ minimizes it greedily, which is not a guarantee:
   when it exceeds plain rounding's (llama.cpp's bytes), the plain bytes are kept and ``used_plain`` says so.
   Every written block decodes to finite values (it has llama.cpp's finite scales and in-range codes).

H = I gives no error feedback (``U = I`` up to the dampening's uniform scale), so the codes are the nearest
levels under llama.cpp's scales, which for the K-quants and the legacy types are llama.cpp's own codes
(it re-rounds with the final scales) up to ties.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edgequant.analysis.codec_grids import codec_grid
from edgequant.analysis.ggml_codes import code_map, extract_codes, pack_codes
from edgequant.errors import ConfigError, NonFiniteError, ShapeError
from edgequant.gguf.codecs import dequantize, quantize

DAMP = 0.01
BATCH = 128


@dataclass
class GptqResult:
    """Bytes of one tensor and its output errors ``tr(ΔW H ΔWᵀ)`` under GPTQ and plain rounding."""

    raw: np.ndarray  # uint8 (rows, row_bytes): what to write
    codes: np.ndarray  # int64 (rows, n): code indices of ``raw``
    err_gptq: float  # of the GPTQ bytes (before the fallback)
    err_plain: float  # of llama.cpp's bytes
    used_plain: bool  # GPTQ was worse: raw holds llama.cpp's bytes

    @property
    def err(self) -> float:
        return min(self.err_gptq, self.err_plain) if self.used_plain else self.err_gptq


@dataclass(frozen=True)
class Levels:
    """Per-element grids of a (rows, n) tensor: levels ``offset[r, j//g] + scale[r, j//g] * codebook``."""

    codebook: np.ndarray  # float64 [K]
    scale: np.ndarray  # float64 [rows, n // g]
    offset: np.ndarray  # float64 [rows, n // g]
    group: int

    def values(self, codes: np.ndarray) -> np.ndarray:
        """float64 levels of code indices (rows, n)."""
        a = np.repeat(self.scale, self.group, axis=1)
        o = np.repeat(self.offset, self.group, axis=1)
        return o + a * self.codebook[codes]


def plain_levels(w: np.ndarray, qtype: str, imatrix: np.ndarray | None) -> tuple[np.ndarray, Levels]:
    """(llama.cpp's bytes of ``w``, the levels its scale fields allow)."""
    raw = quantize(w, qtype, imatrix)
    _, grid = codec_grid(w, qtype, imatrix)
    rows = w.shape[0]
    lv = Levels(grid.codebook, grid.scale.reshape(rows, -1), grid.offset.reshape(rows, -1), grid.group_len)
    return raw, lv


def nearest_codes(t: torch.Tensor, mids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook value to each ``t`` (in units of the step, offset removed)."""
    return torch.bucketize(t, mids)


def output_error(w: np.ndarray, w_hat: np.ndarray, hessian: np.ndarray) -> float:
    """``tr((W-Ŵ) H (W-Ŵ)ᵀ)`` in float64."""
    d = np.asarray(w, np.float64) - np.asarray(w_hat, np.float64)
    return float(np.einsum("ij,ij->", d @ np.asarray(hessian, np.float64), d))


def _inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + λI)⁻¹`` with dead columns set to 1 (module docstring)."""
    h = h.clone()
    dead = torch.diagonal(h) <= 0
    h[dead, :] = 0
    h[:, dead] = 0
    h[dead, dead] = 1
    lam = damp * float(torch.diagonal(h).mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    for _ in range(7):
        lower, info = torch.linalg.cholesky_ex(h + lam * eye)
        if int(info) == 0:
            inv = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(inv, upper=True)
            if int(info) == 0:
                return upper
        lam = lam * 10 if lam > 0 else 1e-6
    raise ConfigError("the Hessian stays singular after dampening; give more calibration text")


ORDERS = ("act", "natural")


def gptq_codes(
    w: np.ndarray,
    lv: Levels,
    hessian: np.ndarray,
    fallback: np.ndarray,
    *,
    damp: float = DAMP,
    order: str = "act",
) -> np.ndarray:
    """Code indices (rows, n) chosen column by column with error feedback (module docstring, step 2).
    ``fallback``: the codes used where a group's step is 0 (every code gives the same level there).

    ``order``: "act" (columns by decreasing ``H_jj``, GPTQ's act-order; ties keep column order) or
    "natural" (0..n-1). The scale fields stay llama.cpp's either way (static groups), so act-order only
    changes which columns absorb the error feedback.

    Runs with one torch thread (restored after): the loop is thousands of small ops, and on this 2-core
    machine two threads made a 576x1536 weight take 24 s instead of 1 s (thread hand-off per op)."""
    if order not in ORDERS:
        raise ConfigError(f"GPTQ order '{order}' is not one of {', '.join(ORDERS)}", option="order")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _gptq_codes(w, lv, hessian, fallback, damp, order)
    finally:
        torch.set_num_threads(threads)


def _column_order(diag: torch.Tensor, order: str) -> torch.Tensor:
    """The processing order: a permutation of the columns (``gptq_codes``' ``order``)."""
    return torch.argsort(-diag, stable=True) if order == "act" else torch.arange(diag.shape[0])


class _Grid:
    """Per-column levels in processing order: level of code k at position j = ``offset[:, j] + scale[:, j] *
    book[k]``; ``fb`` the code where the step is 0."""

    def __init__(self, lv: Levels, fallback: np.ndarray, perm: torch.Tensor) -> None:
        self.book = torch.from_numpy(lv.codebook)
        self.mids = (self.book[1:] + self.book[:-1]) / 2
        self.scale = torch.from_numpy(np.repeat(lv.scale, lv.group, axis=1))[:, perm].clone()
        self.offset = torch.from_numpy(np.repeat(lv.offset, lv.group, axis=1))[:, perm].clone()
        self.fb = torch.from_numpy(np.asarray(fallback, np.int64))[:, perm].clone()

    def nearest(self, col: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(code, level) nearest to ``col`` at position ``j``."""
        scale = self.scale[:, j]
        live = scale != 0
        t = (col - self.offset[:, j]) / torch.where(live, scale, torch.ones_like(scale))
        k = torch.where(live, nearest_codes(t, self.mids), self.fb[:, j])
        return k, self.offset[:, j] + scale * self.book[k]


def _gptq_codes(w, lv: Levels, hessian, fallback, damp: float, order: str) -> np.ndarray:
    rows, n = w.shape
    h = torch.from_numpy(np.asarray(hessian, np.float64))
    perm = _column_order(torch.diagonal(h), order)
    grid = _Grid(lv, fallback, perm)
    u = _inverse_cholesky(h[perm][:, perm], damp)
    W = torch.from_numpy(np.asarray(w, np.float64))[:, perm].clone()
    codes = torch.empty((rows, n), dtype=torch.int64)
    for i1 in range(0, n, BATCH):
        i2 = min(i1 + BATCH, n)
        w1 = W[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            col = w1[:, i]
            k, q = grid.nearest(col, j)
            codes[:, j] = k
            e = (col - q) / u1[i, i]
            w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
            err1[:, i] = e
        W[:, i2:] -= err1 @ u[i1:i2, i2:]
    out = torch.empty_like(codes)
    out[:, perm] = codes
    return out.numpy()


def gptq_quantize(
    w: np.ndarray,
    qtype: str,
    hessian: np.ndarray,
    imatrix: np.ndarray | None = None,
    *,
    damp: float = DAMP,
    keep_better: bool = True,
    order: str = "act",
) -> GptqResult:
    """GPTQ rounding of ``w`` (rows, n) float32 into ``qtype``'s block bytes (module docstring).

    ``hessian``: (n, n) ``XᵀX``; ``imatrix``: the importance vector for llama.cpp's scale search (default
    ``diag(H)``). ``keep_better``: write llama.cpp's bytes when GPTQ's output error is larger. ``order``: the
    column order (``gptq_codes``)."""
    w = np.ascontiguousarray(w, np.float32)
    if w.ndim != 2:
        raise ShapeError(f"GPTQ needs a 2-D weight (rows, n), got shape {w.shape}")
    n = w.shape[1]
    h = np.asarray(hessian, np.float64)
    if h.shape != (n, n):
        raise ShapeError(f"the Hessian is {h.shape}, the weight's rows have {n} columns; need ({n}, {n})")
    if not np.isfinite(h).all():
        raise NonFiniteError("the Hessian holds NaN or Inf; check the calibration activations")
    code_map(qtype)  # refuses a type without a code map before any work
    qw = np.diagonal(h).astype(np.float32) if imatrix is None else imatrix
    raw, lv = plain_levels(w, qtype, qw)
    plain = extract_codes(raw, qtype, w.shape)
    codes = gptq_codes(w, lv, h, plain, damp=damp, order=order)
    out = pack_codes(raw, codes, qtype)
    back = dequantize(out, qtype, w.shape)
    if not np.isfinite(back).all():
        raise NonFiniteError(f"{qtype}: a GPTQ block decodes to NaN/Inf; please report this")
    err_g = output_error(w, back, h)
    err_p = output_error(w, dequantize(raw, qtype, w.shape), h)
    if keep_better and err_g > err_p:
        return GptqResult(raw, plain, err_g, err_p, True)
    return GptqResult(out, codes, err_g, err_p, False)
