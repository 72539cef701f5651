"""Export a LoRA / QLoRA model with its adapters merged: a Hugging Face folder, or a GGUF of any ftype.

``export_merged_hf`` writes ``config.json``, ``model.safetensors`` (``merged_state_dict``: adapters merged in
float32, quantized Linear layers dequantized, tied ``lm_head`` dropped) and the tokenizer files — what
``save_pretrained`` writes for the plain model, so transformers loads it. The folder appears complete or
not at all (``edgequant.models.atomic_dir``).

``export_merged_gguf`` goes through that folder (a temporary beside the output) and
``edgequant.models.convert_hf_to_gguf``: the GGUF holds the merged weights encoded by edgequant's ggml codecs
(``outtype`` F32/F16/BF16 or any llama.cpp ftype: Q8_0, Q4_K_M, ...). Architectures: those the converter
supports (llama/SmolLM, mistral, qwen2).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import torch
from torch import nn

from edgequant.errors import ConfigError, OutputError
from edgequant.models.atomic_dir import atomic_directory
from edgequant.nn.lora_merge import save_merged_safetensors

_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def export_merged_hf(
    model: nn.Module, tokenizer, out_dir: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32
) -> list[str]:
    """Write ``model`` (adapters merged, base dequantized) as a transformers folder; returns the file names.

    ``model`` must be a transformers ``PreTrainedModel`` (its ``config`` is written); ``tokenizer`` may
    be None. ``out_dir`` must not exist or be empty.
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_json_file"):
        raise ConfigError(
            f"export_merged_hf needs a transformers model with a .config, got {type(model).__name__}; "
            "use save_merged_safetensors for other models"
        )
    if dtype not in _DTYPE_NAMES:
        raise ConfigError(f"dtype must be one of float32, float16, bfloat16, got {dtype}")
    config = type(config).from_dict(config.to_dict())  # a copy: do not change the live model's config
    config.dtype = _DTYPE_NAMES[dtype]
    config.use_cache = True
    with atomic_directory(out_dir) as tmp:
        save_merged_safetensors(model, os.path.join(tmp, "model.safetensors"), dtype=dtype)
        config.to_json_file(os.path.join(tmp, "config.json"))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        files = sorted(os.listdir(tmp))
    return files


def export_merged_gguf(
    model: nn.Module,
    tokenizer,
    out_path: str | os.PathLike[str],
    outtype: str = "Q8_0",
    *,
    verify: bool = False,
    imatrix=None,
    threads: int | None = None,
):
    """Merge the adapters and write a GGUF of ``outtype``; returns the converter's ``ConvertResult``.

    ``verify=True`` has llama.cpp (llama-cpp-python) run the written file and compares its logits with
    transformers' on the merged folder (slow; see ``convert_hf_to_gguf``). Nothing is left at ``out_path`` on
    failure; the intermediate float folder is removed in every case.
    """
    from edgequant.models import convert_hf_to_gguf

    if tokenizer is None:
        raise ConfigError("export_merged_gguf needs the model's tokenizer: GGUF files carry the vocabulary")
    out_path = os.path.abspath(os.fspath(out_path))
    parent = os.path.dirname(out_path)
    if not os.path.isdir(parent):
        raise OutputError(f"cannot write {out_path}: the directory {parent} does not exist")
    work = tempfile.mkdtemp(prefix=".merged-hf-", dir=parent)
    try:
        hf_dir = os.path.join(work, "hf")
        export_merged_hf(model, tokenizer, hf_dir, dtype=torch.float32)
        return convert_hf_to_gguf(hf_dir, out_path, outtype, imatrix, verify, threads=threads)
    finally:
        shutil.rmtree(work, ignore_errors=True)
