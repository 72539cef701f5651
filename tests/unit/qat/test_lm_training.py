"""The LM distillation loop and evaluation on a toy causal LM (embedding → linear, HF-style ``.logits``)."""

from __future__ import annotations

import math
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgequant.errors import ConfigError
from edgequant.qat import LMTrainConfig, QATConfig, QuantSpec, distill_lm, evaluate_lm, prepare


class ToyLM(nn.Module):
    def __init__(self, vocab=40, width=32, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed_tokens = nn.Embedding(vocab, width)
        self.proj = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, x):
        return types.SimpleNamespace(logits=self.head(torch.tanh(self.proj(self.embed_tokens(x)))))


def test_distill_reduces_kl_and_logs_every_step():
    teacher = ToyLM().eval()
    student = ToyLM()
    prepare(student, QATConfig(weight=QuantSpec(bits=2, method="lsq", group_size=32), skip=()))
    tokens = torch.randint(0, 40, (400,), generator=torch.Generator().manual_seed(1))
    before = evaluate_lm(student, tokens, 32, teacher=teacher)["kl"]
    cfg = LMTrainConfig(steps=40, seq_len=16, batch_size=4, lr=3e-3, scale_lr=3e-3, warmup=2)
    seen = []
    log = distill_lm(student, teacher, tokens, cfg, on_step=seen.append)
    assert [r["step"] for r in log] == list(range(1, 41))
    assert seen == log
    assert not student.embed_tokens.weight.requires_grad  # frozen by default
    after = evaluate_lm(student, tokens, 32, teacher=teacher)["kl"]
    assert after < 0.7 * before


def test_evaluate_lm_perplexity_closed_form():
    m = ToyLM().eval()
    tokens = torch.randint(0, 40, (64,), generator=torch.Generator().manual_seed(2))
    r = evaluate_lm(m, tokens, 32)
    nll = []
    with torch.no_grad():
        for w in tokens.reshape(2, 32):
            logits = m(w.unsqueeze(0)).logits[0]
            nll.append(F.cross_entropy(logits[15:-1], w[16:], reduction="sum"))
    assert r["ppl"] == pytest.approx(math.exp(float(sum(nll)) / 32), rel=1e-5)
    assert r["tokens_scored"] == 32


def test_bad_training_inputs():
    with pytest.raises(ConfigError, match="steps"):
        LMTrainConfig(steps=0)
    with pytest.raises(ConfigError, match="tokens"):
        distill_lm(ToyLM(), ToyLM(), torch.arange(10), LMTrainConfig(steps=2, seq_len=16, warmup=0))
    with pytest.raises(ConfigError, match="nothing to train"):
        distill_lm(ToyLM(), None, torch.arange(100) % 40, LMTrainConfig(steps=2, seq_len=16, warmup=0))
