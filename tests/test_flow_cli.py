import json

import pytest
from click.testing import CliRunner

from batchscope.cli import cli

# the three-station line of test_flow_closed_form
HAND = ["--unit-times", "1,2,1", "--setups", "2,3,1", "--order", "4"]


def run(*args):
    return CliRunner().invoke(cli, ["flow", *args])


def test_json_has_lead_time_wip_and_value_added():
    r = run(*HAND, "--transfer-batch", "1", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    # one-piece flow by hand: exits 10, 11, 13, 15
    fig = {k: v["mean"] for k, v in doc["figures"].items()}
    assert (fig["lead_time"], fig["first_unit_lead_time"], fig["last_unit_lead_time"]) == (15.0, 10.0, 15.0)
    assert fig["wip_average"] == pytest.approx(49 / 15)
    assert fig["value_added_fraction"] == pytest.approx(4 / 15)
    assert fig["waiting_time_per_unit"] == pytest.approx(8.25)
    assert doc["bottleneck"] == "S2" and doc["bottleneck_capacity"] == pytest.approx(4 / 11)
    assert doc["closed_form"]["agrees"] and doc["closed_form"]["case"] == "one-piece flow"
    assert doc["little_max_gap"] < 1e-12
    from batchscope.flow.simulate import SimulationResult
    assert SimulationResult.from_dict(doc).figures["lead_time"].mean == 15.0  # the library's one schema
    assert [s["idle"][0]["mean"] for s in doc["stations"]] == [9.0, 4.0, 10.0]


def test_example_and_table(tmp_path):
    r = run("--example", "--replications", "5")
    assert r.exit_code == 0, r.output
    assert "example cell" in r.stdout and "mill *" in r.stdout and "5 replications, 95% t-intervals" in r.stdout
    out = tmp_path / "flow.json"
    r = run("--example", "--replications", "5", "--json", "--out", str(out))
    assert json.loads(out.read_text())["line"]["name"] == "example cell" == json.loads(r.stdout)["line"]["name"]


def test_line_file_with_overrides_and_plots(tmp_path):
    path = tmp_path / "line.toml"
    path.write_text('order_quantity = 8\n[[stations]]\nname = "a"\nunit_time = 1.0\nsetup = 2\n'
                    '[[stations]]\nname = "b"\nunit_time = 2.0\n')
    r = run(str(path), "--transfer-batch", "2", "--plots", str(tmp_path / "plots"), "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["line"]["transfer_batch"] == 2
    assert doc["sweep"]["transfer_batch"]["values"] == [1, 2, 4, 8]
    for p in doc["plots"]:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_pipeline_json():
    r = run("--pipeline", "--stages", "4", "--micro-batches", "8", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["bubble_fraction"] == pytest.approx(3 / 11) and doc["agrees"]
    assert doc["gpipe_formula"] == "(P - 1) / (M + P - 1)"


@pytest.mark.parametrize("args, message", [
    (HAND + ["--process-batch", "2", "--transfer-batch", "3"],
     "error: The transfer batch of line (3) is larger than the process batch (2)"),
    (["--unit-times", "1,2", "--setups", "1,-4", "--order", "4"],
     "error: The 'setup' parameter of station 'S2' must be a non-negative finite number (a time). Got -4.0 instead."),
    (["--unit-times", "", "--order", "4"], "error: The line 'line' has no stations."),
    ([], "error: Define the line one way: a LINE_FILE (.toml/.json), --example, or --unit-times"),
    (["--example", "--unit-times", "1"], "Got --example and --unit-times."),
    (["--unit-times", "1,x", "--order", "3"], "--unit-times takes comma-separated numbers"),
    (["--unit-times", "1", "--order", "3", "--distribution", "cauchy"], "must be one of deterministic"),
    (["--pipeline", "--stages", "3", "--stage-times", "1,2"], "Give one forward time per stage"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert message in r.stderr
    assert "Traceback" not in r.output
    assert len(r.stderr.strip().splitlines()) == 1


def test_empty_line_file(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text(json.dumps({"order_quantity": 5, "stations": []}))
    r = run(str(path))
    assert r.exit_code == 2 and "has no stations" in r.stderr
