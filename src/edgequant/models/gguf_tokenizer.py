"""A Hugging Face fast tokenizer (``tokenizers.Tokenizer``) rebuilt from a GGUF file's vocabulary.

Two llama.cpp tokenizer models are handled:

* ``tokenizer.ggml.model = "gpt2"`` (byte-level BPE): vocab = ``tokenizer.ggml.tokens`` (ids are list
  positions), merges = ``tokenizer.ggml.merges`` ("a b" strings, rank = position). The pre-tokenizer is
  chosen from ``tokenizer.ggml.pre`` the way llama.cpp's ``llama-vocab.cpp`` chooses its split regexes
  (``PRE_TOKENIZERS`` below). Tokens of type CONTROL (3) become special added tokens, USER_DEFINED (4)
  plain added tokens.
* ``tokenizer.ggml.model = "llama"`` (SentencePiece BPE with byte fallback): llama.cpp merges greedily by
  the *score* of the merged piece, so the HF BPE merges are every split ``(l, r)`` of a vocab piece with
  both halves in the vocab, ranked by the merged piece's score (highest first; ties by id). Spaces become
  U+2581 and one is prepended when ``tokenizer.ggml.add_space_prefix`` (default true) says so.

Anything else raises ConfigError naming the model/pre type.
"""

from __future__ import annotations

from typing import Any

from edgequant.errors import ConfigError

TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_SPLIT = (  # o200k (GPT-4o, Phi-4-mini): llama-vocab.cpp's "original regex from tokenizer.json"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
    r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _split_then_bytes(regex: str, trim_offsets: bool) -> dict[str, Any]:
    """A Split on ``regex`` (isolated) followed by ByteLevel without its own regex."""
    return {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
            {
                "type": "ByteLevel",
                "add_prefix_space": False,
                "trim_offsets": trim_offsets,
                "use_regex": False,
            },
        ],
    }


# llama.cpp pre-tokenizer name -> HF pre_tokenizer JSON (the split llama-vocab.cpp applies for that name).
PRE_TOKENIZERS: dict[str, dict[str, Any]] = {
    "gpt-2": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    "smollm": {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ],
    },
    "llama-bpe": _split_then_bytes(_LLAMA3_SPLIT, trim_offsets=True),
    "qwen2": _split_then_bytes(_QWEN2_SPLIT, trim_offsets=False),
    "gpt-4o": _split_then_bytes(_GPT4O_SPLIT, trim_offsets=False),
}
PRE_TOKENIZERS["default"] = PRE_TOKENIZERS["gpt-2"]
PRE_TOKENIZERS["starcoder"] = PRE_TOKENIZERS["smollm"]  # same regexes in llama-vocab.cpp
PRE_TOKENIZERS["llama3"] = PRE_TOKENIZERS["llama-bpe"]


def _kv_list(kv: dict, key: str) -> list:
    v = kv.get(key)
    return [] if v is None else list(v)


def tokenizer_json_from_gguf(kv: dict, where: str) -> dict[str, Any]:
    """The ``tokenizer.json`` content (a dict) for the vocabulary in GGUF metadata ``kv``."""
    model = kv.get("tokenizer.ggml.model")
    tokens = [str(t) for t in _kv_list(kv, "tokenizer.ggml.tokens")]
    if not tokens:
        raise ConfigError(f"{where}: no tokenizer.ggml.tokens in the metadata; the file has no vocabulary")
    types = [int(t) for t in _kv_list(kv, "tokenizer.ggml.token_type")] or [TOKEN_NORMAL] * len(tokens)
    added = [
        {
            "id": i,
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": ty == TOKEN_USER_DEFINED,
            "special": ty == TOKEN_CONTROL,
        }
        for i, (tok, ty) in enumerate(zip(tokens, types, strict=True))
        if ty in (TOKEN_CONTROL, TOKEN_USER_DEFINED) or (model == "llama" and ty == TOKEN_UNKNOWN)
    ]
    if model == "gpt2":
        pre = str(kv.get("tokenizer.ggml.pre", "default"))
        if pre not in PRE_TOKENIZERS:
            raise ConfigError(
                f"{where}: pre-tokenizer '{pre}' is not known to edgequant's exporter; "
                f"supported: {', '.join(sorted(PRE_TOKENIZERS))}"
            )
        merges = [str(m) for m in _kv_list(kv, "tokenizer.ggml.merges")]
        body = {
            "normalizer": None,
            "pre_tokenizer": PRE_TOKENIZERS[pre],
            "decoder": {
                "type": "ByteLevel",
                "add_prefix_space": True,
                "trim_offsets": True,
                "use_regex": True,
            },
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": pre in ("llama-bpe", "llama3"),
                "vocab": {t: i for i, t in enumerate(tokens)},
                "merges": [m.split(" ", 1) for m in merges],
            },
        }
    elif model == "llama":
        body = _spm_body(kv, tokens, types)
    else:
        raise ConfigError(
            f"{where}: tokenizer model '{model}' is not supported for export (only 'gpt2' BPE and 'llama' "
            "SentencePiece)"
        )
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "post_processor": _post_processor(kv, tokens),
        **body,
    }


def _spm_body(kv: dict, tokens: list[str], types: list[int]) -> dict[str, Any]:
    scores = [float(s) for s in _kv_list(kv, "tokenizer.ggml.scores")] or [0.0] * len(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    unk_id = kv.get("tokenizer.ggml.unknown_token_id")
    candidates = []
    for i, (tok, ty) in enumerate(zip(tokens, types, strict=True)):
        if ty not in (TOKEN_NORMAL, TOKEN_USER_DEFINED) or len(tok) < 2:
            continue
        for k in range(1, len(tok)):
            left, right = tok[:k], tok[k:]
            if left in vocab and right in vocab:
                candidates.append((-scores[i], i, vocab[left], vocab[right], left, right))
    candidates.sort()
    prefix = bool(kv.get("tokenizer.ggml.add_space_prefix", True))
    normalizers = [{"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]
    if prefix:
        normalizers.insert(0, {"type": "Prepend", "prepend": "\u2581"})
    decoders = [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
    ]
    if prefix:
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    return {
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": None,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": tokens[int(unk_id)] if unk_id is not None else None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [[c[4], c[5]] for c in candidates],
        },
    }


def _post_processor(kv: dict, tokens: list[str]) -> dict[str, Any] | None:
    """Add BOS/EOS around single sequences and pairs, as llama.cpp's add_bos/add_eos flags say."""
    model = kv.get("tokenizer.ggml.model")
    add_bos = bool(kv.get("tokenizer.ggml.add_bos_token", model == "llama"))
    add_eos = bool(kv.get("tokenizer.ggml.add_eos_token", False))
    bos, eos = kv.get("tokenizer.ggml.bos_token_id"), kv.get("tokenizer.ggml.eos_token_id")
    pieces_a, pieces_b, special = [], [], {}
    if add_bos and bos is not None:
        pieces_a.append({"SpecialToken": {"id": tokens[int(bos)], "type_id": 0}})
        pieces_b.append({"SpecialToken": {"id": tokens[int(bos)], "type_id": 1}})
        special[tokens[int(bos)]] = {"id": tokens[int(bos)], "ids": [int(bos)], "tokens": [tokens[int(bos)]]}
    pieces_a.append({"Sequence": {"id": "A", "type_id": 0}})
    pieces_b.append({"Sequence": {"id": "B", "type_id": 1}})
    if add_eos and eos is not None:
        pieces_a.append({"SpecialToken": {"id": tokens[int(eos)], "type_id": 0}})
        pieces_b.append({"SpecialToken": {"id": tokens[int(eos)], "type_id": 1}})
        special[tokens[int(eos)]] = {"id": tokens[int(eos)], "ids": [int(eos)], "tokens": [tokens[int(eos)]]}
    if not special:
        return None
    pair = pieces_a + pieces_b
    return {"type": "TemplateProcessing", "single": pieces_a, "pair": pair, "special_tokens": special}


def spm_model_from_gguf(kv: dict) -> bytes:
    """A SentencePiece ``tokenizer.model`` (BPE, byte fallback, no normalization) holding the GGUF's pieces,
    scores and types (GGUF token types are SentencePiece's piece types), so that converting the exported
    folder back gives the same vocabulary."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    tokens = [str(t) for t in _kv_list(kv, "tokenizer.ggml.tokens")]
    scores = [float(s) for s in _kv_list(kv, "tokenizer.ggml.scores")] or [0.0] * len(tokens)
    types = [int(t) for t in _kv_list(kv, "tokenizer.ggml.token_type")] or [TOKEN_NORMAL] * len(tokens)
    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.vocab_size = len(tokens)
    m.trainer_spec.byte_fallback = True
    for key, field in (("unknown", "unk_id"), ("bos", "bos_id"), ("eos", "eos_id"), ("padding", "pad_id")):
        tid = kv.get(f"tokenizer.ggml.{key}_token_id")
        setattr(m.trainer_spec, field, int(tid) if tid is not None else -1)
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = bool(kv.get("tokenizer.ggml.add_space_prefix", True))
    m.normalizer_spec.remove_extra_whitespaces = False
    for tok, score, ty in zip(tokens, scores, types, strict=True):
        m.pieces.add(piece=tok, score=score, type=ty if ty in (1, 2, 3, 4, 5, 6) else TOKEN_NORMAL)
    return m.SerializeToString()


def special_tokens_from_gguf(kv: dict) -> dict[str, str]:
    """bos/eos/unk/pad token *strings* for tokenizer_config.json / PreTrainedTokenizerFast."""
    tokens = _kv_list(kv, "tokenizer.ggml.tokens")
    out = {}
    for name, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        tid = kv.get(f"tokenizer.ggml.{key}_token_id")
        if tid is not None and 0 <= int(tid) < len(tokens):
            out[f"{name}_token"] = str(tokens[int(tid)])
    return out


def build_fast_tokenizer(kv: dict, where: str):
    """A ``transformers.PreTrainedTokenizerFast`` for the GGUF vocabulary, built in memory."""
    import json

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(json.dumps(tokenizer_json_from_gguf(kv, where)))
    extra = {}
    if kv.get("tokenizer.chat_template") is not None:
        extra["chat_template"] = str(kv["tokenizer.chat_template"])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        clean_up_tokenization_spaces=False,
        **special_tokens_from_gguf(kv),
        **extra,
    )
