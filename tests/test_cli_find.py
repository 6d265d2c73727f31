import json
import re

from click.testing import CliRunner

from batchscope.cli import cli
from batchscope.tasks import load_task

from batchscope.plan.critical_batch import SUITE_COVERED, SUITE_TASKS
from tests.helpers import fake_profile


def test_find_cli_end_to_end(tmp_path):
    task = load_task("dots")
    prof = tmp_path / "dots.json"
    fake_profile(task, alpha=4e-4, beta=1e-6).save(prof)
    r = CliRunner().invoke(cli, ["find", "--task", "dots", "--profile", str(prof), "--json",
                                 "--report", str(tmp_path / "report")])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    for key in ("batch_size", "micro_batch", "accumulation", "lr", "warmup_steps", "b_crit", "b_simple_at_target",
                "schedule", "candidates"):
        assert key in doc, key
    assert "b_noise" not in json.dumps(doc) and "B_noise" not in json.dumps(doc)
    assert {"value", "low", "high", "b_simple", "factor", "calibration"} <= set(doc["b_crit"])
    assert doc["schedule"][-1]["batch_size"] == doc["batch_size"]
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
        "from tests.helpers import linear_task\n"
        "from batchscope import Target, Task\n"
        "def make_task():\n"
        "    t = linear_task()\n"
        "    return Task(**{**t.__dict__, 'target': Target('loss', 1e-6, 'val')})\n")
    prof = tmp_path / "linear.json"
    from tests.helpers import linear_task

    fake_profile(linear_task()).save(prof)
    out = tmp_path / "partial.json"
    r = CliRunner().invoke(cli, ["find", "--task", f"{task_file}:make_task", "--profile", str(prof), "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert "measurements so far written to" in r.stderr
    doc = json.loads(out.read_text())
    assert doc["error"].startswith(
        "the measuring run made no progress toward the target val loss <= 1e-06 in 601 steps")
    assert doc["complete"] is False
    assert doc["profile"]["task"] == "linear" and len(doc["measuring_history"]) > 1 and doc["measuring_noise"]


def test_find_output_reads_at_80_columns_when_piped(tmp_path):
    task = load_task("dots")
    prof = tmp_path / "dots.json"
    fake_profile(task, alpha=4e-4, beta=1e-6, ceiling=256, limited_by="max_batch").save(prof)
    r = CliRunner().invoke(cli, ["find", "--task", "dots", "--profile", str(prof)], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    # a command line to paste keeps a path longer than the width whole, on a line of its own option
    lines = [ln for ln in r.stdout.splitlines() if not (ln.startswith("    --") and len(ln.split()) <= 3)]
    assert max(map(len, lines)) <= 80 and "…" not in r.stdout, r.stdout
    # the default output fits one screen (51 lines): candidates near the choice only, one row per branch, and
    # the step time measured on this machine said not to be added to a profile that names no device
    assert len(r.stdout.splitlines()) <= 51, r.stdout
    text = " ".join(r.stdout.split())
    for header in ("time / fastest", "compute / E_min", "micro x acc",
                   "candidates near the choice (--verbose: all 12)"):
        assert header in r.stdout
    rows = [ln for ln in r.stdout.splitlines() if re.match(r"(> )?\d+ +\d+ x \d+ ", ln)]
    assert len(rows) == 5 and sum(ln.startswith("> ") for ln in rows) == 1, rows
    assert "B_crit:" in text and "B_noise" not in text and "is the recommendation; beyond it" in text
    # the profile cut at 256 by --max-batch: said as such, and no candidate runs micro-batches above it
    assert "micro-batch limit: 256" in text and "capped by max_batch, not by memory" in text
    doc = json.loads(CliRunner().invoke(cli, ["find", "--task", "dots", "--profile", str(prof), "--json"]).stdout)
    assert max(c["micro_batch"] for c in doc["candidates"]) == 256
    verbose = CliRunner().invoke(cli, ["find", "--task", "dots", "--profile", str(prof), "--verbose"],
                                 env={"COLUMNS": "80"}).stdout
    every = [ln.split()[:4] for ln in verbose.splitlines() if re.match(r"(> )?\d+ +\d+ x \d+ ", ln)]
    assert len(every) == 12 and every[-1] == ["2048", "256", "x", "8"]       # every candidate, none above 256
    assert "calibration" not in text and f"on {SUITE_COVERED} of {SUITE_TASKS} tasks" in " ".join(verbose.split())
    assert "[2/2] measuring noise scale: 0/" in r.stdout  # progress as plain lines, not a cut bar
    assert "planning for the hardware in" in text and "measured here, on cpu" in text and "on auto" not in text


def test_the_adaptive_command_fits_80_columns_and_pastes_as_the_same_command():
    import shlex

    from batchscope.commands.find import _shell_lines

    command = ("batchscope train --task path/to/a_long_task_file.py:make_task --adaptive --batch-size 64 "
               "--lr 0.05 --until-target --max-batch 4096 --profile gpu-profile.json --device cuda:1")
    text = _shell_lines(command)
    assert len(text.splitlines()) > 1 and all(len(line) <= 80 for line in text.splitlines())
    assert shlex.split(text.replace("\\\n", " ")) == shlex.split(command)


def test_library_messages_name_parameters_and_the_command_names_its_options():
    from batchscope.commands._options import in_flag_terms
    from batchscope.commands.find import command

    said = in_flag_terms("The 'measure_fraction' parameter of find must be a fraction in (0, 1]. Got 0 instead.",
                         command)
    assert said == "The --budget option must be a fraction in (0, 1]. Got 0 instead."
    assert in_flag_terms("give 'measure_fraction' at least 3.0%", command) == "give --budget at least 3.0%"
    assert in_flag_terms("lower 'devices' or raise 'max_batch'", command) == "lower --devices or raise --max-batch"
    assert in_flag_terms("unknown task 'link'", command) == "unknown task 'link'"   # a value, not a parameter


def test_find_s_library_modules_name_no_command_line_option():
    import ast
    from pathlib import Path

    import batchscope.plan as plan

    for name in ("find", "recommend", "critical_batch", "growth", "projection"):
        tree = ast.parse((Path(plan.__file__).parent / f"{name}.py").read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.FunctionDef,
                      ast.ClassDef)) and n.body and isinstance(n.body[0], ast.Expr)}
        words = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                 and id(n) not in docstrings]
        assert not [w for w in words if re.search(r"(^|\s)--[a-z]", w)], name


def test_help_says_how_to_choose_a_target_without_a_baseline():
    r = CliRunner().invoke(cli, ["find", "--help"], env={"COLUMNS": "80"})
    text = " ".join(r.stdout.split())
    assert "--target-epochs" in text and "so no baseline run is needed" in text
    assert "Choose the epochs you would train for at that setting" in text
