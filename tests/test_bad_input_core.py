"""Bad input to the training loop, the hardware profile and the noise monitor, through the CLI.

Each case must end with exit status 2, one ``error:`` line naming the problem and the fix, and no
traceback (issue 11: items 2, 4, 6, 7, 8).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchscope.cli import cli
from batchscope.hardware import ProbeResult, StepTiming, profile_hardware

TASK_FILE = textwrap.dedent('''
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset
    from batchscope import Target, Task

    def _task(make_model, loss_fn=nn.functional.cross_entropy, n=256, d=5):
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(n, d, generator=g), torch.randint(0, 2, (n,), generator=g)
        return Task(name="user", make_model=make_model, train_data=TensorDataset(x, y), loss_fn=loss_fn,
                    target=Target("loss", 0.1, "train"), optimizer="sgd", lr=0.05)

    def batchnorm():
        return _task(lambda: nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)))

    def wrong_input_size():
        return _task(lambda: nn.Linear(3, 2))

    def make_model_raises():
        def make():
            raise ValueError("no weights file configured")
        return _task(make)

    def wrong_dtype():
        return _task(lambda: nn.Linear(5, 2).double())

    def forward_raises():
        class Net(nn.Linear):
            def forward(self, x):
                raise ValueError("no tokenizer loaded")
        return _task(lambda: Net(5, 2))

    def loss_not_a_mean():
        return _task(lambda: nn.Linear(5, 2), lambda out, y: nn.functional.cross_entropy(out, y, reduction="none"))
''')


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tasks") / "user_tasks.py"
    path.write_text(TASK_FILE)
    return path


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def saved_profile(tmp_path: Path, **change) -> Path:
    """A profile of the dots task from fake probes (2 ms + 3 us per example), with ``change`` applied."""
    p = profile_hardware("dots", memory_probe=lambda b: ProbeResult(b, 2**20 + 1024 * b),
                         time_probe=lambda b: StepTiming(b, 2e-3 + 3e-6 * b, 1e-5, 5), memory_budget=2**30)
    path = tmp_path / f"profile-{'-'.join(change)}-{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps({**p.to_dict(), **change}))
    return path


def cases(tasks: Path, tmp_path: Path):
    user = lambda name: f"{tasks}:{name}"  # noqa: E731
    return [
        # 2. BatchNorm needs two examples per batch in training
        (["train", "--task", user("batchnorm"), "-b", 1, "--steps", 2],
         "batch size 1 is too small for task 'user': its model has BatchNorm (layer '1'), which needs more than "
         "one example per batch in training; use a batch size of at least 2"),
        (["noise", "--task", user("batchnorm"), "-b", 8, "--micro-batch", 1, "--steps", 2],
         "micro-batch 1 is too small for task 'user'"),
        (["profile", "--task", user("batchnorm"), "--max-batch", 1],
         "task 'user' has BatchNorm, which needs batches of at least 2; the largest batch allowed is 1 (max_batch)"),
        # 4. errors inside the user's task
        (["train", "--task", user("wrong_input_size"), "--steps", 2],
         "task 'user': forward failed (RuntimeError: mat1 and mat2 shapes cannot be multiplied"),
        # issue 21, class 9: the fix follows from what forward raised, not always "the input size"
        (["train", "--task", user("wrong_input_size"), "--steps", 2],
         "; make the model's input size match the task's data"),
        (["train", "--task", user("wrong_dtype"), "--steps", 2],
         "must have the same dtype, but got Float and Double); make the model's parameters and the task's data the "
         "same dtype (for example float32)"),
        (["train", "--task", user("forward_raises"), "--steps", 2],
         "task 'user': forward failed (ValueError: no tokenizer loaded); fix the model's forward() so that it runs on "
         "a batch of the task's data"),
        (["train", "--task", user("make_model_raises"), "--steps", 2],
         "task 'user': make_model failed (ValueError: no weights file configured); fix make_model() of the task"),
        (["profile", "--task", user("make_model_raises")],
         "task 'user': make_model failed (ValueError: no weights file configured)"),
        (["train", "--task", user("loss_not_a_mean"), "--steps", 2],
         "task 'user': loss_fn must return the batch mean as a scalar tensor, got shape (256,); use reduction='mean'"),
        # 6. a damaged saved profile, refused before any measuring
        (["find", "--task", "dots", "--profile", saved_profile(tmp_path, alpha=-0.5)],
         "the hardware profile's 'alpha' must be a finite number of seconds >= 0 (the fixed cost of a step); got -0.5"),
        (["find", "--task", "dots", "--profile", saved_profile(tmp_path, alpha="fast")],
         "the hardware profile's 'alpha' must be a finite number; got 'fast'"),
        (["find", "--task", "dots", "--profile", saved_profile(tmp_path, max_batch=0)],
         "the hardware profile's 'max_batch' must be a positive integer; got 0"),
        # issue 21, class 4: huge finite numbers in a saved profile, refused before they overflow a plan
        (["find", "--task", "dots", "--profile", saved_profile(tmp_path, alpha=1e308)],
         "the hardware profile's 'alpha' must be such that alpha + beta*B is a step time up to 1e+06 s at B=1; "
         "got 1e+308"),
        (["find", "--task", "dots", "--profile", saved_profile(tmp_path, beta=1e308)],
         "the hardware profile's 'beta' must be such that alpha + beta*B is a step time up to 1e+06 s"),
        (["plan", "--task", "dots", "--profile", saved_profile(tmp_path, beta=1e300)], "'beta' must be such that"),
        (["find", "--task", "dots", "--profile", saved_profile(tmp_path, points=[{"batch": 4, "seconds": 1e308}])],
         "the hardware profile's 'points[].seconds' must be a step time up to 1e+06 s; got 1e+308"),
        (["find", "--task", "dots", "--profile", saved_profile(tmp_path, m0=1.0, m1=1e300)],
         "the hardware profile's 'm1' must be such that m0 + m1*B is a memory up to 1 EiB"),
        # 7. the noise monitor's smoothing
        (["noise", "--task", "dots", "--decay", 0, "--steps", 2],
         "The --decay option must be in (0, 1] (1 weighs all steps equally, 0.95 about the last 40). Got 0.0"),
        # 8. a diverging run, and evaluations that never come
        (["train", "--task", "dots", "--lr", 5, "--steps", 100],
         "the training loss grew from 0.7129 to"),
        (["train", "--task", "dots", "--eval-every", -3, "--steps", 5],
         "The --eval-every option must be a positive integer. Got -3 instead."),
        (["train", "--task", "dots", "--eval-every", 0, "--steps", 5],
         "The --eval-every option must be a positive integer. Got 0 instead."),
    ]


def test_bad_input_is_one_line_and_exit_2(tasks, tmp_path):
    for args, message in cases(tasks, tmp_path):
        r = run(*args)
        assert r.exit_code == 2, (args, r.output)
        assert "Traceback" not in r.output, (args, r.output)
        lines = [line for line in r.stderr.strip().splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and message in lines[0], (args, r.stderr)


def test_the_divergence_hint_names_no_missing_option():
    r = run("noise", "--task", "dots", "--lr", 50, "--steps", 40)
    assert r.exit_code == 2 and "--warmup" not in r.stderr
    assert "lower the learning rate" in r.stderr or "lower the rate" in r.stderr


def test_a_batchnorm_model_profiles_from_batch_2(tasks, tmp_path):
    out = tmp_path / "bn.json"
    r = run("profile", "--task", f"{tasks}:batchnorm", "--max-batch", 16, "--out", out)
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert [p["batch"] for p in doc["points"]] == [2, 4, 8, 16]
    assert min(p["batch"] for p in doc["memory_probes"]) >= 2


INTERRUPTED = textwrap.dedent('''
    import sys, torch
    from batchscope.hardware import cpu_memory_probe
    from batchscope.tasks import load_task
    torch.set_num_threads(1)
    probe = cpu_memory_probe(load_task("dots"))
    print("ready", flush=True)
    try:
        for i in range(100000):
            probe(1 + i % 64)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0)
''')


@pytest.mark.slow
def test_ctrl_c_during_memory_probes_reaches_the_parent(tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) at any moment of the forked
    probes ends the loop with KeyboardInterrupt in the parent (issue 11, item 3)."""
    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED)
    for delay in (0.05, 0.3, 0.7):
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-2000:]
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGINT)
        try:
            rc = proc.wait(timeout=20)
        finally:
            proc.kill()
        assert rc == 130, (delay, rc, proc.stderr.read()[-2000:])


def test_the_find_report_describes_a_user_task_from_its_facts(tasks):
    """A user task without description or model_description: the report says what is known, not 'Task: ; model ;'."""
    from batchscope.report.find_report import _task_line
    from batchscope.tasks import load_task

    task = load_task(f"{tasks}:wrong_dtype")
    assert _task_line(task) == f"user, 256 training examples; model 12 parameters; target {task.target.describe()}"
