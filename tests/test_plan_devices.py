"""The N-device step time and the device-count frontier, on cases whose answers are known."""

import pytest
from torch import nn

from batchscope.errors import ConfigError
from batchscope.hardware import StepTimeModel
from batchscope.plan.comm import GB, Cluster, Link
from batchscope.plan.devices import (DataParallelStep, DeviceMemoryError, ceiling_on, gradient_bytes, split_batch,
                                     static_bytes)
from batchscope.plan.frontier import make_plan


def test_split_keeps_the_global_batch_exact():
    assert split_batch(256, 4) == split_batch(256, 4, ceiling=64)
    s = split_batch(256, 4, ceiling=64)
    assert (s.micro_batch, s.accumulation, s.batch_size) == (64, 1, 256)
    s = split_batch(768, 4, ceiling=64)     # 192 per device: 3 passes of 64
    assert (s.micro_batch, s.accumulation, s.batch_size) == (64, 3, 768)
    s = split_batch(280, 2, ceiling=64)     # 140 per device: 64 does not divide it; 4 passes of 35
    assert (s.micro_batch, s.accumulation, s.batch_size) == (35, 4, 280)
    with pytest.raises(ConfigError, match="a global batch of 100 cannot be split evenly over 8 devices"):
        split_batch(100, 8)


def test_step_time_combines_compute_and_sync():
    link = Link("l", 1 * GB, 0.0)
    cluster = Cluster(link, per_node=8)
    t_pass = StepTimeModel(1e-3, 1e-5)
    # 4 devices, 512 examples, ceiling 64: 2 passes of 64 (1.64 ms each); 4e8 bytes: 2*3/4*0.4 = 0.6 s
    st = DataParallelStep(t_pass, ceiling=64, cluster=cluster, grad_bytes=4e8, gamma=1.0)(512, 4)
    assert st.compute == pytest.approx(2 * 1.64e-3)
    assert st.sync == pytest.approx(0.6)
    assert st.seconds == pytest.approx(2 * 1.64e-3 + 0.6)
    overlapped = DataParallelStep(t_pass, ceiling=64, cluster=cluster, grad_bytes=4e8, gamma=float("inf"))(512, 4)
    assert overlapped.seconds == pytest.approx(1.64e-3 + 0.6)     # one pass hidden under the all-reduce
    assert DataParallelStep(t_pass, cluster=cluster, grad_bytes=4e8)(512, 1).sync == 0.0


def test_gradient_bytes_follow_the_dtype():
    model = nn.Linear(10, 5)                       # 55 parameters
    assert gradient_bytes(model) == 55 * 4
    assert gradient_bytes(model.half()) == 55 * 2
    import torch

    assert gradient_bytes(nn.Linear(10, 5), dtype=torch.bfloat16) == 55 * 2


def test_a_model_larger_than_a_device_is_refused():
    assert static_bytes(10**9, "adam") == 16 * 10**9
    with pytest.raises(DeviceMemoryError, match=r"one replica needs 14.90 GiB .* a device has 8.00 GiB"):
        ceiling_on(8 * 2**30, None, None, 10**9, "adam")
    # memory(B) = 1 GiB + 10 MiB per example on an 8 GiB device: (8 - 1) GiB / 10 MiB = 716 examples
    assert ceiling_on(8 * 2**30, 2**30, 10 * 2**20, 1000, "sgd") == 716


def _no_comm_plan(b_noise, ceiling, knee=0.25, devices=(1, 2, 4, 8, 16, 32, 64, 128)):
    # constant 10 ms per pass at any micro-batch: beyond the ceiling only accumulation (more passes) helps
    step = DataParallelStep(StepTimeModel(0.01, 0.0), ceiling=ceiling)
    return make_plan(devices, s_min=1000.0, b_noise=b_noise, step=step, limit=2**20, knee_fraction=knee)


def test_the_knee_without_communication_is_where_the_global_batch_reaches_b_crit():
    # m = 32 per device, B_noise = 1000: N m >= 1000 first at N = 32 (N = 16 gives 512 < 1000)
    plan = _no_comm_plan(1000.0, 32)
    assert all(r.batch_size == r.devices * 32 and r.accumulation == 1 for r in plan.best)
    assert plan.knee.devices == 32 and plan.knee.batch_size == 1024
    assert plan.fastest.devices == 128          # no communication: more devices always finish sooner
    assert plan.cheapest.devices == 1           # ... and always cost more device-hours
    # the time at N: S_min (1 + B_noise / (32 N)) * 10 ms
    at8 = next(r for r in plan.best if r.devices == 8)
    assert at8.seconds == pytest.approx(1000 * (1 + 1000 / 256) * 0.01)
    assert at8.device_hours == pytest.approx(8 * at8.seconds / 3600)
    assert plan.pareto == [1, 2, 4, 8, 16, 32, 64, 128]
    # another B_noise moves the knee with it: B_noise = 4000 -> N = 128 (4096 examples) ...
    assert _no_comm_plan(4000.0, 32, devices=(1, 2, 4, 8, 16, 32, 64, 128, 256)).knee.devices == 128
    # ... which a plan that stops at 128 devices cannot show: no doubling past it was evaluated
    assert _no_comm_plan(4000.0, 32).knee is None


def test_communication_makes_more_devices_slower_at_some_count():
    # 1 GB of gradients over 1 GB/s within nodes of 8, 0.1 GB/s between nodes
    cluster = Cluster(Link("node", 1 * GB, 0.0), per_node=8, network=Link("net", 0.1 * GB, 0.0))
    step = DataParallelStep(StepTimeModel(0.5, 0.01), ceiling=64, cluster=cluster, grad_bytes=1e9)
    plan = make_plan([1, 2, 4, 8, 16, 32], s_min=100.0, b_noise=2000.0, step=step, limit=2**16, price=2.0)
    assert plan.fastest.devices == 8            # crossing nodes costs 2*(n-1)/n * 10 s per step
    assert plan.cheapest.devices == 1
    assert plan.cheapest.cost == pytest.approx(plan.cheapest.device_hours * 2.0)
    assert 16 not in plan.pareto and 32 not in plan.pareto


def test_bad_plan_input_is_refused():
    step = DataParallelStep(StepTimeModel(0.01, 0.0))
    with pytest.raises(ConfigError, match="a global batch of 12 cannot be split evenly over 8 devices"):
        make_plan([1, 8], 100.0, 10.0, step, limit=1024, batches=[12])
    with pytest.raises(ConfigError, match="price per device-hour must be a positive number"):
        make_plan([1], 100.0, 10.0, step, limit=1024, price=0.0)
    with pytest.raises(ConfigError, match="no device count leaves each device"):
        make_plan([2048], 100.0, 10.0, step, limit=1024)


def test_find_candidates_on_several_devices_pay_for_the_all_reduce():
    from batchscope.plan import recommend as rec

    inp = rec.Inputs(step_time=StepTimeModel(1e-3, 1e-5), b_crit=100.0, b_crit_low=50.0, b_crit_high=200.0, b_ref=32,
                     steps_ref=1000.0, lr_ref=0.1, optimizer="sgd")
    silent = rec.evaluate_candidates(inp, rec.Constraints(n_train=10_000, devices=4), [64, 256])
    synced = rec.evaluate_candidates(inp, rec.Constraints(n_train=10_000, devices=4, grad_bytes=4e8,
                                                          cluster=Cluster(Link("l", 1 * GB, 0.0), 8)), [64, 256])
    for a, b in zip(silent, synced):        # 4 devices, 400 MB at 1 GB/s: 2 * 3/4 * 0.4 s = 0.6 s per step
        assert a.steps == b.steps and b.seconds == pytest.approx(a.seconds + a.steps * 0.6)
