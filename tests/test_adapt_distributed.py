"""2 gloo processes (DDP): rank 0 decides, both ranks follow, and the run equals one process on the same split."""

import gc
import json
import tempfile
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from batchscope.adapt import AdaptiveBatchSampler, BatchSizeController, StepTimeModel
from batchscope.adapt.distributed import broadcast_decision
from batchscope.noise import NoiseScaleMonitor
from tests.helpers import free_port

WORLD, N, D, STEPS = 2, 1024, 6, 16


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, 1))


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, D, generator=g)
    return x, x.sin().sum(-1, keepdim=True) + 0.5 * torch.randn(N, 1, generator=g)


def _controller() -> BatchSizeController:
    # alpha / beta = 100: B* = sqrt(100 B_noise), above the start batch once B_noise is measured
    return BatchSizeController(StepTimeModel(2e-3, 2e-5), start_batch=8, n_train=N, max_batch=256, devices=WORLD,
                               every=2, min_samples=2, confident=False,   # moves early: the test is about agreement
                               noise_factor=1.0, min_batch=8)             # and grows within one epoch


def _rank_main(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model = _model()
        ddp = DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
        c = _controller()
        sampler = AdaptiveBatchSampler(N, c.batch_size, seed=3, rank=rank, world_size=WORLD)
        monitor = NoiseScaleMonitor(model, micro_batch=c.micro_batch)
        x, y = _data()
        it, sizes, estimates = iter(sampler), [], []
        for step in range(1, STEPS + 1):
            idx = torch.tensor(next(it))                                   # this rank's share
            sizes.append(len(idx) * WORLD)
            for i, part in enumerate(idx.split(c.micro_batch)):
                with ddp.no_sync() if i < c.accumulation - 1 else nullcontext():
                    (nn.functional.mse_loss(ddp(x[part]), y[part]) / c.accumulation).backward()
            monitor.micro_batch = c.micro_batch
            monitor.update()
            opt.step()
            opt.zero_grad()
            estimates.append(monitor.estimate().b_simple)
            if c.due(step):
                sampler.set_batch_size(broadcast_decision(c, step, monitor.estimate()).batch_size)
        box = [None] * WORLD
        dist.all_gather_object(box, {"sizes": sizes, "decisions": [d.batch_size for d in c.decisions]})
        if rank == 0:
            with open(out, "w") as f:
                json.dump({"ranks": box, "estimates": estimates, "method": monitor.estimate().method,
                           "params": [p.detach().flatten().tolist() for p in model.parameters()]}, f)
        monitor.close()
        del ddp, opt, monitor
        gc.collect()
        dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _one_process():
    """The same run on one process: each rank's share becomes micro-batches of one accumulated step."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    c = _controller()
    sampler = AdaptiveBatchSampler(N, c.batch_size, seed=3)
    monitor = NoiseScaleMonitor(model, micro_batch=c.micro_batch)
    x, y = _data()
    it, sizes, estimates = iter(sampler), [], []
    for step in range(1, STEPS + 1):
        idx = torch.tensor(next(it))
        sizes.append(len(idx))
        for r in range(WORLD):
            for part in idx[r::WORLD].split(c.micro_batch):
                (nn.functional.mse_loss(model(x[part]), y[part]) / (c.accumulation * WORLD)).backward()
        monitor.micro_batch = c.micro_batch
        monitor.update()
        opt.step()
        opt.zero_grad()
        estimates.append(monitor.estimate().b_simple)
        if c.due(step):
            sampler.set_batch_size(c.decide(step, monitor.estimate()).batch_size)
    return sizes, estimates, model


@pytest.mark.slow
def test_ranks_agree_with_rank0_and_with_one_process():
    with tempfile.TemporaryDirectory(prefix="batchscope-adapt-ddp-") as d:
        out = Path(d) / "rank0.json"
        mp.spawn(_rank_main, args=(free_port(), str(out)), nprocs=WORLD, join=True)
        got = json.loads(out.read_text())
    sizes, estimates, model = _one_process()
    r0, r1 = got["ranks"]
    assert got["method"] == "dataparallel"
    assert r0 == r1                                     # the same global batch on every rank, every step
    assert r0["sizes"] == sizes and max(sizes) > 8       # and the same as one process; the batch did grow
    assert got["estimates"] == pytest.approx(estimates, rel=1e-4)
    for p, q in zip(got["params"], model.parameters()):
        assert p == pytest.approx(q.detach().flatten().tolist(), rel=1e-4, abs=1e-6)
