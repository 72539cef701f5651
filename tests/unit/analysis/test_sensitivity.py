"""Sensitivity proxies on a tiny causal LM built in code: closed forms, agreement with the measured KL,
and the torch.distributed split (two local ranks give what one process gives, bit for bit)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from edgequant.analysis.metrics import spearman
from edgequant.analysis.sensitivity import (
    base_log_probs,
    fisher_sensitivity,
    imatrix_weighted_error,
    measured_kld,
)


def tiny_lm(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.2,
    )
    return LlamaForCausalLM(cfg).eval()


def batches(n: int = 4, t: int = 24, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 64, (1, t), generator=g) for _ in range(n)]


def errors_for(model, scales=(0.002, 0.01, 0.05), seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in model.named_parameters():
        if p.ndim == 2:
            noise = torch.randn(p.shape, generator=g)
            out[name] = {f"s{s}": s * noise * p.detach().abs().mean() / 0.1 for s in scales}
    return out


def test_imatrix_weighted_error_closed_form():
    e = np.array([[1.0, 2.0], [3.0, -1.0]])
    assert imatrix_weighted_error(e, np.array([0.5, 2.0])) == pytest.approx(0.5 * (1 + 9) + 2.0 * (4 + 1))
    assert imatrix_weighted_error(e, None) == pytest.approx(15.0)


def test_taylor_term_predicts_the_measured_kl():
    """(e) is in KL units: for small errors it matches the measured KL within Monte-Carlo noise, and ranks
    (tensor, size) pairs like the measurement."""
    model, data = tiny_lm(), batches()
    errs = errors_for(model)
    est = fisher_sensitivity(model, data, errs, draws=16)
    base = base_log_probs(model, data)
    params = dict(model.named_parameters())
    meas, pred = [], []
    for n, opts in errs.items():
        for o, e in opts.items():
            meas.append(measured_kld(model, data, base, n, params[n].detach() + e))
            pred.append(est.taylor[n][o])
    assert spearman(meas, pred) > 0.9
    small = [
        (m, p)
        for m, p, o in zip(meas, pred, [o for v in errs.values() for o in v], strict=True)
        if o == "s0.002"
    ]
    ratio = np.median([p / m for m, p in small])
    assert 0.7 < ratio < 1.4
    # quadratic in the error: 5x the error, 25x the predicted KL (exact for (d) and (e) by construction)
    n = next(iter(errs))
    assert est.taylor[n]["s0.01"] / est.taylor[n]["s0.002"] == pytest.approx(25.0, rel=1e-4)
    assert est.trace[n]["s0.01"] / est.trace[n]["s0.002"] == pytest.approx(25.0, rel=1e-4)


def test_measured_kld_restores_the_weight_and_is_zero_without_error():
    model, data = tiny_lm(), batches(2)
    base = base_log_probs(model, data)
    p = dict(model.named_parameters())["model.layers.0.mlp.down_proj.weight"]
    before = p.detach().clone()
    assert measured_kld(model, data, base, "model.layers.0.mlp.down_proj.weight", before) == pytest.approx(
        0, abs=1e-12
    )
    assert measured_kld(model, data, base, "model.layers.0.mlp.down_proj.weight", before * 1.5) > 0
    assert torch.equal(p.detach(), before)


def _rank(rank: int, world: int, port: int, path: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        model = tiny_lm()
        est = fisher_sensitivity(model, batches(5), errors_for(model), draws=2)
        if rank == 0:
            torch.save({"taylor": est.taylor, "trace": est.trace, "spread": est.spread}, path)
    finally:
        dist.destroy_process_group()


def test_two_ranks_give_the_single_process_result(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = str(tmp_path / "two.pt")
    mp.spawn(_rank, args=(2, port, path), nprocs=2, join=True)
    two = torch.load(path)
    model = tiny_lm()
    one = fisher_sensitivity(model, batches(5), errors_for(model), draws=2)
    assert two["taylor"] == one.taylor
    assert two["trace"] == one.trace
    assert two["spread"] == one.spread
