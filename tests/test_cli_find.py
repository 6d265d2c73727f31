import json

from click.testing import CliRunner

from batchscope.cli import cli
from batchscope.tasks import load_task

from .test_plan_find import fake_profile


def test_find_cli_end_to_end(tmp_path):
    task = load_task("dots")
    prof = tmp_path / "dots.json"
    fake_profile(task, alpha=4e-4, beta=1e-6).save(prof)
    r = CliRunner().invoke(cli, ["find", "--task", "dots", "--profile", str(prof), "--json",
                                 "--report", str(tmp_path / "report")])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    for key in ("batch_size", "micro_batch", "accumulation", "lr", "warmup_steps", "b_noise", "b_crit_at_target",
                "schedule", "candidates"):
        assert key in doc, key
    assert {"value", "low", "high"} <= set(doc["b_noise"])
    assert doc["adaptive_command"].startswith("batchscope train --task dots --adaptive --batch-size ")
    assert doc["batch_size"] == doc["micro_batch"] * doc["accumulation"]
    assert [c["batch_size"] for c in doc["candidates"]] == [2 ** k for k in range(12)]  # 1 .. 2048 < 4000
    report = (tmp_path / "report" / "README.md").read_text()
    assert f"batch size **{doc['batch_size']}**" in report
    for png in ("hardware.png", "noise_vs_loss.png", "tradeoff.png"):
        assert (tmp_path / "report" / png).stat().st_size > 5000


def test_find_cli_refuses_a_profile_of_another_task(tmp_path):
    prof = tmp_path / "mnist1d.json"
    fake_profile(load_task("mnist1d")).save(prof)
    r = CliRunner().invoke(cli, ["find", "--task", "dots", "--profile", str(prof)])
    assert r.exit_code == 2
    assert "error: the profile was measured for task 'mnist1d'" in r.stderr


def test_find_cli_keeps_what_it_measured_when_it_fails(tmp_path):
    # the linear task cannot reach a loss below its noise floor: find fails after measuring
    task_file = tmp_path / "floor.py"
    task_file.write_text(
        "from tests.conftest import linear_task\n"
        "from batchscope import Target, Task\n"
        "def make_task():\n"
        "    t = linear_task()\n"
        "    return Task(**{**t.__dict__, 'target': Target('loss', 1e-6, 'val')})\n")
    prof = tmp_path / "linear.json"
    from tests.conftest import linear_task

    fake_profile(linear_task()).save(prof)
    out = tmp_path / "partial.json"
    r = CliRunner().invoke(cli, ["find", "--task", f"{task_file}:make_task", "--profile", str(prof), "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert "measurements so far written to" in r.stderr
    doc = json.loads(out.read_text())
    assert doc["error"].startswith("the target val loss <= 1e-06 looks out of reach") or "no progress" in doc["error"]
    assert doc["profile"]["task"] == "linear" and len(doc["measuring_history"]) > 1 and doc["measuring_noise"]
