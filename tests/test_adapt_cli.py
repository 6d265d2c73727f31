"""`batchscope train --adaptive`: JSON columns, the plot, and bad input as one line with exit 2."""

import json

import pytest
from click.testing import CliRunner

from batchscope.cli import cli
from batchscope.commands.find import adaptive_command
from batchscope.tasks import load_task
from batchscope.plan.critical_batch import LIVE_FACTOR

from .test_plan_find import fake_profile


@pytest.fixture
def dots_profile(tmp_path):
    path = tmp_path / "dots.json"
    fake_profile(load_task("dots"), alpha=2e-3, beta=2e-5).save(path)
    return str(path)


def test_adaptive_train_json_and_plot(tmp_path, dots_profile):
    png = tmp_path / "adaptive.png"
    r = CliRunner().invoke(cli, ["train", "--task", "dots", "--adaptive", "--batch-size", "8", "--steps", "60",
                                 "--profile", dots_profile, "--max-batch", "128", "--min-batch", "8",
                                 "--plot", str(png), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    cols = doc["adaptive"]["steps"]
    assert {"batch_size", "accumulation", "lr", "b_crit"} <= set(cols) and len(cols["batch_size"]) == 60
    assert max(cols["batch_size"]) <= 128 and doc["config"]["adaptive"]["max_batch"] == 128
    assert min(cols["batch_size"]) >= 8 and doc["config"]["adaptive"]["min_batch"] == 8
    # the B_noise column is what the controller planned with: the suite factor x the monitor's B_simple
    a = doc["adaptive"]
    assert a["noise_factor"] == LIVE_FACTOR
    b_simple = a["final_estimate"]["b_simple"]     # "inf" in JSON when the last |G|² estimate was not positive
    assert cols["b_crit"][-1] == (None if b_simple == "inf" else pytest.approx(LIVE_FACTOR * b_simple))
    assert png.stat().st_size > 5000


MIN_BATCH_RANGE = "The --min-batch option must be in 2..16 (the starting batch; a measured step needs two examples)."


@pytest.mark.parametrize("args,message", [
    (["--adaptive", "--batch-size", "16", "--max-batch", "8"],
     "The --max-batch option must be at least the starting batch 16. Got 8 instead."),
    (["--max-batch", "64"], "--max-batch only apply to adaptive runs; add --adaptive"),
    (["--adaptive", "--batch-size", "16", "--min-batch", "32"], f"{MIN_BATCH_RANGE} Got 32 instead."),
    (["--adaptive", "--batch-size", "16", "--min-batch", "1"], f"{MIN_BATCH_RANGE} Got 1 instead."),
    (["--min-batch", "8"], "--min-batch only apply to adaptive runs; add --adaptive"),
])
def test_bad_input_is_one_error_line_and_exit_2(args, message, dots_profile):
    extra = ["--profile", dots_profile] if "--adaptive" in args else []
    r = CliRunner().invoke(cli, ["train", "--task", "dots", "--steps", "5", *args, *extra])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert f"error: {message}" in r.output


def test_find_says_how_to_train_adaptively():
    cmd = adaptive_command("dots", {"batch_size": 32, "lr": 0.1}, 512, "p.json", "cpu")
    assert cmd == ("batchscope train --task dots --adaptive --batch-size 32 --lr 0.1 --until-target "
                   "--max-batch 512 --profile p.json")
