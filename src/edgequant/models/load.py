"""Load a causal LM into PyTorch from a GGUF file or a Hugging Face folder: ``load_causal_lm``."""

from __future__ import annotations

import contextlib
import json
import os

from edgequant.errors import ConfigError, FormatError


def _transformers_config(cfg: dict):
    """A transformers config object from a config.json dict (rope_theta moved to rope_parameters for v5)."""
    from transformers import AutoConfig

    cfg = dict(cfg)
    model_type = cfg.pop("model_type")
    theta = cfg.pop("rope_theta", None)
    scaling = cfg.pop("rope_scaling", None)
    rope = {"rope_type": "default", "rope_theta": theta if theta is not None else 10000.0}
    if scaling:
        rope.update(scaling)
    rope = cfg.pop("rope_parameters", rope)  # per layer type (Gemma 3) as it is
    cfg.pop("torch_dtype", None)
    return AutoConfig.for_model(model_type, rope_parameters=rope, **cfg)


def _materialize_buffers(model) -> None:
    """Non-persistent buffers stay on the meta device after ``load_state_dict(assign=True)``: rebuild the
    rotary embeddings from the config and refill Gemma's embedding scale; FormatError if any is left."""
    import torch

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not any(b.is_meta for b in child.buffers(recurse=False)):
                continue
            if type(child).__name__.endswith("RotaryEmbedding"):
                setattr(parent, name, type(child)(config=child.config))
            elif hasattr(child, "scalar_embed_scale"):
                child.embed_scale = torch.tensor(child.scalar_embed_scale)
    left = [n for n, b in model.named_buffers() if b.is_meta]
    if left:
        raise FormatError(f"cannot build {type(model).__name__} from a GGUF: buffer {left[0]} has no value")


def _load_gguf(path: str, dtype):
    import torch
    from transformers import AutoModelForCausalLM

    from edgequant.gguf.reader import GGUFFile
    from edgequant.models.gguf_model import gguf_kv, hf_config_dict, iter_hf_tensors
    from edgequant.models.gguf_tokenizer import build_fast_tokenizer

    with GGUFFile(path) as reader:
        spec, cfg = hf_config_dict(reader)
        config = _transformers_config(cfg)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        state = {name: torch.from_numpy(x).to(dtype) for name, x in iter_hf_tensors(reader, spec, cfg)}
        tokenizer = build_fast_tokenizer(gguf_kv(reader), path)
    expected = set(model.state_dict())
    missing = sorted(expected - set(state) - ({"lm_head.weight"} if cfg["tie_word_embeddings"] else set()))
    if missing:
        raise FormatError(f"{path}: tensors missing for the Hugging Face model: {', '.join(missing[:5])}")
    model.load_state_dict(state, strict=False, assign=True)
    _materialize_buffers(model)
    if cfg["tie_word_embeddings"]:
        model.tie_weights()
    model.eval()
    return model, tokenizer


@contextlib.contextmanager
def quiet_transformers():
    """Library code does not print: silence transformers' "Loading weights" bars and info logs for a call."""
    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _load_hf(path: str, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgequant.models.hf_checkpoint import HFCheckpoint

    HFCheckpoint(path).check_loadable()  # refuses pickles, truncated or mis-shaped shards with a clear error
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(path)
    model.eval()
    return model, tokenizer


def load_causal_lm(path: str | os.PathLike, dtype=None):
    """``(model, tokenizer)`` for a GGUF file or a Hugging Face model folder, ready for inference (eval mode).

    GGUF: any tensor type edgequant decodes; weights are dequantized in memory (ggml's exact values, rope
    permutation undone), the transformers model is built from the GGUF metadata and the tokenizer is a
    ``PreTrainedTokenizerFast`` rebuilt from the GGUF vocabulary; nothing is written to disk.
    HF folder: ``config.json`` + safetensors weights (never a pickle) + tokenizer files.
    ``dtype`` defaults to ``torch.float32``.
    """
    import torch

    dtype = torch.float32 if dtype is None else dtype
    path = os.fspath(path)
    if os.path.isdir(path):
        return _load_hf(path, dtype)
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such file or directory; give a .gguf file or a Hugging Face folder")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        hint = ""
        if path.endswith(".json"):
            with open(path, encoding="utf-8") as fh:
                hint = " (a config.json? give its folder)" if "architectures" in json.load(fh) else ""
        raise FormatError(f"{path}: not a GGUF file{hint}; give a .gguf file or a Hugging Face model folder")
    return _load_gguf(path, dtype)
