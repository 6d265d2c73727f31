"""Measured gloo step times on 2 CPU processes against the N-device model with a fitted all-reduce.

The ranks time, in interleaved rounds, a step without synchronisation (t_pass), all-reduces at a
quarter, one and four times the gradient bytes (fitted to latency + bytes / bandwidth), a step with
one all-reduce after the backward pass and a DistributedDataParallel step. Each quantity keeps its
fastest round: the two processes share a 2-core machine with other work, and the least disturbed
round is the one closest to two processes on two devices of their own.

Tolerance: a factor of 2 either way. The fastest rounds of the longer benchmark agree within 12%
(benchmarks/results/plan.md); with the machine's 2 cores shared with other work (load averages of
8-14 were seen), even the fastest of four short rounds has scattered by up to 1.6x. A wrong unit
(bits for bytes), a term counted twice or a missing latency still shows up well outside it.
"""

import pytest

from batchscope.plan.comm import fit_allreduce, overlapped, ring_allreduce_seconds
from batchscope.plan.distributed import time_data_parallel

TOLERANCE = 2.0
TASK = "tests/plan_tasks.py:wide_mlp"     # 4.3 MB of gradients: the all-reduce is a visible part of a step


@pytest.mark.slow
def test_two_gloo_processes_step_as_the_model_predicts():
    got = time_data_parallel(TASK, 2, micro_batch=16, steps=12, rounds=4)
    fit = fit_allreduce(got["sizes"], [min(t) for t in got["allreduce_sizes"]], ranks=2)
    sync = ring_allreduce_seconds(got["bytes"], 2, fit.link)
    t_pass = min(got["local"])
    assert sync > 0.3 * t_pass, "the all-reduce must be a visible part of the step for this check to mean anything"
    flat = min(got["flat"])                  # all-reduce after the backward pass: gamma = 1
    assert 1 / TOLERANCE < flat / (t_pass + sync) < TOLERANCE
    ddp = min(got["ddp"])                    # bucketed, overlapping the backward pass: between the bounds
    assert overlapped(t_pass, sync, float("inf")) / TOLERANCE < ddp < (t_pass + sync) * TOLERANCE
