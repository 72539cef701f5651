"""Perplexity/KL on a tiny model in PyTorch, checked against an independent full-logits computation."""

import math

import numpy as np
import torch

from edgequant.eval.scoring import CachedLogits, evaluate_chunks
from edgequant.eval.text import Chunking, split_chunks
from edgequant.eval.torch_backend import TorchBackend


def _manual_ppl(model, chunks, n_ctx):
    """Full forward per chunk, log-softmax of every position, score the second half by hand."""
    nll = []
    with torch.no_grad():
        for c in chunks:
            logits = model(torch.as_tensor(c[None].astype(np.int64))).logits[0].double()
            logp = torch.log_softmax(logits, -1)
            for j in range(n_ctx // 2, n_ctx - 1):
                nll.append(-float(logp[j, int(c[j + 1])]))
    return math.exp(sum(nll) / len(nll)), len(nll)


def test_perplexity_matches_full_forward(make_model, text_tokens):
    model = make_model()
    ch = Chunking(64, n_chunks=3)
    chunks = split_chunks(text_tokens, ch, bos_id=256)
    res = evaluate_chunks(TorchBackend(model), chunks, ch)
    ppl, n = _manual_ppl(model, chunks, 64)
    assert res["n_scored_tokens"] == n == 3 * 31
    assert math.isclose(res["ppl"], ppl, rel_tol=1e-5)
    assert res["n_chunks"] == 3
    assert res["n_evaluated_tokens"] == 192


def test_base_comparison_same_and_different_model(make_model, text_tokens):
    ch = Chunking(64, n_chunks=2)
    chunks = split_chunks(text_tokens, ch, bos_id=None)
    base = CachedLogits(TorchBackend(make_model(seed=0)))
    same = evaluate_chunks(TorchBackend(make_model(seed=0)), chunks, ch, base=base)
    assert same["mean_kld"] < 1e-9
    assert same["same_top_fraction"] == 1.0
    other = make_model(seed=0)
    with torch.no_grad():  # perturb one matrix: a "quantized" model
        other.model.layers[0].mlp.down_proj.weight.add_(
            0.05 * torch.randn_like(other.model.layers[0].mlp.down_proj.weight)
        )
    diff = evaluate_chunks(TorchBackend(other), chunks, ch, base=base)
    assert diff["mean_kld"] > 1e-5
    assert diff["rms_delta_p"] > 0
    assert math.isclose(diff["ppl_base"], same["ppl"], rel_tol=1e-9)  # the cached base is reused as is
    assert len(base._cache) == 2
