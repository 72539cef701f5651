"""Hugging Face tokenizer -> GGUF ``tokenizer.*`` metadata, as llama.cpp's convert_hf_to_gguf.py writes it.

The keys are collected on a gguf-py ``GGUFWriter`` used only as a key/value store (its ``add_*`` methods
give the exact key names and value types llama.cpp's converter writes); nothing is written through it.

* ``tokenizer.model`` present -> SentencePiece (``tokenizer.ggml.model = "llama"``, pre ``"default"``):
  pieces, scores and types from ``sentencepiece`` (UNKNOWN/CONTROL/UNUSED/BYTE/NORMAL), ``[PAD{i}]``
  fillers up to ``vocab_size``, ids from ``added_tokens.json`` as USER_DEFINED.
* otherwise ``tokenizer.json`` -> byte-level BPE (``"gpt2"``): the vocabulary from transformers'
  ``AutoTokenizer`` (added tokens: CONTROL if special or looking special, else USER_DEFINED), merges,
  and the pre-tokenizer name: first llama.cpp's check hash (sha256 of the token ids of ``CHKTXT``; a
  subset of its table), then the structure of ``tokenizer.json``'s pre_tokenizer (SmolLM's
  Digits+ByteLevel is ``smollm``, plain ByteLevel ``gpt-2``, the Llama-3 and Qwen2 split regexes).
* then gguf-py's ``SpecialVocab`` (bos/eos/unk/pad ids, add_bos/add_eos, merges, chat template).
"""

from __future__ import annotations

import json
import os
from hashlib import sha256

from edgequant.errors import ConfigError
from edgequant.models.gguf_tokenizer import _GPT4O_SPLIT, _LLAMA3_SPLIT, _QWEN2_SPLIT

CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f "
    "(multiple emojis concatenated) \u2705 \U0001f999\U0001f999 3 33 333 3333 33333 333333 3333333 33333333 "
    "3.3 3..3 3...3 \u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785"
    "\U0001f601 ?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= "
    "\u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll "
    "make it, 'D you like some tea? We'Ve a'lL"
)
# chkhsh -> tokenizer.ggml.pre, from llama.cpp's get_vocab_base_pre (the llama/qwen2 family subset).
CHKHSH = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": "starcoder",
}
_TOKEN_NORMAL, _TOKEN_UNKNOWN, _TOKEN_CONTROL, _TOKEN_USER_DEFINED, _TOKEN_UNUSED, _TOKEN_BYTE = (
    1,
    2,
    3,
    4,
    5,
    6,
)


def _looks_special(tok: str) -> bool:
    """llama.cpp's ``does_token_look_special``: added tokens that ought to be control tokens."""
    return (
        tok in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (tok.startswith("<|") and tok.endswith("|>"))
        or (tok.startswith("<\uff5c") and tok.endswith("\uff5c>"))
        or (tok.startswith("<unused") and tok.endswith(">"))
    )


def _structural_pre(folder: str) -> str | None:
    """The llama.cpp pre-tokenizer name from the shape of tokenizer.json's pre_tokenizer, if known."""
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        pre = json.load(fh).get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    if kinds and kinds[0] == "Split":
        regex = (steps[0].get("pattern") or {}).get("Regex")
        return {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2", _GPT4O_SPLIT: "gpt-4o"}.get(regex)
    return None


def detect_pre(tokenizer, folder: str) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for a BPE tokenizer; ConfigError if it is not recognized."""
    chkhsh = sha256(str(tokenizer.encode(CHKTXT)).encode()).hexdigest()
    name = CHKHSH.get(chkhsh) or _structural_pre(folder)
    if name is None:
        raise ConfigError(
            f"{folder}: the BPE pre-tokenizer was not recognized (llama.cpp check hash {chkhsh}); edgequant "
            f"knows {', '.join(sorted(set(CHKHSH.values())))}. Without the right pre-tokenizer llama.cpp "
            "would "
            "split text differently from the model's own tokenizer"
        )
    return name


def _bpe_vocab(folder: str, vocab_size: int | None):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(folder)
    except Exception as e:  # transformers raises many types for unreadable tokenizer files
        raise ConfigError(
            f"{folder}: transformers cannot load the tokenizer ({type(e).__name__}: {e})"
        ) from None
    vocab = tok.get_vocab()
    n = vocab_size or len(vocab)
    if max(vocab.values()) >= n:
        raise ConfigError(
            f"{folder}: the tokenizer has id {max(vocab.values())} but config.json vocab_size is {n}; "
            "the tokenizer does not belong to this model"
        )
    reverse = {i: t for t, i in vocab.items()}
    added = tok.get_added_vocab()
    decoder = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(n):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(_TOKEN_UNUSED)
            continue
        t = reverse[i]
        if t in added:
            if (i in decoder and decoder[i].special) or _looks_special(t):
                types.append(_TOKEN_CONTROL)
            else:
                t = t.replace("\u2581", " ")  # pre-normalize user-defined spaces, as llama.cpp does
                types.append(_TOKEN_USER_DEFINED)
        else:
            types.append(_TOKEN_NORMAL)
        tokens.append(t)
    return tokens, types, detect_pre(tok, folder)


def _spm_vocab(folder: str, vocab_size: int | None):
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    sp.LoadFromFile(os.path.join(folder, "tokenizer.model"))
    n = vocab_size or sp.vocab_size()
    tokens = [f"[PAD{i}]" for i in range(n)]
    scores = [-10000.0] * n
    types = [_TOKEN_UNUSED] * n
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(sp.serialized_model_proto())
    for i, piece in enumerate(proto.pieces[:n]):  # GGUF token types are SentencePiece's piece types
        tokens[i], scores[i], types[i] = piece.piece, piece.score, int(piece.type)
    added_path = os.path.join(folder, "added_tokens.json")
    if os.path.isfile(added_path):
        with open(added_path, encoding="utf-8") as fh:
            for piece, tid in json.load(fh).items():
                if tid < n:
                    tokens[tid], scores[tid], types[tid] = piece, -1000.0, _TOKEN_USER_DEFINED
    return tokens, scores, types


def add_vocab(w, folder: str, hparams: dict, gguf_arch: str) -> str:
    """Add the tokenizer keys to gguf-py writer ``w`` (a KV store); returns "llama" or "gpt2"."""
    import gguf

    vocab_size = hparams.get("vocab_size")
    if os.path.isfile(os.path.join(folder, "tokenizer.model")):
        tokens, scores, types = _spm_vocab(folder, vocab_size)
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        gguf.SpecialVocab(folder, n_vocab=len(tokens)).add_to_gguf(w, quiet=True)
        kind = "llama"
    elif os.path.isfile(os.path.join(folder, "tokenizer.json")):
        tokens, types, pre = _bpe_vocab(folder, vocab_size)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        gguf.SpecialVocab(folder, load_merges=True).add_to_gguf(w, quiet=True)
        kind = "gpt2"
    else:
        raise ConfigError(
            f"{folder}: no tokenizer.model (SentencePiece) or tokenizer.json (BPE); copy the tokenizer files "
            "of the original model into this folder"
        )
    if gguf_arch == "llama":
        cfg_path = os.path.join(folder, "tokenizer_config.json")
        if os.path.isfile(cfg_path):
            with open(cfg_path, encoding="utf-8") as fh:
                tok_cfg = json.load(fh)
            if "add_prefix_space" in tok_cfg:
                w.add_add_space_prefix(tok_cfg["add_prefix_space"])
        if vocab_size == 49152:  # llama.cpp: "Apply to granite small models only" (also SmolLM's vocab size)
            _force_add_bos_false(w)
    return kind


def _force_add_bos_false(w) -> None:
    """``add_bos_token = False``, overriding SpecialVocab's value in place (same key position, as llama.cpp's
    second ``add_add_bos_token`` call leaves it) without gguf-py's "Duplicated key name" warning."""
    import gguf

    key = gguf.Keys.Tokenizer.ADD_BOS
    for kv in w.kv_data:
        if key in kv:
            kv[key] = gguf.GGUFValue(False, gguf.GGUFValueType.BOOL)
            return
    w.add_add_bos_token(False)
