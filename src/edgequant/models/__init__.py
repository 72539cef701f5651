"""Model files in and out: safetensors, registry-packaged models, HF <-> GGUF.

Public API (stable; imported lazily so that ``import edgequant.models`` does not import torch):

``load_causal_lm(path, dtype=torch.float32) -> (model, tokenizer)``
    ``path`` is a GGUF file (any tensor type edgequant decodes; dequantized in memory, rope permutation
    undone, transformers model built from the GGUF metadata, ``PreTrainedTokenizerFast`` rebuilt from the
    GGUF vocabulary, nothing written) or a Hugging Face folder (safetensors only). Model in eval mode.

``export_hf(gguf_path, out_dir, dtype="f32", on_tensor=None) -> ExportResult``
    GGUF -> Hugging Face folder (model.safetensors, config.json, generation_config.json, tokenizer.json,
    tokenizer_config.json, special_tokens_map.json), atomically.

``convert_hf_to_gguf(hf_dir, out_path, outtype="F16", imatrix=None, verify=True, ...) -> ConvertResult``
    Hugging Face folder -> GGUF of any ftype in one streaming pass, then (by default) a logits check of
    the file in llama.cpp against the HF model in transformers.

Supported architectures: LlamaForCausalLM (SmolLM, Llama 3.x), MistralForCausalLM, Qwen2ForCausalLM,
Qwen3ForCausalLM, Gemma3ForCausalLM (text), Phi3ForCausalLM (see :mod:`edgequant.models.architectures`).
"""

from __future__ import annotations

from edgequant.core.lazy import lazy_exports

_LAZY = {
    "load_causal_lm": "edgequant.models.load",
    "export_hf": "edgequant.models.export",
    "ExportResult": "edgequant.models.export",
    "convert_hf_to_gguf": "edgequant.models.convert",
    "ConvertResult": "edgequant.models.convert",
    "HFCheckpoint": "edgequant.models.hf_checkpoint",
}

__getattr__, __all__ = lazy_exports(__name__, _LAZY)
