"""find's answer reused: FindResult.save/load, its warm-up as a torch scheduler, and find's progress lines."""

import contextlib
import io
import json

import pytest
import torch

from batchscope.hardware import HardwareProfile, ProbeResult, StepTiming, profile_hardware
from batchscope.integrations.finding import FindProgress, progress_wanted, run_find
from batchscope.plan.find import FindResult
from tests.helpers import blobs_task, fake_profile


@pytest.fixture(scope="module")
def found():
    """One find on the blobs task (a given profile: no profiling), with its progress lines."""
    task = blobs_task()
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        result = run_find(task, {"profile": fake_profile(task, alpha=2e-3, beta=2e-5, ceiling=64)}, progress=True,
                          target_note="a note on how the target is computed")
    return result, stderr.getvalue().splitlines()


def test_a_saved_result_loads_back_equal_and_find_out_files_load_too(found, tmp_path):
    result, _ = found
    path = result.save(tmp_path / "result.json")
    doc = json.loads(path.read_text())
    assert doc["schema"] == "batchscope.find/1"
    assert FindResult.load(path).to_dict() == result.to_dict()
    # `batchscope find --out` writes to_dict() (and the adaptive command), without a schema
    (tmp_path / "out.json").write_text(json.dumps({**result.to_dict(), "adaptive_command": "batchscope train ..."}))
    assert FindResult.load(tmp_path / "out.json").recommendation == result.recommendation


def test_the_adaptive_callbacks_take_a_result_or_its_path(found, tmp_path):
    result, _ = found
    path = result.save(tmp_path / "result.json")
    lightning = pytest.importorskip("batchscope.integrations.lightning")
    for given in (result, path, str(path)):
        profile = lightning.AdaptiveBatchCallback(given).step_time
        assert isinstance(profile, HardwareProfile) and profile.alpha == result.profile.alpha


def test_lr_scheduler_is_the_recommended_rate_with_its_warm_up(found):
    result, _ = found
    rec = result.recommendation
    assert rec.warmup_steps == 2 and rec.lr > 0
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD([{"params": params[:1], "lr": 0.5}, {"params": params[1:], "lr": 0.05}])
    sched = result.lr_scheduler(opt)
    rates = []
    for _ in range(4):
        rates.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    # step s at lr x (s+1)/warmup, then the rate itself; the second group keeps its tenth
    want = [rec.lr * f for f in (0.5, 1.0, 1.0, 1.0)]
    assert [r[0] for r in rates] == pytest.approx(want)
    assert [r[1] for r in rates] == pytest.approx([w / 10 for w in want])


def test_progress_lines_say_each_stage(found):
    _, lines = found
    assert lines[0].startswith("find: measuring run at batch 32 (micro-batch 4), lr 0.02, on cpu")
    steps = [ln for ln in lines if ln.startswith("  step ")]
    assert steps[0].startswith("  step 0: 0 examples, val loss ") and ", accuracy 0." in steps[0]   # then 1 a second
    assert any(ln.startswith("  measuring run: ") and "(budget used)" in ln for ln in lines)
    assert lines[-2].startswith("find: batch ") and ", warm-up 2 steps; B_crit " in lines[-2]
    assert lines[-1] == "  target: val accuracy >= 0.8; a note on how the target is computed"
    assert "the target val accuracy >= 0.8: a note on how the target is computed" in found[0].recommendation.caveats


def test_profiling_progress_and_when_it_is_on(tiny_task):
    out = io.StringIO()
    profile_hardware(tiny_task, memory_probe=lambda b: ProbeResult(b, 2**20 + b),
                     time_probe=lambda b: StepTiming(b, 1e-3 + 1e-6 * b, 1e-6, 5), memory_budget="1GB",
                     progress=FindProgress(out, every_seconds=0.0))
    lines = out.getvalue().splitlines()
    assert lines[0] == "find: profiling the hardware (memory ceiling, then the step time per batch size)"
    assert any(ln.startswith("  memory 1: B=") for ln in lines)
    assert any(ln.startswith("  step time 10/10: B=512: ") for ln in lines)

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    assert progress_wanted(None, Terminal()) and not progress_wanted(None, io.StringIO())
    assert progress_wanted(True) and not progress_wanted(False)
