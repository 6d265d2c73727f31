"""The data-parallel estimator on 2 CPU processes (gloo, DDP) equals the micro-batch one on the same split."""

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

from batchscope.noise import NoiseScaleMonitor
from tests.helpers import free_port

WORLD, ACC, MICRO, STEPS, D = 2, 2, 4, 4, 6


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, 1))


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, WORLD * ACC * MICRO, D, generator=g)          # (S, B, D)
    return x, x.sin().sum(-1, keepdim=True) + 0.3 * torch.randn(STEPS, WORLD * ACC * MICRO, 1, generator=g)


def _rank_main(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model = _model()
        ddp = DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
        monitor = NoiseScaleMonitor(model, micro_batch=MICRO)
        xs, ys = _data()
        local = slice(rank * ACC * MICRO, (rank + 1) * ACC * MICRO)       # this rank's share of each batch
        for x, y in zip(xs[:, local], ys[:, local]):
            for i, (xm, ym) in enumerate(zip(x.split(MICRO), y.split(MICRO))):
                with ddp.no_sync() if i < ACC - 1 else nullcontext():   # all-reduce on the last micro-batch
                    (nn.functional.mse_loss(ddp(xm), ym) / ACC).backward()
            monitor.update()
            opt.step()
            opt.zero_grad()
        if rank == 0:
            with open(out, "w") as f:
                json.dump({"raw": [list(r) for r in monitor.raw], "method": monitor.estimate().method,
                           "sizes": list(monitor.sizes)}, f)
        # Tear down in order: the DDP reducer's threads must end before the process group goes,
        # or the process aborts at exit ("terminate called without an active exception").
        monitor.close()
        del ddp, opt, monitor
        gc.collect()
        dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
def test_data_parallel_equals_micro_batch_on_the_same_split():
    # A private directory, not tmp_path: pytest prunes old numbered temp roots, and another pytest
    # run on the same machine could remove the result file under the running ranks.
    with tempfile.TemporaryDirectory(prefix="batchscope-ddp-") as d:
        out = Path(d) / "rank0.json"
        mp.spawn(_rank_main, args=(free_port(), str(out)), nprocs=WORLD, join=True)
        got = json.loads(out.read_text())

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = NoiseScaleMonitor(model, micro_batch=MICRO)
    for x, y in zip(*_data()):
        for xm, ym in zip(x.split(MICRO), y.split(MICRO)):               # rank 0's micro-batches, then rank 1's
            (nn.functional.mse_loss(model(xm), ym) / (WORLD * ACC)).backward()
        monitor.update()
        opt.step()
        opt.zero_grad()

    assert got["method"] == "dataparallel" and monitor.estimate().method == "microbatch"
    assert got["sizes"] == list(monitor.sizes) == [MICRO, WORLD * ACC * MICRO]
    assert len(got["raw"]) == STEPS
    for (step, _, g2, tr), ref in zip(got["raw"], monitor.raw):
        assert step == ref.step
        assert g2 == pytest.approx(ref.g2, rel=1e-4, abs=1e-7) and tr == pytest.approx(ref.trace, rel=1e-4)
