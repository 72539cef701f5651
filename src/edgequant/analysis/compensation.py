"""Post-training error compensation of a quantized PyTorch model (the book's §8.4.3, issue 12 item 4).

Every function takes the float model and its quantized copy (same module names, e.g. built with
``copy.deepcopy`` + ``edgequant.quantize_`` or ``edgequant.qat.prepare``) and changes the quantized one in
place, keeping each layer's stored format valid.

* ``bias_correct``: empirical bias correction (Nagel et al. 2019, "Data-Free Quantization", §4.2, the
  empirical variant). For each quantized layer with a bias, in module order, ``b ← b − E[(Ŵ−W)x]`` where
  ``Ŵ`` is the layer's dequantized weight, ``W`` the float weight of the layer of the same name in the float
  model and ``x`` the quantized model's own inputs to that layer over the calibration batches (earlier
  layers already corrected; one pass over the batches per layer). The mean is over every position but the
  output channel (last dim of a Linear, dim 1 of a Conv). With ``include_activation_error=True`` the
  subtracted mean is ``E[q(x) − f(x)]`` (layer outputs), which adds the error of layers that also quantize
  their input (Int8DynamicLinear, LLM.int8); after it the layer's mean output error on the calibration
  inputs is 0 (up to float32 rounding). That is not the default: on MiniLM-L6 the 99.9-percentile
  activation clipping of Int8DynamicLinear removes rare massive activations (one FFN output channel is ~197
  on a few tokens, ~0 elsewhere), and moving their mean error onto every token ruins the model (cosine
  0.98 -> 0.07, benchmarks/results/compensation.md). Plain Linear/Conv layers (e.g. ``qat.convert``
  output) use ``q(x) − f(x)``, which is ``(Ŵ−W)x`` for them. Layers without a bias are left unchanged.
  The book writes ``bias = E[W_q − W]`` and subtracts it from the weights; a weight-space mean ignores the
  inputs, so we correct the output bias as the paper does.
* ``scale_search``: per-scale MSE-optimal scale, ``s* = argmin_s ‖W − Q(W; s)‖²`` over
  ``s = α · s_absmax`` with α in ``multipliers`` (default 0.50, 0.51, …, 1.00: 51 values, α = 1 included,
  so the error never grows). What is searched: Int8DynamicLinear and Linear8bitLt: one scale per output row
  (``weight_scale`` resp. ``SCB``; codes ``clamp(round(W/s), −127, 127)``, for LLM.int8 from ``W.half()``
  as bnb); Linear4bit (NF4/FP4): one absmax per block of ``blocksize`` consecutive weights (the format's
  only scale), codes = the nearest table value to ``w / absmax``. A block or row keeps its current codes
  and scale unless a candidate is strictly better. With double quantization the chosen absmax values are
  8-bit quantized again as bnb does (offset = mean, blocks of 256) and the codes re-chosen for the
  recovered absmax; if that total error is not below the layer's current one the layer is left unchanged.
* ``bn_calibrate``: activation range calibration from float BatchNorm statistics, the book's
  ``x_cal = (x − μ_q)·σ_f/σ_q + μ_f`` before each BatchNorm. μ_q, σ_q (population std) are the per-channel
  statistics of the BN's input in the quantized model over the calibration batches (eval mode, earlier BNs
  already calibrated); μ_f, σ_f² are the float BN's ``running_mean``/``running_var``. The map is folded
  into the BN: ``running_mean ← μ_q``, ``running_var ← σ_q²·(σ_f² + eps)/σ_f² − eps``, which makes
  ``BN(x)`` equal ``BN_f(x_cal)`` exactly. It is BatchNorm re-estimation on the quantized model up to the
  eps terms (``qat.reestimate_bn`` sets ``running_var ← σ_q²``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgequant.bnb.blockwise import quantize_blockwise, recover_absmax
from edgequant.bnb.codes import code_table_np, get_4bit_type
from edgequant.bnb.fourbit import NESTED_BLOCKSIZE, packed_bytes
from edgequant.bnb.quant_state import QuantState
from edgequant.errors import ConfigError
from edgequant.nn.int8_dynamic import Int8DynamicLinear
from edgequant.nn.linear4bit import Linear4bit
from edgequant.nn.linear8bit import DEQ_SCALE, Linear8bitLt
from edgequant.nn.quantized_linear import QuantizedLinear

DEFAULT_MULTIPLIERS = tuple(round(0.5 + 0.01 * k, 2) for k in range(51))
_CORRECTABLE = (QuantizedLinear, nn.Linear, nn.Conv1d, nn.Conv2d)


def _run(model: nn.Module, batch) -> None:
    if isinstance(batch, dict):
        model(**batch)
    elif isinstance(batch, (tuple, list)):
        model(*batch)
    else:
        model(batch)


def _channel_dim(mod: nn.Module) -> int:
    return 1 if isinstance(mod, (nn.Conv1d, nn.Conv2d)) else -1


def _per_channel(t: torch.Tensor, dim: int) -> tuple[torch.Tensor, int]:
    """(sum over every dim but ``dim`` as float64, count of summed positions)."""
    t = t.movedim(dim, -1).reshape(-1, t.shape[dim]).double()
    return t.sum(0), t.shape[0]


def _differs(qm: nn.Module, fm: nn.Module) -> bool:
    if type(qm) is not type(fm):
        return True
    return not torch.equal(qm.weight, fm.weight)


def _batches(batches, who: str) -> list:
    """The calibration batches as a list; ConfigError naming ``who`` when there are none."""
    batches = list(batches)
    if not batches:
        raise ConfigError(f"{who}: no calibration batches; pass at least one input batch")
    return batches


def _run_hooked(model: nn.Module, batches: list, handle) -> None:
    """Run ``model`` on every batch with a hook registered (``handle``), removing the hook afterwards."""
    try:
        for b in batches:
            _run(model, b)
    finally:
        handle.remove()


@torch.no_grad()
def bias_correct(
    float_model: nn.Module,
    quantized_model: nn.Module,
    batches,
    names=None,
    include_activation_error: bool = False,
) -> dict[str, torch.Tensor]:
    """Empirical bias correction (module docstring); returns ``{name: the subtracted mean}``."""
    batches = _batches(batches, "bias_correct")
    fmods = dict(float_model.named_modules())
    targets = [
        (n, m)
        for n, m in quantized_model.named_modules()
        if isinstance(m, _CORRECTABLE)
        and getattr(m, "bias", None) is not None
        and n in fmods
        and getattr(fmods[n], "bias", None) is not None
        and (names is None or n in names)
        and _differs(m, fmods[n])
    ]
    was_training = quantized_model.training
    quantized_model.eval()
    done: dict[str, torch.Tensor] = {}
    try:
        for name, qm in targets:
            fm, dim = fmods[name], _channel_dim(qm)
            acc = {"sum": 0.0, "n": 0}
            dw = None
            if isinstance(qm, QuantizedLinear) and not include_activation_error:
                dw = qm.dequantize().float() - fm.weight.float()

            def hook(mod, args, out, fm=fm, dim=dim, acc=acc, dw=dw):
                if dw is not None:
                    diff = F.linear(args[0].float(), dw)
                else:
                    diff = out.float() - fm(*args).float()
                s, n = _per_channel(diff, dim)
                acc["sum"], acc["n"] = acc["sum"] + s, acc["n"] + n

            _run_hooked(quantized_model, batches, qm.register_forward_hook(hook))
            mean = (acc["sum"] / max(acc["n"], 1)).float()
            qm.bias.data -= mean.to(qm.bias.dtype)
            done[name] = mean
    finally:
        quantized_model.train(was_training)
    return done


# -- scale search ------------------------------------------------------------------------------------
def _check_multipliers(multipliers) -> torch.Tensor:
    m = torch.tensor([float(a) for a in multipliers], dtype=torch.float32)
    if m.numel() == 0 or not bool((m > 0).all()):
        raise ConfigError("scale_search: multipliers must be a non-empty list of positive numbers")
    return m


def _int8_rows(w: torch.Tensor, base: torch.Tensor, mult: torch.Tensor, quantize, dequant):
    """Per row: best (codes, scale) over scales ``α·base``; ``quantize(w, s)`` -> codes, ``dequant(c, s)``."""
    best_err = torch.full((w.shape[0],), float("inf"))
    best_c = best_s = None
    wf = w.float()
    for a in mult:
        s = base * a if float(a) != 1.0 else base.clone()
        c = quantize(w, s)
        err = (dequant(c, s) - wf).pow(2).sum(1)
        better = err < best_err
        if best_c is None:
            best_c, best_s = c.clone(), s.clone()
        best_c[better], best_s[better] = c[better], s[better]
        best_err = torch.where(better, err, best_err)
    return best_c, best_s


def _search_int8_dynamic(layer: Int8DynamicLinear, w: torch.Tensor, mult: torch.Tensor) -> None:
    w = w.detach().float()
    am = w.abs().amax(1)
    base = torch.where(am > 0, am / 127.0, torch.ones_like(am))

    def quantize(w, s):
        return torch.clamp(torch.round(w / s.unsqueeze(-1)), -127, 127).to(torch.int8)

    def dequant(c, s):
        return c.float() * s.unsqueeze(-1)

    c, s = _int8_rows(w, base, mult, quantize, dequant)
    c, s = _keep_unless_better(layer, w, c, s, dequant, layer.weight_scale)
    layer.weight.data.copy_(c)
    layer.weight_scale = s


def _search_llm_int8(layer: Linear8bitLt, w: torch.Tensor, mult: torch.Tensor) -> None:
    if layer.has_fp16_weights:
        return
    w16 = w.detach().to(torch.float16)
    base = w16.abs().amax(1).float()

    def quantize(w, s):
        return torch.clamp(torch.round(w16 * (127.0 / s.unsqueeze(-1))), -127, 127).to(torch.int8)

    def dequant(c, s):
        return c * s.unsqueeze(-1) * DEQ_SCALE

    c, s = _int8_rows(w16, base, mult, quantize, dequant)
    c, s = _keep_unless_better(layer, w.detach().float(), c, s, dequant, layer.SCB)
    layer.weight.data.copy_(c)
    layer.SCB = s


def _keep_unless_better(layer, w: torch.Tensor, c, s, dequant, old_scales):
    """Rows keep the layer's current codes and scale unless the searched ones have a strictly lower
    squared error against ``w``."""
    old = (layer.dequantize() - w).pow(2).sum(1)
    new = (dequant(c, s) - w).pow(2).sum(1)
    keep = old <= new
    c[keep], s[keep] = layer.weight.data[keep], old_scales[keep]
    return c, s


def _nearest_codes(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Index of the nearest table value to each element (first index on a tie)."""
    return (x.unsqueeze(-1) - table).abs().argmin(-1)


def _unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    pk = torch.from_numpy(packed_bytes(packed).copy()).long()
    return torch.stack([pk >> 4, pk & 15], 1).reshape(-1)[:n]


def _pack(codes: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    c = codes.to(torch.uint8)
    if c.numel() % 2:
        c = torch.cat([c, c.new_zeros(1)])
    packed = ((c[0::2] << 4) | c[1::2]).contiguous()
    return packed.view(like.dtype).unsqueeze(1) if like.dtype != torch.uint8 else packed.unsqueeze(1)


def _block_errors(blocks: torch.Tensor, codes: torch.Tensor, am: torch.Tensor, table: torch.Tensor):
    return (table[codes] * am.unsqueeze(-1) - blocks).pow(2).sum(1)


def _search_fourbit(layer: Linear4bit, w: torch.Tensor, mult: torch.Tensor) -> None:
    st, bs = layer.quant_state, layer.blocksize
    table = torch.from_numpy(code_table_np(st.quant_type).copy()).float()
    flat = w.detach().float().reshape(-1)
    n = flat.numel()
    nb = -(-n // bs)
    blocks = F.pad(flat, (0, nb * bs - n)).reshape(nb, bs)
    old_codes = F.pad(_unpack(layer.weight.data, n), (0, nb * bs - n)).reshape(nb, bs)
    old_am = recover_absmax(st).float()
    old_err = _block_errors(blocks, old_codes, old_am, table)
    best_err, best_am, best_codes = old_err.clone(), old_am.clone(), old_codes.clone()
    base = blocks.abs().amax(1).clamp_min(1e-30)
    for a in mult:
        am = base * a if float(a) != 1.0 else base.clone()
        codes = _nearest_codes(blocks / am.unsqueeze(-1), table)
        err = _block_errors(blocks, codes, am, table)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_am = torch.where(better, am, best_am)
        best_codes[better] = codes[better]
    same = {"shape": st.shape, "code": get_4bit_type(st.quant_type), "blocksize": bs,
            "quant_type": st.quant_type, "dtype": st.dtype}  # fmt: skip
    if st.nested:
        offset = best_am.mean()
        qabsmax, state2 = quantize_blockwise(best_am - offset, blocksize=NESTED_BLOCKSIZE)
        new_state = QuantState(absmax=qabsmax, offset=offset, state2=state2, **same)
        rec = recover_absmax(new_state).float()
        best_codes = _nearest_codes(blocks / rec.clamp_min(1e-30).unsqueeze(-1), table)
        if _block_errors(blocks, best_codes, rec, table).sum() >= old_err.sum():
            return
    else:
        new_state = QuantState(absmax=best_am, **same)
    layer._adopt(_pack(best_codes.reshape(-1)[:n], layer.weight.data), new_state)


@torch.no_grad()
def scale_search(
    float_model: nn.Module, quantized_model: nn.Module, multipliers=DEFAULT_MULTIPLIERS
) -> list[str]:
    """Per-row (int8) / per-block (4-bit) MSE scale search (module docstring); returns the layers searched."""
    mult = _check_multipliers(multipliers)
    fmods = dict(float_model.named_modules())
    done = []
    for name, qm in quantized_model.named_modules():
        fm = fmods.get(name)
        if fm is None or not isinstance(getattr(fm, "weight", None), torch.Tensor):
            continue
        if isinstance(qm, Int8DynamicLinear):
            _search_int8_dynamic(qm, fm.weight, mult)
        elif isinstance(qm, Linear8bitLt):
            _search_llm_int8(qm, fm.weight, mult)
        elif isinstance(qm, Linear4bit):
            _search_fourbit(qm, fm.weight, mult)
        else:
            continue
        done.append(name)
    return done


# -- BatchNorm calibration ---------------------------------------------------------------------------
@torch.no_grad()
def bn_calibrate(
    float_model: nn.Module, quantized_model: nn.Module, batches
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Fold the book's x_cal map into each BatchNorm (module docstring); returns ``{name: (μ_q, σ_q²)}``."""
    batches = _batches(batches, "bn_calibrate")
    fmods = dict(float_model.named_modules())
    bns = [
        (n, m)
        for n, m in quantized_model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and isinstance(fmods.get(n), nn.modules.batchnorm._BatchNorm)
        and m.running_mean is not None
    ]
    if not bns:
        raise ConfigError("bn_calibrate: no BatchNorm with running statistics in both models")
    was_training = quantized_model.training
    quantized_model.eval()
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    try:
        for name, bn in bns:
            acc = {"s": 0.0, "s2": 0.0, "n": 0}

            def hook(mod, args, acc=acc):
                x = args[0]
                s, n = _per_channel(x, 1)
                s2, _ = _per_channel(x.double().pow(2), 1)
                acc["s"], acc["s2"], acc["n"] = acc["s"] + s, acc["s2"] + s2, acc["n"] + n

            _run_hooked(quantized_model, batches, bn.register_forward_pre_hook(hook))
            mu_q = acc["s"] / acc["n"]
            var_q = (acc["s2"] / acc["n"] - mu_q.pow(2)).clamp_min(0.0)
            fbn = fmods[name]
            var_f, eps = fbn.running_var.double(), bn.eps
            ok = (var_f > 0) & (var_q > 0)
            new_var = var_q * (var_f + eps) / var_f.clamp_min(1e-300) - eps
            bn.running_mean.copy_(torch.where(ok, mu_q, bn.running_mean.double()).to(bn.running_mean.dtype))
            bn.running_var.copy_(torch.where(ok, new_var, bn.running_var.double()).to(bn.running_var.dtype))
            out[name] = (mu_q.float(), var_q.float())
    finally:
        quantized_model.train(was_training)
    return out
