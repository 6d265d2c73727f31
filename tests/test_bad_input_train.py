"""Bad input to `train`, adaptive or not, through the CLI: every policy of the one loop gets the same
checks (issue 21: classes 1, 2, 9, 10, 11). Each case: exit 2, one ``error:`` line, no traceback."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from batchscope.cli import cli
from batchscope.tasks import load_task

from .test_plan_find import fake_profile


def _profile(tmp_path, task: str) -> str:
    path = tmp_path / f"{task}.json"
    fake_profile(load_task(task), alpha=2e-3, beta=2e-5).save(path)
    return str(path)


@pytest.fixture
def dots_profile(tmp_path):
    return _profile(tmp_path, "dots")


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_error(r, message: str) -> None:
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    lines = [line for line in r.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], r.stderr


ADAPTIVE = ["train", "--task", "dots", "--adaptive", "-b", "32"]


@pytest.mark.parametrize("extra,message", [
    # 2. the adaptive run applies the checks of a plain one
    (["--steps", 0], "The --steps option must be a positive integer. Got 0 instead."),
    (["--steps", -3], "The --steps option must be a positive integer. Got -3 instead."),
    (["--epochs", -1], "The --epochs option must be a positive finite number. Got -1.0 instead."),
    (["--epochs", 0], "The --epochs option must be a positive finite number. Got 0.0 instead."),
    (["--epochs", "nan"], "The --epochs option must be a positive finite number. Got nan instead."),
    (["--epochs", "inf"], "The --epochs option must be a positive finite number. Got inf instead."),
    (["--steps", 5, "--eval-every", 0], "The --eval-every option must be a positive integer. Got 0 instead."),
])
def test_the_adaptive_run_checks_what_a_plain_run_checks(extra, message, dots_profile):
    one_error(run(*ADAPTIVE, "--profile", dots_profile, *extra), message)
    plain = [a for a in ADAPTIVE if a != "--adaptive"]
    one_error(run(*plain, *extra), message)


@pytest.mark.parametrize("args", [
    # 1. the final noise interval unbounded above (printed as "inf")
    ["--task", "dots", "-b", "32", "--steps", 1],
    ["--task", "digits", "-b", "32", "--steps", 40, "--seed", 1],
])
def test_an_unbounded_final_interval_is_printed(args, dots_profile, tmp_path):
    profile = dots_profile if args[1] == "dots" else _profile(tmp_path, "digits")
    r = run("train", "--adaptive", "--profile", profile, *args)
    assert r.exit_code == 0, r.output
    assert "final B_simple [interval]" in r.output and "Traceback" not in r.output


def test_resume_from_a_missing_or_foreign_file_says_so(tmp_path):
    one_error(run("train", "--task", "dots", "--steps", 5, "--resume-from", tmp_path / "none.pt"),
              "resume: no checkpoint at")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a checkpoint")
    one_error(run("train", "--task", "dots", "--steps", 5, "--resume-from", junk),
              "is not a readable batchscope checkpoint")
    ck = tmp_path / "dots.pt"
    assert run("train", "--task", "dots", "--steps", 4, "--checkpoint", ck, "--checkpoint-every", 2).exit_code == 0
    one_error(run("train", "--task", "digits", "--steps", 5, "--resume-from", ck),
              "is a checkpoint of task 'dots', not 'digits'")
    one_error(run("train", "--task", "dots", "--adaptive", "--steps", 5, "--resume-from", ck),
              "holds a run with the FixedBatch policy")


def test_a_checkpoint_into_a_directory_is_refused_before_training_and_leaves_nothing(tmp_path):
    one_error(run("train", "--task", "dots", "--steps", 5, "--checkpoint", tmp_path), "is a directory")
    assert list(tmp_path.iterdir()) == []
    one_error(run("train", "--task", "dots", "--steps", 5, "--checkpoint", tmp_path / "no" / "ck.pt"),
              "does not exist")


def test_a_killed_run_continues_from_its_checkpoint(tmp_path):
    ck = tmp_path / "ck.pt"
    whole = run("train", "--task", "dots", "--steps", 30, "--json")
    assert run("train", "--task", "dots", "--steps", 20, "--checkpoint", ck, "--checkpoint-every", 10).exit_code == 0
    rest = run("train", "--task", "dots", "--steps", 30, "--resume-from", ck, "--json")
    assert rest.exit_code == 0, rest.output
    assert '"steps": 30' in rest.output
    assert Path(ck).exists() and not Path(f"{ck}.tmp").exists()
    assert whole.exit_code == 0


def test_library_refusals_name_the_value(tmp_path):
    from batchscope import ConfigError, TrainConfig, train

    with pytest.raises(ConfigError, match=r"The 'lr' parameter must be a learning rate up to 1e\+30"):
        train("dots", TrainConfig(batch_size=16, steps=2, lr=1e300, optimizer="adam"))
    with pytest.raises(ConfigError, match="micro-batch 100000000000000000000000000000 does not divide batch size 16"):
        train("dots", TrainConfig(batch_size=16, steps=2, micro_batch=10**29))
    pytest.importorskip("tensorboard")
    from batchscope.integrations.tensorboard import read_scalars

    with pytest.raises(ConfigError, match="no TensorBoard log directory at"):
        read_scalars(tmp_path / "missing")
