"""Measurements with ``torch.distributed`` on the devices at hand: all-reduce times and data-parallel steps.

A thin adapter around processes started with ``torch.multiprocessing.spawn``: gloo between CPU
processes (one torch thread each), NCCL between CUDA devices (one process per device). Rank 0
writes what was measured to a file the caller reads; the math that uses it lives in ``comm`` and
``devices``.
"""

from __future__ import annotations

import gc
import json
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.distributed as dist

from ..errors import ConfigError
from .comm import CommFit, fit_allreduce

SIZES = tuple(4 * 4**i * 1024 for i in range(8))     # 4 KiB .. 64 MiB, float32 elements x 4 bytes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_backend() -> tuple[str, int]:
    """(backend, ranks): NCCL over every visible GPU when there are two or more, else gloo on 2 CPU processes."""
    if torch.cuda.is_available() and torch.cuda.device_count() >= 2:
        return "nccl", torch.cuda.device_count()
    return "gloo", 2


def _setup(rank: int, world: int, port: int, backend: str) -> torch.device:
    torch.set_num_threads(1)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    if backend == "nccl":
        torch.cuda.set_device(rank)
        return torch.device("cuda", rank)
    return torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_allreduce(nbytes: int, device: torch.device, iters: int, rounds: int = 5) -> float:
    """Median over ``rounds`` of the mean seconds of ``iters`` back-to-back all-reduces (nccl-tests' way)."""
    x = torch.ones(max(1, nbytes // 4), dtype=torch.float32, device=device)
    dist.all_reduce(x)  # warm-up: connection set-up and buffers
    out = []
    for _ in range(rounds):
        dist.barrier()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(x)
        _sync(device)
        out.append((time.perf_counter() - t0) / iters)
    return statistics.median(out)


def _allreduce_main(rank: int, world: int, port: int, backend: str, sizes, out: str) -> None:
    device = _setup(rank, world, port, backend)
    try:
        # fewer repeats for big messages: each round stays around a few milliseconds or more
        times = [time_allreduce(s, device, iters=max(2, min(50, 2**22 // s))) for s in sizes]
        if rank == 0:
            Path(out).write_text(json.dumps({"sizes": list(sizes), "seconds": times}))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _spawn(fn, world: int, args: tuple) -> dict:
    import torch.multiprocessing as mp

    # a private directory: the ranks write into it while this process waits
    with tempfile.TemporaryDirectory(prefix="batchscope-dist-") as d:
        out = Path(d) / "rank0.json"
        mp.spawn(fn, args=(world, _free_port(), *args, str(out)), nprocs=world, join=True)
        return json.loads(out.read_text())


def measure_allreduce(ranks: Optional[int] = None, backend: Optional[str] = None,
                      sizes: Sequence[int] = SIZES) -> CommFit:
    """Time all-reduce over message sizes on ``ranks`` local processes and fit latency + bytes / bandwidth."""
    auto_backend, auto_ranks = default_backend()
    backend, ranks = backend or auto_backend, ranks or auto_ranks
    if ranks < 2:
        raise ConfigError(f"measuring an all-reduce needs at least 2 ranks. Got {ranks!r} instead.")
    if backend == "nccl" and ranks > torch.cuda.device_count():
        raise ConfigError(f"{ranks} NCCL ranks need {ranks} GPUs; this machine has {torch.cuda.device_count()}")
    got = _spawn(_allreduce_main, ranks, (backend, tuple(sizes)))
    return fit_allreduce(got["sizes"], got["seconds"], ranks, name=f"{backend}-measured")


def _ddp_main(rank: int, world: int, port: int, task_spec: str, micro: int, steps: int, rounds: int,
              out: str) -> None:
    """Interleaved rounds on every rank: local steps (no sync), all-reduce of the gradient bytes, DDP steps."""
    from torch.nn.parallel import DistributedDataParallel

    from ..data import forward, split_batch, take
    from ..tasks import load_task
    from ..train import make_optimizer
    from .devices import gradient_bytes

    device = _setup(rank, world, port, "gloo")
    try:
        task = load_task(task_spec)
        torch.manual_seed(0)
        model, twin = task.make_model(), task.make_model()   # twin: the same model, never synchronised
        ddp = DistributedDataParallel(model) if world > 1 else model
        opts = {id(net): make_optimizer(task.optimizer, net.parameters(), task.lr, task.momentum, task.weight_decay)
                for net in (ddp, twin)}
        inputs, target = split_batch(take(task.train_data, torch.arange(rank * micro, (rank + 1) * micro)))
        nbytes = gradient_bytes(model)

        def timed(net, flat_sync: bool = False) -> float:
            ts, opt = [], opts[id(net)]
            for _ in range(steps):
                t0 = time.perf_counter()
                task.loss_fn(forward(net, inputs), target).backward()
                if flat_sync:  # one all-reduce of all gradients after the backward pass: no overlap
                    grads = [p.grad for p in net.parameters()]
                    flat = torch.cat([g.reshape(-1) for g in grads])
                    dist.all_reduce(flat)
                    for g, v in zip(grads, torch._utils._unflatten_dense_tensors(flat.div_(world), grads)):
                        g.copy_(v)
                opt.step()
                opt.zero_grad(set_to_none=True)
                ts.append(time.perf_counter() - t0)
            return statistics.median(ts[1:])

        sizes = [nbytes // 4, nbytes, nbytes * 4]
        got = {"local": [], "flat": [], "ddp": [], "allreduce": [], "bytes": nbytes, "sizes": sizes,
               "allreduce_sizes": [[] for _ in sizes]}
        for _ in range(rounds):
            dist.barrier()
            got["local"].append(timed(twin))
            dist.barrier()
            got["flat"].append(timed(twin, flat_sync=world > 1))
            dist.barrier()
            got["ddp"].append(timed(ddp))
            if world > 1:
                for size, times in zip(sizes, got["allreduce_sizes"]):
                    times.append(time_allreduce(size, device, iters=steps, rounds=1))
            got["allreduce"].append(got["allreduce_sizes"][1][-1] if world > 1 else 0.0)
        if rank == 0:
            Path(out).write_text(json.dumps(got))
        del ddp, opts  # the DDP reducer's threads end before the process group goes
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def time_data_parallel(task_spec: str, ranks: int, micro_batch: int, steps: int = 20, rounds: int = 3) -> dict:
    """Median step times on ``ranks`` gloo CPU processes at ``micro_batch`` examples per rank.

    Returns lists, one entry per round: 'local' (a step without synchronisation), 'flat' (the same
    step with one all-reduce of all gradients after the backward pass), 'ddp' (the
    DistributedDataParallel step: bucketed all-reduces overlapping the backward pass), 'allreduce'
    (one all-reduce of the gradient bytes alone), 'allreduce_sizes' (the same at a quarter, one and
    four times 'bytes', listed in 'sizes').
    """
    return _spawn(_ddp_main, ranks, (task_spec, micro_batch, steps, rounds))
