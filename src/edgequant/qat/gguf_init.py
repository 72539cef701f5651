"""Start QAT from the grid of an existing GGUF file: its codes and block scales, not round-to-nearest.

``init_from_gguf(model, path)``: ``model`` is a transformers llama-family model prepared with learned-scale
ggml quantizers (``QuantSpec(method="ggml", format=..., learn_scale=True)``); ``path`` a GGUF of the same
model whose tensors for those weights have that format, typically written by error-compensating rounding
(``edgequant quantize --rounding gptq``), whose codes are chosen jointly per row against the calibration
Hessian, not per weight. For every such weight:

* each block's fp16 fields become the quantizer's learned scale ``d`` (and Q4_1's offset ``m``); they are
  fp16-exact, so the forward's fp16 rounding keeps them;
* the latent float weight ``w`` is projected onto the bin of the file's code ``q``: with ``t = (w − m)/d``,
  ``t ← clamp(t, q − 1/2 + δ, q + 1/2 − δ)`` (``δ = 1/64``; no bound outward at the grid's ends, where the
  forward clamps anyway) and ``w ← t·d + m``. A weight the file rounds as round-to-nearest would is left as
  it is; any other moves the least distance that gives the file's code, so training can still flip it back.
  A block with ``d = 0`` decodes to ``m`` whatever its codes: its weights become ``m``.

Afterwards the quantizer's forward equals ggml's dequantization of the file's bytes, bit for bit; that is
checked for every weight (``ExportMismatchError`` otherwise). q/k rows are taken back from llama.cpp's order
(``architectures.unpermute_qk``). Refused, naming the tensor: a weight the file lacks, a tensor of another
type than the quantizer's format, a quantizer without learned scales (``ConfigError``); a tensor of another
shape (``ShapeError``: not the same model).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from edgequant.errors import ConfigError, ShapeError
from edgequant.qat.ggml_grid import GGMLGridQuantizer
from edgequant.qat.prepare import qat_modules

MARGIN = 1.0 / 64  # δ: how far inside its bin a projected weight lands (no ties for round-half-even)


@torch.no_grad()
def init_from_gguf(model: nn.Module, path: str | os.PathLike) -> dict:
    """Set every learned-scale ggml quantizer of ``model`` (and its latent weight) from the file's tensor;
    returns ``{"tensors": n, "weights": n, "moved": n}`` (moved: latent weights the projection changed)."""
    from edgequant.gguf.reader import GGUFFile
    from edgequant.models.architectures import gguf_weight_name

    report = {"tensors": 0, "weights": 0, "moved": 0}
    with GGUFFile(os.fspath(path)) as reader:
        tensors = {t.name: t for t in reader.tensors}
        for name, mod in qat_modules(model):
            q = mod.weight_quantizer
            if not isinstance(q, GGMLGridQuantizer) or not q.enabled:
                continue
            if not q.spec.learn_scale:
                raise ConfigError(
                    f"{name}: init_from_gguf needs learned scales (QuantSpec(learn_scale=True))"
                )
            gname = gguf_weight_name(name)
            t = tensors.get(gname or "")
            if t is None:
                raise ConfigError(f"{path}: no tensor {gname or '(no llama.cpp name)'} for QAT weight {name}")
            if t.type_name != q.fmt:
                raise ConfigError(
                    f"{path}: {gname} is {t.type_name}; the QAT weight {name} is trained on {q.fmt}"
                )
            if tuple(t.np_shape) != tuple(mod.weight.shape):
                raise ShapeError(
                    f"{path}: {gname} is {tuple(t.np_shape)}, the QAT weight {name} "
                    f"{tuple(mod.weight.shape)}: not the same model"
                )
            raw = _hf_rows(np.asarray(reader.tensor_data(t)).reshape(t.np_shape[0], -1), name, model)
            moved = _set_from_blocks(mod, q, raw, gname)
            report["tensors"] += 1
            report["weights"] += int(mod.weight.numel())
            report["moved"] += moved
    return report


def _hf_rows(raw: np.ndarray, module_name: str, model: nn.Module) -> np.ndarray:
    """Rows of a q/k tensor back from llama.cpp's rope order to Hugging Face's (architectures whose
    ``ArchSpec.permute_qk`` says the converter permuted them); others unchanged."""
    from edgequant.models.architectures import ARCHS, unpermute_qk

    cfg = model.config
    spec = next((ARCHS[a] for a in (getattr(cfg, "architectures", None) or []) if a in ARCHS), None)
    if spec is None or not spec.permute_qk:
        return raw
    if module_name.endswith("q_proj"):
        return unpermute_qk(raw, int(cfg.num_attention_heads))
    if module_name.endswith("k_proj"):
        return unpermute_qk(raw, int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads))
    return raw


def _set_from_blocks(mod: nn.Module, q: GGMLGridQuantizer, raw: np.ndarray, gname: str) -> int:
    from edgequant.gguf import dequantize
    from edgequant.gguf.block_fields import unpack_blocks
    from edgequant.qat.export import ExportMismatchError
    from edgequant.qat.ggml_grid import _GRID

    w = mod.weight
    v = q.view(w.detach()).float()
    codes, d, m = unpack_blocks(q.fmt, raw, v.shape[0])
    qc, d = torch.from_numpy(codes).float(), torch.from_numpy(d)
    m = torch.from_numpy(m) if m is not None else torch.zeros_like(d)
    qmin, qmax = _GRID[q.fmt]
    lo = torch.where(qc <= qmin, -torch.inf, qc - 0.5 + MARGIN)
    hi = torch.where(qc >= qmax, torch.inf, qc + 0.5 - MARGIN)
    safe_d = torch.where(d == 0, torch.ones_like(d), d)
    t = (v - m) / safe_d
    inside = (t >= lo) & (t <= hi)  # kept bit for bit: (t·d + m) need not give back v exactly
    new = torch.where(inside, v, torch.clamp(t, lo, hi) * safe_d + m)
    new = torch.where(d == 0, m.expand_as(v), new)
    moved = int(torch.count_nonzero(new != v))
    w.copy_(new.reshape(w.shape).to(w.dtype))
    q.step.copy_(d)
    if q.fmt == "Q4_1":
        q.offset.copy_(m)
    q.initialized.fill_(1)
    want = dequantize(np.ascontiguousarray(raw), q.fmt, (v.shape[0], v.shape[1] * v.shape[2]))
    got = q(w.detach()).float().reshape(want.shape).numpy()
    if not np.array_equal(got.view(np.uint32), want.view(np.uint32)):
        bad = int(np.count_nonzero(got.view(np.uint32) != want.view(np.uint32)))
        raise ExportMismatchError(f"{gname}: {bad} weight(s) do not reproduce the file's values after init")
    return moved
