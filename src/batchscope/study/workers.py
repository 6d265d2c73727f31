"""One worker process per device: each device runs one run at a time, the next as soon as it is free.

Each device gets its own single-process pool, so a run always lands on a known device and its record
says which. Workers are spawned (a forked child would inherit the study lock) and leave when the
study process dies.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Callable

from ..hardware.processes import end_children, sigint_ignored_in_children
from .placement import threads_per_worker
from .plan import RunSpec, StudyPlan
from .runner import RunRecord, _exit_with_parent, _worker


def run_on_devices(plan: StudyPlan, todo: list[RunSpec], devices: list[str],
                   save: Callable[[RunRecord], None]) -> None:
    threads = threads_per_worker(devices, os.cpu_count() or 1)
    ctx = mp.get_context("spawn")
    plan_dict = plan.to_dict()
    pools = [ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_exit_with_parent,
                                 initargs=(os.getpid(),)) for _ in devices]
    queue = list(reversed(todo))
    running = {}                                   # future -> index of its device
    started: list = []                             # the workers: they ignore Ctrl-C, so this process ends them
    ok = False
    try:
        while queue or running:
            for i, device in enumerate(devices):
                if queue and i not in running.values():
                    spec = queue.pop()
                    with sigint_ignored_in_children(started):   # a pool starts its process in submit()
                        running[pools[i].submit(_worker, plan.task, plan_dict, spec.to_dict(), threads, device)] = i
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                del running[f]
                save(RunRecord.from_dict(f.result()))
        ok = True
    finally:
        if not ok:   # the runs in flight are of no use now; each pool then sees its worker gone
            end_children(started)
        for p in pools:
            p.shutdown(wait=True, cancel_futures=ok)
