"""Tiny transformers llama models and a byte-level tokenizer, built in code (random weights, no download)."""

from __future__ import annotations

import pytest
import torch


def tiny_model(seed: int = 0, tied: bool = True, vocab: int = 260, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tied,
        bos_token_id=256,
        eos_token_id=257,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger than the default init, so logits are far from uniform
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    return model.eval()


def byte_tokenizer(add_bos: bool = True):
    """Characters U+0000..U+00FF are ids 0..255; 256 is <s> (BOS, prepended when add_bos), 257 </s>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {chr(i): i for i in range(256)}
    vocab["<s>"], vocab["</s>"] = 256, 257
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<s>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.normalizer = None
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 256)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    return fast


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture
def text_tokens():
    import numpy as np

    return np.random.default_rng(0).integers(0, 256, 300).astype(np.int32)


@pytest.fixture
def make_model():
    return tiny_model


@pytest.fixture
def make_tokenizer():
    return byte_tokenizer
