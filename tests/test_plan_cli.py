"""`batchscope plan` end to end on a saved find result: the table, --json, --plot, and bad input."""

import json

import pytest
from click.testing import CliRunner

from batchscope.cli import cli
from batchscope.tasks import load_task
from tests.helpers import fake_profile

TASK = "tests/study_tasks.py:blobs"


@pytest.fixture
def find_json(tmp_path):
    """What `find --out` writes, reduced to what plan reads: B_crit, the measuring run, the profile."""
    profile = fake_profile(load_task(TASK), alpha=2e-3, beta=3e-6, ceiling=64, limited_by="memory")
    doc = {"b_crit": {"value": 256.0}, "evidence": {"ref_batch": 32, "projected_examples_at_ref": 32 * 900.0},
           "profile": profile.to_dict()}
    path = tmp_path / "find.json"
    path.write_text(json.dumps(doc))
    return str(path)


def _plan(*args):
    return CliRunner().invoke(cli, ["plan", "--task", TASK, *args])


def test_plan_prints_the_frontier_and_writes_json_and_a_plot(find_json, tmp_path):
    res = _plan("--find", find_json, "--devices", "1,2,4", "--price", "3")
    assert res.exit_code == 0, res.output
    assert "fastest:" in res.output and "cheapest:" in res.output and "knee:" in res.output
    assert max(len(line) for line in res.output.splitlines()[:12]) <= 80
    res = _plan("--find", find_json, "--devices", "1,2,4", "--json", "--plot", str(tmp_path / "p.png"))
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    plan = doc["plan"]
    assert [r["devices"] for r in plan["best"]] == [1, 2, 4]
    # S_min = 900 / (1 + 256 / 32) = 100 steps; every row's steps follow S_min (1 + B_crit / B)
    for r in plan["rows"]:
        assert r["steps"] == pytest.approx(100 * (1 + 256 / r["batch_size"]))
        assert r["micro_batch"] <= 64
    assert (tmp_path / "p.png").stat().st_size > 1000


@pytest.mark.parametrize("args, message", [
    (["--bandwidth", "0"], "error: the bandwidth of nvlink4 (overridden) must be a positive number of GB/s"),
    (["--devices", "1,8", "--batches", "12"], "error: a global batch of 12 cannot be split evenly over 8 devices"),
    (["--device-memory", "512B"], "error: one replica needs 696 B"),
    (["--devices", "0,2"], "error: --devices must be comma-separated positive integers"),
    (["--link", "nvlink9"], "error: unknown interconnect 'nvlink9'"),
])
def test_bad_input_is_one_line_and_exit_2(find_json, args, message):
    res = _plan("--find", find_json, *args)
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), res.stderr


def test_a_find_result_for_another_model_is_refused(find_json):
    res = CliRunner().invoke(cli, ["plan", "--task", "tests/study_tasks.py:blobs", "--find", find_json])
    assert res.exit_code == 0
    res = CliRunner().invoke(cli, ["plan", "--task", "dots", "--find", find_json])
    assert res.exit_code == 2 and "is a find result for task 'blobs'" in res.stderr


def test_a_file_that_is_not_a_find_result_is_refused(tmp_path):
    other = tmp_path / "other.json"
    other.write_text('{"batch_size": 64}')
    res = _plan("--find", str(other))
    assert res.exit_code == 2
    assert res.stderr.startswith(f"error: {other} is not a `batchscope find --out` result (KeyError")


def test_plan_reads_a_find_result_written_before_b_crit_was_named(find_json):
    from batchscope.plan.sizing import measured_from_find

    doc = json.loads(open(find_json).read())
    old = {("b_noise" if k == "b_crit" else k): v for k, v in doc.items()}
    assert measured_from_find(old, load_task(TASK), "old.json").b_crit == 256.0
