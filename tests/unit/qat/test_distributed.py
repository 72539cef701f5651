"""Data-parallel QAT with two processes (gloo, CPU) against a single process with the same global batch.

Each run: a small MLP with LSQ weights (per group) and LSQ activations, initialized from the data, 6 SGD
steps with momentum on a global batch of 16. Two ranks take 8 rows each (DDP averages their gradients;
``synchronized_init`` averages the activation-step inits); one process takes all 16.

Tolerance 1e-12, in float64: the two computations are the same mathematics in a different summation order
(mean of two half-batch means vs one mean, an all-reduce), so they differ by float64 rounding (~1e-16
relative); with that margin no value lands on a rounding boundary of the quantizers by chance, so no code
flips and the difference stays at rounding level. (In float32 a flip is possible and the results could
differ by one quantization step, which would not mean the data-parallel run is wrong.)
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from edgequant.qat import QATConfig, QuantSpec, prepare

pytestmark = pytest.mark.slow
GLOBAL_BATCH, STEPS = 16, 6


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(STEPS, GLOBAL_BATCH, 32, generator=g, dtype=torch.float64), torch.randint(
        0, 4, (STEPS, GLOBAL_BATCH), generator=g
    )


def _model(x0):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4)).double()
    cfg = QATConfig(
        weight=QuantSpec(bits=4, method="lsq", group_size=32),
        activation=QuantSpec(bits=4, method="lsq", symmetric=False, granularity="tensor"),
        skip=(),
    )
    return prepare(m, cfg, example_inputs=x0)


def _train(model, xs, ys, step_fn=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for x, y in zip(xs, ys, strict=True):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _worker(rank, world, port, out_dir):
    import torch.distributed as dist

    from edgequant.qat.distributed import max_divergence, synchronized_init

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        xs, ys = _data()
        shard = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
        with synchronized_init():  # each rank calibrates on its own shard, the inits averaged as they happen
            model = _model(xs[0, shard])
        ddp = nn.parallel.DistributedDataParallel(model)
        _train(ddp, xs[:, shard], ys[:, shard])
        div = max_divergence(model)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save({"state": state, "divergence": div}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_data_parallel_equals_single_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["divergence"] == 0.0
    assert r1["divergence"] == 0.0
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    xs, ys = _data()
    single = _train(_model(xs[0]), xs, ys).state_dict()
    assert set(single) == set(r0["state"])
    moved = 0
    for k, v in single.items():
        torch.testing.assert_close(r0["state"][k], v, rtol=0, atol=1e-12, msg=k)
        moved += int(not torch.equal(v, _model(xs[0]).state_dict()[k]))
    assert moved >= 6  # weights, biases and LSQ steps all trained
