"""The data-parallel estimator under DDP started by torchrun (gloo, CPU), checked against one process.

    PYTHONPATH=src torchrun --standalone --nproc-per-node 2 benchmarks/noise_ddp.py

Each rank trains the mnist1d MLP on its share of every batch (2 micro-batches of 32, all-reduced
on the second); the monitor's two lines are the same as in a single-process loop. Rank 0 then
replays the same batches on one process with gradient accumulation over all 4 micro-batches; the
two runs must give the same per-step |G|² and tr(Σ).
"""

from __future__ import annotations

import gc
import os
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from batchscope.data import take
from batchscope.noise import NoiseScaleMonitor
from batchscope.serialize import write_json
from batchscope.tasks import load_task

MICRO, ACC, STEPS = 32, 2, 60


def batches(task, world):
    g = torch.Generator().manual_seed(5)
    return [torch.randperm(task.n_train, generator=g)[: world * ACC * MICRO] for _ in range(STEPS)]


def fresh_model(task):
    torch.manual_seed(0)
    return task.make_model()


def main() -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    task = load_task("mnist1d")
    model = fresh_model(task)
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    monitor = NoiseScaleMonitor(model, micro_batch=MICRO)                   # line 1
    for idx in batches(task, world):
        x, y = take(task.train_data, idx[rank * ACC * MICRO:(rank + 1) * ACC * MICRO])
        for i, (xs, ys) in enumerate(zip(x.split(MICRO), y.split(MICRO))):
            with ddp.no_sync() if i < ACC - 1 else nullcontext():
                loss = task.loss_fn(ddp(xs), ys)
                (loss / ACC).backward()
        monitor.update(loss)                                                 # line 2
        opt.step()
        opt.zero_grad(set_to_none=True)
    del ddp, opt  # the DDP reducer's threads end before the group goes, or the process aborts at exit
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
    if rank != 0:
        return
    ref_model = fresh_model(task)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.05, momentum=0.9)
    ref = NoiseScaleMonitor(ref_model, micro_batch=MICRO)
    for idx in batches(task, world):
        x, y = take(task.train_data, idx)
        for xs, ys in zip(x.split(MICRO), y.split(MICRO)):
            (task.loss_fn(ref_model(xs), ys) / (world * ACC)).backward()
        ref.update()
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)
    rel = max(max(abs(a.g2 - b.g2) / abs(b.g2), abs(a.trace - b.trace) / abs(b.trace))
              for a, b in zip(monitor.raw, ref.raw))
    dp, mb = monitor.estimate(), ref.estimate()
    print(f"torchrun, {world} ranks (gloo): {dp.describe()}")
    print(f"one process, accumulation:  {mb.describe()}")
    print(f"largest relative difference of per-step |G|^2 or tr(S) over {STEPS} steps: {rel:.2e}")
    write_json(Path(__file__).parent / "results" / "noise_ddp.json",
               {"world_size": world, "backend": "gloo", "launcher": "torchrun", "micro_batch": MICRO,
                "accumulation_per_rank": ACC, "steps": STEPS, "dataparallel": dp.to_dict(),
                "single_process_microbatch": mb.to_dict(), "max_relative_difference_per_step": rel,
                "env": {k: os.environ.get(k) for k in ("WORLD_SIZE", "LOCAL_WORLD_SIZE")}})


if __name__ == "__main__":
    main()
