"""Tiny models built in code for tests and examples (random weights, seeded, nothing downloaded).

``write_tiny_llama(path)`` writes a llama-layout GGUF file (``tiny_llama_tensors``: its tensor names and
shapes in llama.cpp's converter order): F32 norms, matrices of ``weight_type`` (F32, F16 or any type edgequant
encodes, through ``edgequant.gguf.quantize``), ``general.file_type`` the matching llama ftype id.

``write_tiny_hf(folder, arch, tokenizer)`` (arch: llama, mistral, qwen2, qwen3, llama3, gemma3, phi3,
phi4mini) writes a complete Hugging Face model folder as ``save_pretrained`` does (config.json,
model.safetensors, generation_config.json) plus either a byte-level BPE ``tokenizer.json`` trained with
``tokenizers`` (pre-tokenizer Digits + ByteLevel, SmolLM's, which llama.cpp calls "smollm"; or the Llama 3,
Qwen2 or GPT-4o split regex) or a SentencePiece BPE ``tokenizer.model`` trained with ``sentencepiece`` (byte
fallback, like Llama 2's; optionally without the space prefix, like Gemma's), both on ``TRAIN_TEXT``. Sizes:
hidden 256 (a multiple of 256, so K-quants apply without fallback), 2 layers, 4 heads (2 KV heads),
vocabulary ~384. ``rename_arch`` relabels a GGUF's architecture.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
from gguf.constants import GGMLQuantizationType as T
from gguf.constants import GGUFValueType as V

from edgequant.gguf.codecs import quantize
from edgequant.gguf.ftypes import FType
from edgequant.gguf.writer import GGUFStreamWriter


def tiny_llama_tensors(
    n_layer: int, width: int, ff: int, vocab: int, tied: bool = True
) -> list[tuple[str, tuple]]:
    """(name, ne) of a llama model, ne[0] = row length, in llama.cpp's converter order."""
    ts = [("token_embd.weight", (width, vocab)), ("output_norm.weight", (width,))]
    if not tied:
        ts.append(("output.weight", (width, vocab)))
    for i in range(n_layer):
        p = f"blk.{i}."
        ts += [
            (p + "attn_norm.weight", (width,)),
            (p + "ffn_down.weight", (ff, width)),
            (p + "ffn_gate.weight", (width, ff)),
            (p + "ffn_up.weight", (width, ff)),
            (p + "ffn_norm.weight", (width,)),
            (p + "attn_k.weight", (width, width // 4)),
            (p + "attn_output.weight", (width, width)),
            (p + "attn_q.weight", (width, width)),
            (p + "attn_v.weight", (width, width // 4)),
        ]
    return ts


def write_tiny_llama(
    path: str,
    *,
    n_layer: int = 2,
    width: int = 256,
    ff: int = 512,
    vocab: int = 320,
    tied: bool = True,
    seed: int = 0,
    weight_type: str = "F32",
    poison: tuple[str, int] | None = None,
) -> str:
    """Write a tiny llama GGUF. ``poison=(tensor, row)`` puts a NaN in that row (bad-input tests; F32 and
    F16 only: a quantized type refuses non-finite input). A quantized ``weight_type`` needs row lengths
    (``width``, ``ff``) that are a multiple of its block size."""
    rng = np.random.default_rng(seed)
    file_type = FType.parse(weight_type).id
    tensors = tiny_llama_tensors(n_layer, width, ff, vocab, tied)
    with GGUFStreamWriter(path) as w:
        for k, vt, v in [
            ("general.architecture", V.STRING, "llama"),
            ("general.name", V.STRING, "tiny"),
            ("llama.block_count", V.UINT32, n_layer),
            ("llama.context_length", V.UINT32, 256),
            ("llama.embedding_length", V.UINT32, width),
            ("llama.feed_forward_length", V.UINT32, ff),
            ("llama.attention.head_count", V.UINT32, 8),
            ("llama.attention.head_count_kv", V.UINT32, 2),
            ("llama.attention.layer_norm_rms_epsilon", V.FLOAT32, 1e-5),
            ("general.file_type", V.UINT32, file_type),
        ]:
            w.add_kv(k, vt, v)
        data = {}
        for name, ne in tensors:
            x = (rng.standard_normal(ne[::-1]) * 0.05).astype(np.float32)
            if poison and poison[0] == name:
                x.reshape(-1, ne[0])[poison[1], 3] = np.nan
            t = "F32" if len(ne) == 1 else weight_type
            data[name] = _encode(x, t)
            w.add_tensor_info(name, ne, T[t], data[name].nbytes)
        w.write_header()
        for name, _ in tensors:
            w.write_tensor_data(name, data[name])
    return path


def _encode(x: np.ndarray, qtype: str) -> np.ndarray:
    """The tensor data of ``x`` (float32, rows x row length) stored as ``qtype``."""
    if qtype == "F32":
        return x
    if qtype == "F16":
        return x.astype(np.float16)
    return quantize(x.reshape(-1, x.shape[-1]), qtype)


TRAIN_TEXT = (
    "The quick brown fox jumps over the lazy dog. Hello! How are you today? I'm fine, thanks; and you? "
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
    "Numbers such as 1234567890 and 3.14159 appear in text, as do words like quantization, model, weight, "
    "tensor, matrix, llama, token, vocabulary, and edge devices. The capital of France is Paris. "
)
SPECIAL_BPE = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# arch -> (transformers config class, HF architecture, extra config keys)
_ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 32}),  # head_dim != hidden/heads, as Qwen3's
    "llama3": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {  # Llama 3.2's rope scaling, with a short original context so that every branch is used
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            }
        },
    ),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        {  # 6 layers: 5 sliding-window (window 16) + 1 global, as Gemma 3's pattern
            "num_hidden_layers": 6,
            "head_dim": 64,
            "query_pre_attn_scalar": 64,
            "sliding_window": 16,
            "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
            "rope_parameters": {
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            },
        },
    ),
    "phi3": (
        "Phi3Config",
        "Phi3ForCausalLM",
        {  # Phi-4-mini's partial rotary factor (48 of 64 dimensions rotated)
            "pad_token_id": None,
            "original_max_position_embeddings": 256,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75},
        },
    ),
}
_ARCHS[
    "phi4mini"
] = (  # Phi-3.5 / Phi-4-mini: LongRoPE (24 short and 24 long factors for 48 rotated dimensions)
    "Phi3Config",
    "Phi3ForCausalLM",
    {
        "pad_token_id": None,
        "max_position_embeddings": 4096,
        "original_max_position_embeddings": 512,
        "rope_parameters": {
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.75,
            "short_factor": [1.0 + 0.05 * i for i in range(24)],
            "long_factor": [1.0 + 0.5 * i for i in range(24)],
        },
    },
)
# pre-tokenizer split regex per tokenizer kind ("bpe" is SmolLM's Digits + ByteLevel)
_SPLITS = {"bpe-llama3": "llama-bpe", "bpe-qwen2": "qwen2", "bpe-gpt4o": "gpt-4o"}


def _train_bpe(folder: str, vocab_size: int, kind: str = "bpe") -> int:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from edgequant.models.gguf_tokenizer import PRE_TOKENIZERS

    tok = Tokenizer(models.BPE(ignore_merges=kind == "bpe-llama3"))
    if kind in _SPLITS:  # the split regex of Llama 3 / Qwen2, then byte-level without its own regex
        regex = PRE_TOKENIZERS[_SPLITS[kind]]["pretokenizers"][0]["pattern"]["Regex"]
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(regex), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_BPE),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TRAIN_TEXT] * 20, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(folder)
    return tok.get_vocab_size()


def _train_spm(folder: str, vocab_size: int, dummy_prefix: bool = True) -> int:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TRAIN_TEXT.split(". ") * 10),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",  # as Llama's tokenizer.model: llama.cpp does not normalize
        remove_extra_whitespaces=False,
        add_dummy_prefix=dummy_prefix,  # Gemma's tokenizer.model has none
        bos_id=1,
        eos_id=2,
        unk_id=0,
        pad_id=-1,
        minloglevel=2,
    )
    with open(os.path.join(folder, "tokenizer.model"), "wb") as fh:
        fh.write(buf.getvalue())
    cfg = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "chat_template": CHAT_TEMPLATE,
    }
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as fh:
        json.dump(cfg, fh)
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    return sp.vocab_size()


def write_tiny_hf(
    folder: str,
    arch: str = "llama",
    tokenizer: str = "bpe",
    *,
    seed: int = 0,
    tie_word_embeddings: bool = False,
    dtype: str = "float32",
    init_std: float = 0.08,
) -> str:
    """Write a tiny random ``arch`` (llama, mistral, qwen2, qwen3, llama3, gemma3, phi3) model to ``folder``;
    ``tokenizer``: bpe (SmolLM's pre-tokenizer), bpe-llama3 / bpe-qwen2 (those split regexes), spm, or
    spm-noprefix (SentencePiece without the dummy space prefix, as Gemma's)."""
    import torch
    import transformers

    os.makedirs(folder, exist_ok=True)
    if tokenizer.startswith("bpe"):
        n_vocab = _train_bpe(folder, 384, tokenizer)
    else:
        n_vocab = _train_spm(folder, 384, dummy_prefix=tokenizer != "spm-noprefix")
        if arch.startswith(
            "phi3"
        ):  # Phi-3's added tokens (llama.cpp looks <|endoftext|> up in a model named phi3)
            added = {t: n_vocab + i for i, t in enumerate(("<|endoftext|>", "<|end|>"))}
            with open(os.path.join(folder, "added_tokens.json"), "w", encoding="utf-8") as fh:
                json.dump(added, fh)
            n_vocab += len(added)
    cls, hf_arch, extra = _ARCHS[arch]
    kwargs = {
        "vocab_size": n_vocab,
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "initializer_range": init_std,
        "tie_word_embeddings": tie_word_embeddings,
        "bos_token_id": 1,
        "eos_token_id": 2,
        **extra,
    }
    config = getattr(transformers, cls)(**kwargs)
    config.architectures = [hf_arch]
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    gemma = arch == "gemma3"  # Gemma's norms hold w of (1 + w)
    with torch.no_grad():  # random norms and biases, so a mix-up of them cannot go unnoticed
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_((0.0 if gemma else 1.0) + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model.to(getattr(torch, dtype)).save_pretrained(folder, safe_serialization=True)
    return folder


def rename_arch(src: str, dst: str, arch: str) -> str:
    """Copy GGUF ``src`` to ``dst`` as architecture ``arch`` (``general.architecture`` and every
    ``<old arch>.*`` key renamed; tensors as they are): e.g. a llama file as ``xverse``, which llama.cpp runs
    with the same tensors and rope, for tests of architectures edgequant has no PyTorch form of."""
    from edgequant.gguf.reader import GGUFFile

    with GGUFFile(src) as r, GGUFStreamWriter(dst) as w:
        old = r.get("general.architecture")
        for kv in r.kvs.values():
            name = kv.name.replace(f"{old}.", f"{arch}.", 1) if kv.name.startswith(f"{old}.") else kv.name
            w.add_kv(name, kv.vtype, arch if kv.name == "general.architecture" else kv.value, kv.array_type)
        for t in r.tensors:
            w.add_tensor_info(t.name, t.shape_ne, t.type_id, t.nbytes)
        w.write_header()
        for t in r.tensors:
            w.write_tensor_data(t.name, r.tensor_data(t))
    return dst
