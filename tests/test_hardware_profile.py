import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from batchscope import Target, Task
from batchscope.errors import ConfigError, TaskError
from batchscope.hardware import (HardwareProfile, ProbeResult, StepTiming, batch_grid, load_profile_for,
                                 probe_indices, profile_hardware)
from batchscope.hardware.memory import cpu_memory_supported
from tests.helpers import linear_task

MiB = 2**20


def fake_profile(task, **kw):
    """profile_hardware on a fake device: memory 1 MiB + 1 KiB*B, step time 2 ms + 3 us*B."""
    mem = lambda b: ProbeResult(b, MiB + 1024 * b)  # noqa: E731
    time = lambda b: StepTiming(b, 2e-3 + 3e-6 * b, 1e-5, 5)  # noqa: E731
    return profile_hardware(task, memory_probe=mem, time_probe=time, **kw)


def test_profile_recovers_the_device_lines_and_the_ceiling(tiny_task):
    stages = []
    p = fake_profile(tiny_task, memory_budget=MiB + 300 * 1024, progress=lambda *a: stages.append(a[0]))
    assert 294 <= p.max_batch <= 300 and p.limited_by == "memory"
    assert (p.alpha, p.beta) == (pytest.approx(2e-3), pytest.approx(3e-6))
    assert (p.m0, p.m1) == (pytest.approx(MiB), pytest.approx(1024))
    assert p.r2 == pytest.approx(1.0) and p.memory_r2 == pytest.approx(1.0)
    assert [q.batch for q in p.points] == batch_grid(p.max_batch)
    for q in p.points:
        assert q.throughput == pytest.approx(q.batch / q.seconds)
        assert q.peak_bytes == MiB + 1024 * q.batch
    # the step-time model: the measured points inside the range (log-log between them), the line outside
    assert p.step_time(128) == pytest.approx(2e-3 + 3e-6 * 128) and p.step_time(1e4) == pytest.approx(3.2e-2)
    assert p.step_time(100) == pytest.approx(2.3e-3, rel=0.01) and p.memory(100) == pytest.approx(MiB + 102400)
    assert p.knee_fit == pytest.approx(4.5 * 2e-3 / 3e-6)
    assert p.device["type"] == "cpu" and p.parameters == 5
    assert "memory" in stages and "step time" in stages


def test_the_data_set_and_the_cap_bind(tiny_task):
    assert (fake_profile(tiny_task, memory_budget="1GB").max_batch, "data set") == (512, "data set")
    p = fake_profile(tiny_task, memory_budget="1GB", max_batch=100)
    assert (p.max_batch, p.limited_by, p.points[-1].batch) == (100, "max_batch", 100)


def test_json_round_trip(tmp_path, tiny_task):
    p = fake_profile(tiny_task, memory_budget="2MiB")
    path = p.save(tmp_path / "profile.json")
    doc = json.loads(path.read_text())
    assert {"max_batch", "alpha", "beta", "device", "points", "knee", "m0", "m1"} <= set(doc)
    q = HardwareProfile.load(path)
    assert q == p
    assert HardwareProfile.from_dict(p.to_dict()).to_dict() == p.to_dict()
    assert load_profile_for(tiny_task, path).max_batch == p.max_batch


def test_a_profile_for_another_task_is_refused(tmp_path, tiny_task):
    path = fake_profile(tiny_task, memory_budget="2MiB").save(tmp_path / "p.json")
    other = linear_task(d=7, name="linear")
    with pytest.raises(ConfigError, match=r"the profile was measured for task 'linear' \(5 parameters\), not for "
                       r"task 'linear' \(7 parameters\); run `batchscope profile --task linear`"):
        load_profile_for(other, path)


def test_bad_profile_files(tmp_path):
    with pytest.raises(ConfigError, match=r"hardware profile '.*nope.json' does not exist; write one with"):
        HardwareProfile.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        HardwareProfile.load(tmp_path / "bad.json")
    (tmp_path / "part.json").write_text(json.dumps({"task": "x", "points": []}))
    with pytest.raises(ConfigError, match=r"the hardware profile's 'memory_method' must be a string; got None"):
        HardwareProfile.load(tmp_path / "part.json")


@pytest.mark.parametrize("change, message", [
    ({"alpha": -1.0}, r"'alpha' must be a finite number of seconds >= 0 \(the fixed cost of a step\); got -1.0"),
    ({"alpha": 0.0, "beta": -1e-3}, r"'beta' must be a finite number of seconds >= 0 .*; got -0.001"),
    ({"alpha": 0.0, "beta": 0.0}, r"'alpha' must be positive where beta is 0 too .*; got 0.0"),
    ({"beta": float("nan")}, r"'beta' must be a finite number; got nan"),
    ({"alpha": "fast"}, r"'alpha' must be a finite number; got 'fast'"),
    ({"max_batch": 0}, r"'max_batch' must be a positive integer; got 0"),
    ({"points": [{"batch": 4, "seconds": -2.0}]}, r"'points\[\].seconds' must be a positive finite number; got -2.0"),
])
def test_a_damaged_profile_is_refused_naming_the_field(tiny_task, tmp_path, change, message):
    d = {**fake_profile(tiny_task).to_dict(), **change}
    (tmp_path / "p.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=message + ".*write it again with `batchscope profile --out FILE`"):
        HardwareProfile.load(tmp_path / "p.json")


def test_bad_arguments(tiny_task):
    with pytest.raises(ConfigError, match=r"needs a CUDA device; drop --amp"):
        fake_profile(tiny_task, amp=True)
    with pytest.raises(ConfigError, match=r"The 'max_batch' parameter of profile_hardware must be a positive integer"):
        fake_profile(tiny_task, max_batch=0)
    with pytest.raises(ConfigError, match=r"The 'memory_budget' parameter must be a size"):
        fake_profile(tiny_task, memory_budget="big")


def test_batch_grid():
    assert batch_grid(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert batch_grid(64) == [1, 2, 4, 8, 16, 32, 64]
    assert batch_grid(200, multiple=8) == [8, 16, 32, 64, 128, 200]
    assert batch_grid(1) == [1]


def test_largest_example_hook(tiny_task):
    assert probe_indices(tiny_task, 4).tolist() == [0, 1, 2, 3]
    task = Task(**{**tiny_task.__dict__, "extra": {"largest_example": 7}})
    assert probe_indices(task, 3).tolist() == [7, 7, 7]
    task = Task(**{**tiny_task.__dict__, "extra": {"largest_example": 10**6}})
    with pytest.raises(TaskError, match=r"extra\['largest_example'\] must be the index of one training example "
                       r"\(0..511\); got 1000000"):
        probe_indices(task, 3)


@pytest.mark.skipif(not cpu_memory_supported()[0], reason="CPU memory probe needs Linux")
def test_real_profile_end_to_end():
    # A model wide enough that a larger batch clearly costs time and memory even on a busy machine.
    from tests.helpers import wide_task

    torch.set_num_threads(1)
    p = profile_hardware(wide_task(), max_batch=512, repeats=3, warmup=1)
    assert (p.max_batch, p.limited_by) == (512, "max_batch")
    # The grid runs up the powers of two and stops at 512 or where throughput stopped growing
    # (two doublings gaining < 5% each), which one thread reaches on this model before 512.
    grid = [q.batch for q in p.points]
    assert grid == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512][:len(grid)] and len(grid) >= 4
    assert grid[-1] == 512 or any(f"grid stopped after B={grid[-1]}: throughput grew" in n for n in p.notes)
    assert all(q.seconds > 0 and q.peak_bytes is not None for q in p.points)
    assert p.beta > 0 and 8 * 1024 < p.m1 < 32 * 1024
    assert p.memory_method == "cpu peak resident size of a forked child"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_ceiling_matches_bisection_and_survives_oom():
    from batchscope.hardware import bisect_ceiling, cuda_memory_probe, find_ceiling
    from batchscope.tasks import load_task

    task = load_task("mnist1d")
    probe = cuda_memory_probe(task, "cuda")
    budget = 16 * MiB
    predicted = find_ceiling(probe, budget, task.n_train)
    truth = bisect_ceiling(probe, budget, task.n_train)
    assert truth.max_batch * 0.95 <= predicted.max_batch <= truth.max_batch * 1.02
    assert predicted.over_budget <= 2
    free = torch.cuda.mem_get_info()[0]

    class Hog(nn.Module):  # asks the device for twice its free memory in the forward pass
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(1, 1)

        def forward(self, x):
            torch.empty(2 * free, dtype=torch.uint8, device=x.device)
            return self.lin(x)

    hog = Task(name="hog", make_model=Hog, loss_fn=nn.functional.mse_loss,
               train_data=TensorDataset(torch.randn(64, 1), torch.randn(64, 1)), target=Target("loss", 0.1, "train"))
    r = cuda_memory_probe(hog, "cuda")(8)
    assert r.oom and torch.cuda.memory_allocated() < 64 * MiB  # everything was released


def test_the_grid_stops_where_throughput_stops_growing(tiny_task):
    # 2 ms + 3 us per example: throughput 333k examples/s at most. Doublings from B=8192 on gain
    # 7.5%, 4.1%, 2.1%: the grid stops after the second doubling under 5% (B=32768), not at 100,000.
    big = linear_task(n=100_000)
    p = fake_profile(big, memory_budget="1GB")
    assert [q.batch for q in p.points] == batch_grid(32768) and p.max_batch == 100_000
    assert any("grid stopped after B=32768: throughput grew less than 5% over each of the last 2 grid steps "
               "(from B=8192" in n for n in p.notes)
    assert p.step_time(100_000) == pytest.approx(2e-3 + 3e-6 * 100_000)   # the line beyond the grid
    # A saturated device from the start: flat after B=1, stopped at B=4 (two steps without a gain).
    flat = lambda b: StepTiming(b, 1e-3 * b, 1e-6, 5)  # noqa: E731
    p = profile_hardware(tiny_task, memory_probe=lambda b: ProbeResult(b, MiB + b), time_probe=flat)
    assert [q.batch for q in p.points] == [1, 2, 4]
    # One slow point alone does not stop it: the next doubling gains again.
    dip = lambda b: StepTiming(b, (3e-3 if b == 16 else 1e-3) + 1e-6 * b, 1e-6, 5)  # noqa: E731
    p = profile_hardware(tiny_task, memory_probe=lambda b: ProbeResult(b, MiB + b), time_probe=dip)
    assert [q.batch for q in p.points] == batch_grid(512)


def test_a_step_time_cliff_no_batch_explains_is_flagged(tiny_task):
    from batchscope.hardware.profile import jump_notes
    # the mnist1d profile taken under load: 1.55 ms at 128, 18.45 ms at 256 (5.9x per example)
    notes = jump_notes([(64, 1.57e-3), (128, 1.55e-3), (256, 18.45e-3), (512, 20.51e-3)])
    assert len(notes) == 1 and "from B=128 to B=256 (6.0x per example)" in notes[0]
    # per-example cost rising 1.5x (a kernel switch seen on an idle machine) is not flagged
    assert jump_notes([(64, 1.61e-3), (128, 4.82e-3)]) == []
    assert not any("rose" in n for n in fake_profile(tiny_task, memory_budget="1GB").notes)
    cliff = lambda b: StepTiming(b, 1e-3 if b < 64 else 1e-2 * b / 64, 1e-5, 5)  # noqa: E731
    p = profile_hardware(tiny_task, memory_probe=lambda b: ProbeResult(b, MiB + b), time_probe=cliff)
    assert any("from B=32 to B=64" in n for n in p.notes)
