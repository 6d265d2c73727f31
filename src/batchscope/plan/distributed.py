"""Measurements with ``torch.distributed`` on the devices at hand: all-reduce times and data-parallel steps.

A thin adapter around processes started with ``torch.multiprocessing.spawn``: gloo between CPU
processes (one torch thread each), NCCL between CUDA devices (one process per device). Rank 0
writes what was measured to a file the caller reads; the math that uses it lives in ``comm`` and
``devices``.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.distributed as dist

from ..errors import ConfigError
from ..hardware.processes import end_children, sigint_ignored_in_children
from .comm import CommFit, fit_allreduce

SIZES = tuple(4 * 4**i * 1024 for i in range(8))     # 4 KiB .. 64 MiB, float32 elements x 4 bytes
# An all-reduce measurement on a busy 2-core machine takes about 20 s; past this it is stuck (a rank
# that cannot connect) or starved, and is stopped rather than waited for.
MEASURE_TIMEOUT = 300.0


def cpu_cores() -> int:
    """The cores this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # pragma: no cover - not Linux
        return os.cpu_count() or 1


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
    """The fastest of ``rounds`` means of ``iters`` back-to-back all-reduces (nccl-tests' way).

    The fastest, not the median: other work on the machine only ever slows an all-reduce, so the
    least disturbed round is the closest to what the link does (the same holds for the step times).
    """
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
    return min(out)


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


def _spawn(fn, world: int, args: tuple, timeout: Optional[float] = None) -> dict:
    """Run ``fn`` on ``world`` spawned ranks and return what rank 0 wrote; they ignore Ctrl-C (this process ends them).

    ``timeout``: seconds after which the ranks are stopped and a ConfigError says so.
    """
    import torch.multiprocessing as mp

    # a private directory: the ranks write into it while this process waits
    with tempfile.TemporaryDirectory(prefix="batchscope-dist-") as d:
        out = Path(d) / "rank0.json"
        deadline = None if timeout is None else time.monotonic() + timeout
        started: list = []
        try:
            with sigint_ignored_in_children(started):
                ranks = mp.spawn(fn, args=(world, _free_port(), *args, str(out)), nprocs=world, join=False)
            while not ranks.join(timeout=1.0):
                if deadline is not None and time.monotonic() > deadline:
                    raise ConfigError(f"the measurement on {world} local ranks did not finish within {timeout:.0f} s "
                                      f"(this machine has {cpu_cores()} cores for them); stopped it. Measure with "
                                      "fewer ranks, on a quieter machine, or give --bandwidth/--latency instead")
        finally:
            end_children(started)
        return json.loads(out.read_text())


def measure_allreduce(ranks: Optional[int] = None, backend: Optional[str] = None,
                      sizes: Sequence[int] = SIZES) -> CommFit:
    """Time all-reduce over message sizes on ``ranks`` local processes and fit latency + bytes / bandwidth."""
    auto_backend, auto_ranks = default_backend()
    backend, ranks = backend or auto_backend, auto_ranks if ranks is None else ranks   # 0 is refused, not 2
    if isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 2:
        raise ConfigError(f"measuring an all-reduce needs at least 2 ranks. Got {ranks!r} instead.")
    if backend == "nccl" and ranks > torch.cuda.device_count():
        raise ConfigError(f"{ranks} NCCL ranks need {ranks} GPUs; this machine has {torch.cuda.device_count()}")
    cores = max(2, cpu_cores())
    if backend == "gloo" and ranks > cores:
        raise ConfigError(f"{ranks} gloo ranks would share {cpu_cores()} CPU core(s): the measurement would time "
                          f"the scheduler, not the all-reduce, and take minutes; give at most {cores} ranks")
    got = _spawn(_allreduce_main, ranks, (backend, tuple(sizes)), timeout=MEASURE_TIMEOUT)
    return fit_allreduce(got["sizes"], got["seconds"], ranks, name=f"{backend}-measured")


def _flat_gradients(model: torch.nn.Module) -> torch.Tensor:
    """One buffer holding every gradient as a view (DDP's gradient_as_bucket_view): no copies to sync."""
    params = [p for p in model.parameters() if p.requires_grad]
    flat = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype)
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    return flat


def _timed_steps(task, net, opt, inputs, target, steps: int, flat: Optional[torch.Tensor] = None) -> float:
    """Fastest of ``steps`` training steps; with ``flat``, one all-reduce of it after the backward pass."""
    from ..data import forward

    ts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        task.loss_fn(forward(net, inputs), target).backward()
        if flat is not None:
            dist.all_reduce(flat)
            flat.div_(dist.get_world_size())
        opt.step()
        opt.zero_grad(set_to_none=flat is None)      # the flat buffer's views must stay the gradients
        ts.append(time.perf_counter() - t0)
    return min(ts[1:])


def _ddp_main(rank: int, world: int, port: int, task_spec: str, micro: int, steps: int, rounds: int,
              out: str) -> None:
    """Interleaved rounds on every rank: local steps, flat-sync steps, DDP steps, all-reduces alone."""
    from torch.nn.parallel import DistributedDataParallel

    from ..data import split_batch, take
    from ..tasks import load_task
    from ..train import make_optimizer
    from .devices import gradient_bytes

    device = _setup(rank, world, port, "gloo")
    try:
        task = load_task(task_spec)
        torch.manual_seed(0)
        nets = {k: task.make_model() for k in ("local", "flat", "ddp")}   # the same model three times
        flat = _flat_gradients(nets["flat"]) if world > 1 else None
        nets["ddp"] = DistributedDataParallel(nets["ddp"]) if world > 1 else nets["ddp"]
        opts = {k: make_optimizer(task.optimizer, n.parameters(), task.lr, task.momentum, task.weight_decay)
                for k, n in nets.items()}
        inputs, target = split_batch(take(task.train_data, torch.arange(rank * micro, (rank + 1) * micro)))
        nbytes = gradient_bytes(nets["local"])
        sizes = [nbytes // 4, nbytes, nbytes * 4]
        got = {"local": [], "flat": [], "ddp": [], "allreduce": [], "bytes": nbytes, "sizes": sizes,
               "allreduce_sizes": [[] for _ in sizes]}
        for _ in range(rounds):
            for k in ("local", "flat", "ddp"):
                dist.barrier()
                sync = flat if k == "flat" else None
                got[k].append(_timed_steps(task, nets[k], opts[k], inputs, target, steps, sync))
            if world > 1:
                for size, times in zip(sizes, got["allreduce_sizes"]):
                    times.append(time_allreduce(size, device, iters=steps, rounds=1))
            got["allreduce"].append(got["allreduce_sizes"][1][-1] if world > 1 else 0.0)
        if rank == 0:
            Path(out).write_text(json.dumps(got))
        del nets, opts  # the DDP reducer's threads end before the process group goes
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def time_data_parallel(task_spec: str, ranks: int, micro_batch: int, steps: int = 20, rounds: int = 3) -> dict:
    """Step times (the fastest of ``steps``) on ``ranks`` gloo CPU processes, ``micro_batch`` examples per rank.

    Returns lists, one entry per round: 'local' (a step without synchronisation), 'flat' (the same
    step with one in-place all-reduce of all gradients after the backward pass), 'ddp' (the
    DistributedDataParallel step: bucketed all-reduces overlapping the backward pass), 'allreduce'
    (one all-reduce of the gradient bytes alone), 'allreduce_sizes' (the same at a quarter, one and
    four times 'bytes', listed in 'sizes').
    """
    return _spawn(_ddp_main, ranks, (task_spec, micro_batch, steps, rounds))
