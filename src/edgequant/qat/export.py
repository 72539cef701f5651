"""Export a QAT-prepared model to GGUF so that llama.cpp runs exactly the weights that were trained.

``export_gguf(model, tokenizer, out_path)`` (transformers llama/mistral/qwen2 models, as from
``edgequant.models.load_causal_lm`` then ``qat.prepare``):

1. the model's state, with every QAT module's weight replaced by its eval-mode fake-quantized value, goes to
   a temporary Hugging Face folder (safetensors + config + tokenizer);
2. ``edgequant.models.convert_hf_to_gguf(..., outtype="F32")`` turns it into an F32 GGUF (names, metadata,
   tokenizer, q/k row permutation: the converter's job);
3. every tensor whose module has a ggml quantizer (``method="ggml"`` or ``"codec"``) is replaced by the bytes
   that quantizer packs (``export_bytes``), rows permuted like the converter permuted them, and checked:
   ggml's dequantization of those bytes must equal the F32 tensor (the trained fake weights) bit for bit,
   else ``ExportMismatchError``. Other tensors stay F32; QAT modules with a non-ggml quantizer (LSQ...) are
   written as F32 holding their fake-quantized values (``result["f32_fake"]`` lists them), or refused with
   ``strict=True``.

``to_linear4bit(model)``: the bitsandbytes export, every QAT linear with a ``BnbQuantizer`` (NF4/FP4) becomes
an ``edgequant.nn.Linear4bit`` whose ``dequantize()`` equals the trained fake weights bit for bit.

The QAT recipe (``QATConfig.to_json()``) is stored under the key ``edgequant.qat.config``. The output is
written to a temporary file and renamed at the end; on error nothing is left at ``out_path``.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch
from torch import nn

from edgequant.errors import ConfigError, EdgequantError
from edgequant.nn import Linear4bit
from edgequant.nn.quantize import set_submodule
from edgequant.qat.bnb_grid import BnbQuantizer
from edgequant.qat.ggml_grid import CodecQuantizer, GGMLGridQuantizer
from edgequant.qat.modules import QATLinear
from edgequant.qat.prepare import qat_modules


class ExportMismatchError(EdgequantError):
    """The packed GGUF bytes do not dequantize to the trained fake-quantized weights (a bug, not expected)."""


def fake_quantized_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's float state with each QAT weight replaced by its eval-mode fake-quantized value."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            state = {k: v for k, v in model.state_dict().items() if "_quantizer." not in k}
            for name, mod in qat_modules(model):
                state[name + ".weight"] = mod.quantized_weight().detach()
    finally:
        model.train(was_training)
    return {k: v.detach().to(torch.float32).contiguous().clone() for k, v in state.items()}


def save_fake_quantized_hf(model: nn.Module, tokenizer, folder: str) -> str:
    """Write the fake-quantized model as a Hugging Face folder (float32 safetensors, config, tokenizer)."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    state = fake_quantized_state_dict(model)
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def _row_permutation(hf_name: str, hp: dict, spec):
    from edgequant.models.architectures import permute_qk

    if not spec.permute_qk:
        return None
    if hf_name.endswith("q_proj.weight"):
        return lambda a: permute_qk(a, int(hp["num_attention_heads"]))
    if hf_name.endswith("k_proj.weight"):
        return lambda a: permute_qk(a, int(hp.get("num_key_value_heads") or hp["num_attention_heads"]))
    return None


def export_gguf(model: nn.Module, tokenizer, out_path: str | os.PathLike, *, strict: bool = False) -> dict:
    """Write ``model`` (QAT-prepared transformers causal LM) to ``out_path``; returns a report dict."""
    from gguf.constants import GGUFValueType

    from edgequant.gguf import dequantize
    from edgequant.gguf.reader import GGUFFile
    from edgequant.gguf.writer import GGUFStreamWriter, check_writable
    from edgequant.models import convert_hf_to_gguf
    from edgequant.models.architectures import arch_from_config
    from edgequant.models.convert_plan import expected_shapes, map_names
    from edgequant.models.hf_checkpoint import HFCheckpoint

    out_path = os.fspath(out_path)
    check_writable(out_path)
    modules = dict(qat_modules(model))
    if not modules:
        raise ConfigError("export_gguf: the model has no QAT modules; call edgequant.qat.prepare first")
    report: dict = {"dst": out_path, "types": {}, "packed": [], "f32_fake": [], "bitwise_checked": 0}
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(out_path))) as tmp:
        hf_dir = save_fake_quantized_hf(model, tokenizer, os.path.join(tmp, "hf"))
        f32_path = os.path.join(tmp, "f32.gguf")
        convert_hf_to_gguf(hf_dir, f32_path, outtype="F32", verify=False)
        ckpt = HFCheckpoint(hf_dir)
        try:
            spec = arch_from_config(ckpt.config, hf_dir)
            hp = ckpt.config
            gguf_to_hf = map_names(ckpt, spec, expected_shapes(hp, spec))
        finally:
            ckpt.close()
        config_json = getattr(model, "qat_config", None)
        with GGUFFile(f32_path) as reader, GGUFStreamWriter(out_path) as writer:
            for kv in reader.kvs.values():
                writer.add_kv_entry(kv)
            if config_json is not None:
                writer.add_kv("edgequant.qat.config", GGUFValueType.STRING, config_json.to_json())
            payload = {}
            for t in reader.tensors:
                hf_name = gguf_to_hf[t.name]
                mod = modules.get(hf_name.removesuffix(".weight")) if hf_name.endswith(".weight") else None
                q = mod.weight_quantizer if mod is not None else None
                if q is not None and q.enabled and isinstance(q, (GGMLGridQuantizer, CodecQuantizer)):
                    data = q.export_bytes(mod.weight.detach().float())
                    permute = _row_permutation(hf_name, hp, spec)
                    if permute is not None:
                        data = np.ascontiguousarray(permute(data))
                    want = reader.tensor_f32(t).reshape(t.np_shape)
                    got = dequantize(data, q.fmt, tuple(t.np_shape))
                    if not np.array_equal(got.view(np.uint32), np.ascontiguousarray(want).view(np.uint32)):
                        bad = int(np.count_nonzero(got.view(np.uint32) != want.view(np.uint32)))
                        raise ExportMismatchError(
                            f"{t.name} ({hf_name}): {bad} value(s) of the packed {q.fmt} bytes differ "
                            "from the trained fake-quantized weights"
                        )
                    payload[t.name] = (q.fmt, data)
                    report["packed"].append(t.name)
                    report["bitwise_checked"] += int(got.size)
                else:
                    if mod is not None and mod.weight_quantizer is not None:
                        if strict:
                            raise ConfigError(
                                f"{hf_name}: quantizer method '{mod.weight_quantizer.spec.method}' has no "
                                "GGUF layout; use QuantSpec(method='ggml' or 'codec'), or strict=False (F32)"
                            )
                        report["f32_fake"].append(t.name)
                    payload[t.name] = ("F32", np.ascontiguousarray(reader.tensor_data(t)))
                fmt, data = payload[t.name]
                writer.add_tensor_info(t.name, t.shape_ne, fmt, data.nbytes)
                report["types"][fmt] = report["types"].get(fmt, 0) + 1
            writer.write_header()
            for t in reader.tensors:
                writer.write_tensor_data(t.name, payload[t.name][1])
    report["bytes"] = os.path.getsize(out_path)
    return report


@torch.no_grad()
def to_linear4bit(model: nn.Module) -> nn.Module:
    """Replace every QAT linear whose weight quantizer is ``BnbQuantizer`` by ``edgequant.nn.Linear4bit``."""
    for name, mod in list(qat_modules(model)):
        q = mod.weight_quantizer
        if not (isinstance(mod, QATLinear) and isinstance(q, BnbQuantizer)):
            continue
        lin = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
        lin.weight.copy_(mod.weight.detach().float())
        if mod.bias is not None:
            lin.bias.copy_(mod.bias.detach().float())
        new = Linear4bit.from_linear(lin, name=name, compute_dtype=torch.float32, **q.codec_args())
        set_submodule(model, name, new)
    return model
