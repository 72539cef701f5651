"""Fake quantizers whose output is exactly what a GGUF file will hold (weights only).

``GGMLGridQuantizer`` (method ``"ggml"``, format Q4_0 / Q4_1 / Q8_0; blocks of 32 along each row, a row
being the last dim of the flattened ``[out, in]`` weight = GGUF's ne[0]):

* ``learn_scale=False``: ggml's own reference quantizer re-done in torch float32, op for op (every product
  and sum rounded to f32, ``1/d`` as a reciprocal, truncating casts), so the fake weights equal
  ``edgequant.gguf.dequantize(edgequant.gguf.quantize(w))`` bit for bit, and exporting is just running the
  real codec on the trained float weights (the same bytes ``llama-quantize`` would write). Rules
  (ggml-quants.md §4): Q4_0: m = the signed element of largest |x| (first on ties), d = m/−8,
  q = min(15, trunc(x·(1/d) + 8.5)), y = (q−8)·fp16(d). Q4_1: d = (max−min)/15,
  q = min(15, trunc((x−min)·(1/d) + 0.5)), y = q·fp16(d) + fp16(min).
  Q8_0: d = max|x|/127, q = roundf(x·(1/d)) (half away from 0), y = q·fp16(d). Gradient: straight through.
* ``learn_scale=True``: the block scale d (and Q4_1's offset m) are LSQ parameters, initialized by ggml's
  rule and rounded to fp16 in the forward (STE through the rounding); codes q = round(clamp(x/d16, q_min,
  q_max)) (Q4_1: of (x − m16)/d16). The fake weight is q·d16 (+ m16), the same f32 operation ggml's
  dequantizer does on the stored fp16 fields and codes, so export packs (d16, m16, q) into blocks
  (``edgequant.gguf.block_fields.pack_blocks``, the layout from the codec registry) and dequantizes to the
  same bits.

``CodecQuantizer`` (method ``"codec"``, any edgequant.gguf codec, K-quants included): the forward runs the
real codec (quantize then dequantize, numpy/numba on CPU), the backward passes the gradient straight through.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from edgequant.errors import ShapeError
from edgequant.qat.quantizers import FakeQuantizer
from edgequant.qat.ste import fp16_round_ste, grad_scale, grid_fake, round_ste, straight_through

BLOCK = 32
_GRID = {"Q4_0": (-8, 7), "Q4_1": (0, 15), "Q8_0": (-127, 127)}
_FP16_TINY = 2.0**-24  # smallest fp16 subnormal: learned scales never round to 0


def _rows(w: torch.Tensor, name: str, block: int) -> torch.Tensor:
    rows = w.reshape(w.shape[0], -1) if w.dim() > 1 else w.reshape(1, -1)
    if rows.shape[1] % block:
        raise ShapeError(
            f"{name}: row length {rows.shape[1]} is not a multiple of the block size {block}; "
            "skip this module (QATConfig.skip) or use another format"
        )
    return rows


def _fp16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).to(torch.float32)


def _safe_reciprocal(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d != 0, 1.0 / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))


def _roundf(v: torch.Tensor) -> torch.Tensor:
    """C roundf: half away from zero, exact in f32 (v − trunc(v) is exact for |v| < 2^23)."""
    t = torch.trunc(v)
    return t + torch.sign(v) * ((v - t).abs() >= 0.5).to(v.dtype)


def ggml_reference_fake(
    x: torch.Tensor, fmt: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """ggml's reference quantizer on f32 blocks ``[..., 32]`` → (y, codes, d16, m16) as f32 tensors."""
    if fmt == "Q4_0":
        amax, idx = x.abs().max(dim=-1, keepdim=True)  # max returns the first index on ties, as ggml's scan
        m = torch.where(amax > 0, x.gather(-1, idx), torch.zeros_like(amax))
        d = m / -8.0
        q = torch.clamp(torch.trunc(x * _safe_reciprocal(d) + 8.5), max=15.0)
        d16 = _fp16(d)
        return (q - 8.0) * d16, q, d16, torch.zeros_like(d16)
    if fmt == "Q4_1":
        mn, mx = x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)
        d = (mx - mn) / 15.0
        q = torch.clamp(torch.trunc((x - mn) * _safe_reciprocal(d) + 0.5), max=15.0)
        d16, m16 = _fp16(d), _fp16(mn)
        return q * d16 + m16, q, d16, m16
    if fmt == "Q8_0":
        d = x.abs().amax(dim=-1, keepdim=True) / 127.0
        q = _roundf(x * _safe_reciprocal(d)) + 0.0  # + 0.0 turns −0.0 into the int8 code 0
        d16 = _fp16(d)
        return q * d16, q, d16, torch.zeros_like(d16)
    raise ValueError(fmt)


class GGMLGridQuantizer(FakeQuantizer):
    def __init__(self, spec, role, shape, name=""):
        super().__init__(spec, role, shape, name)
        self.fmt = spec.format
        self.bits = 8 if self.fmt == "Q8_0" else 4
        rows = _rows(torch.empty(shape, device="meta"), name or "weight", BLOCK)
        self.scale_shape = (rows.shape[0], rows.shape[1] // BLOCK, 1)
        if spec.learn_scale:
            self.step = nn.Parameter(torch.ones(self.scale_shape))
            if self.fmt == "Q4_1":
                self.offset = nn.Parameter(torch.zeros(self.scale_shape))

    def set_bits(self, bits: int) -> None:  # the format fixes the bit width
        pass

    def view(self, x):
        rows = _rows(x, self.name or "weight", BLOCK)
        return rows.reshape(rows.shape[0], rows.shape[1] // BLOCK, BLOCK)

    def init_from(self, v):
        if self.spec.learn_scale:
            x = v.float()
            if self.fmt == "Q4_1":
                mn, mx = x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)
                self.step.copy_(((mx - mn) / 15.0).clamp_min(_FP16_TINY))
                self.offset.copy_(mn)
            else:
                qmax = 8.0 if self.fmt == "Q4_0" else 127.0
                amax, idx = x.abs().max(dim=-1, keepdim=True)
                d = x.gather(-1, idx) / -qmax if self.fmt == "Q4_0" else amax / qmax
                self.step.copy_(torch.where(d.abs() < _FP16_TINY, torch.full_like(d, _FP16_TINY), d))

    def learned_fields(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes, d16, m16) of the learned-scale forward, f32, differentiable (STE) in v, d and m."""
        qmin, qmax = _GRID[self.fmt]
        d16, m16 = self._scales()
        x = v.float()
        if m16 is not None:
            return round_ste(torch.clamp((x - m16) / d16, qmin, qmax)), d16, m16
        return round_ste(torch.clamp(x / d16, qmin, qmax)), d16, torch.zeros_like(d16)

    def _scales(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(d16, m16 or None): the learned block scale (and Q4_1 offset) rounded to fp16, STE, LSQ-scaled."""
        qmin, qmax = _GRID[self.fmt]
        g = 1.0 / math.sqrt(BLOCK * max(abs(qmin), qmax))
        d = grad_scale(self.step, g)
        d = torch.where(d.abs() < _FP16_TINY, torch.full_like(d, _FP16_TINY), d)
        m16 = fp16_round_ste(grad_scale(self.offset, g)) if self.fmt == "Q4_1" else None
        return fp16_round_ste(d), m16

    def fake(self, v):
        if self.spec.learn_scale:  # fused: one pass, no intermediates kept (ste.grid_fake)
            d16, m16 = self._scales()
            return grid_fake(v.float(), d16, m16, *_GRID[self.fmt]).to(v.dtype)
        return straight_through(v, ggml_reference_fake(v.detach().float(), self.fmt)[0].to(v.dtype))

    @torch.no_grad()
    def export_bytes(self, weight: torch.Tensor) -> np.ndarray:
        """GGUF tensor bytes (rows, row_bytes) whose ggml dequantization equals ``self(weight)`` bitwise."""
        from edgequant.gguf import quantize
        from edgequant.gguf.block_fields import pack_blocks

        if not bool(self.initialized):
            self.init_from(self.view(weight.detach()))
            self.initialized.fill_(1)
        rows = _rows(weight.detach(), self.name or "weight", BLOCK).float().contiguous()
        if not self.spec.learn_scale:
            return quantize(rows.cpu().numpy(), self.fmt, threads=1)
        q, d16, m16 = self.learned_fields(self.view(weight.detach()))
        return pack_blocks(self.fmt, q.cpu().numpy(), d16.cpu().numpy(), m16.cpu().numpy())


class CodecQuantizer(FakeQuantizer):
    """Real ggml codec in the forward (any edgequant.gguf type), identity gradient."""

    def __init__(self, spec, role, shape, name=""):
        from edgequant.gguf import get_codec

        super().__init__(spec, role, shape, name)
        self.fmt = get_codec(spec.format).name
        self.block = get_codec(spec.format).block_size
        _rows(torch.empty(shape, device="meta"), name or "weight", self.block)
        self.scale_shape = (1, 1, 1)
        self.bits = max(2, min(8, round(get_codec(spec.format).bits_per_weight)))

    def set_bits(self, bits: int) -> None:
        pass

    def view(self, x):
        return _rows(x, self.name or "weight", self.block)

    def export_bytes(self, weight: torch.Tensor) -> np.ndarray:
        from edgequant.gguf import quantize

        rows = self.view(weight.detach()).float().contiguous().cpu().numpy()
        return quantize(rows, self.fmt, threads=1)

    def fake(self, v):
        from edgequant.gguf import dequantize

        data = self.export_bytes(v)
        y = torch.from_numpy(dequantize(data, self.fmt, tuple(v.shape))).to(v.device, v.dtype)
        return straight_through(v, y)
