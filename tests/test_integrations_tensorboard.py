import math

import pytest

pytest.importorskip("tensorboard")

from batchscope import TrainConfig, train  # noqa: E402
from batchscope.integrations.tensorboard import TensorBoardCallback, read_scalars  # noqa: E402
from batchscope.noise import NoiseScaleMonitor  # noqa: E402


def test_tensorboard_scalars_are_the_run_s_numbers(tiny_task, tmp_path):
    monitor = NoiseScaleMonitor()
    tb = TensorBoardCallback(tmp_path / "tb", monitor)
    result = train(tiny_task, TrainConfig(batch_size=32, micro_batch=8, steps=40, eval_every=10, lr=0.05),
                   [monitor, tb])
    s = read_scalars(tmp_path / "tb")
    assert [step for step, _ in s["train/loss"]] == list(range(1, 41))
    assert {v for _, v in s["train/batch_size"]} == {32.0}
    assert s["train/lr"][-1][1] == pytest.approx(0.05)
    # B_noise as the monitor had it after each step (float32 in the event file).
    got = dict(s["noise/b_simple"])
    for p in monitor.history:
        if math.isfinite(p.b_simple):
            assert got[p.step] == pytest.approx(p.b_simple, rel=1e-6)
    assert "noise/b_simple_low" in s
    evals = {p.step: p.eval_loss for p in result.history if p.eval_loss is not None}
    assert dict(s["val/loss"]) == pytest.approx(evals, rel=1e-6)


def test_training_loss_written_matches_history(tiny_task, tmp_path):
    result = train(tiny_task, TrainConfig(batch_size=16, steps=20, eval_every=5), [TensorBoardCallback(tmp_path)])
    s = read_scalars(tmp_path)
    assert len(s["train/loss"]) == 20 and "noise/b_simple" not in s
    assert s["train/examples"][-1] == (20, 320.0)
    assert result.steps == 20


def test_train_command_log_dir_writes_noise_and_metric(tmp_path):
    from click.testing import CliRunner

    from batchscope.cli import cli

    r = CliRunner().invoke(cli, ["train", "--task", "dots", "-b", "64", "--micro-batch", "16", "--steps", "30",
                                 "--eval-every", "10", "--log-dir", str(tmp_path / "tb"), "--json"])
    assert r.exit_code == 0, r.output
    s = read_scalars(tmp_path / "tb")
    assert len(s["train/loss"]) == 30 and len(s["noise/b_simple_low"]) > 0
    assert [step for step, _ in s["val/accuracy"]] == [0, 10, 20, 30]   # 0: before training


def test_train_command_log_dir_without_tensorboard_is_one_line(tmp_path, monkeypatch):
    import sys

    from click.testing import CliRunner

    from batchscope.cli import cli

    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.delitem(sys.modules, "batchscope.integrations.tensorboard", raising=False)
    r = CliRunner().invoke(cli, ["train", "--task", "dots", "--steps", "5", "--log-dir", str(tmp_path)])
    assert r.exit_code == 2
    assert r.output.strip().splitlines()[-1] == ("error: --log-dir: batchscope.integrations.tensorboard needs "
                                                 "tensorboard: pip install 'batchscope[tensorboard]'")
