import json

from click.testing import CliRunner

from batchscope.cli import cli


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_train_json_history():
    r = run("train", "--task", "dots", "--batch-size", "32", "--steps", "40", "--eval-every", "10", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [h["step"] for h in doc["history"]] == [0, 10, 20, 30, 40]
    for h in doc["history"]:
        assert {"step", "examples", "loss", "metric", "seconds"} <= set(h)
    assert doc["history"][-1]["examples"] == 40 * 32


def test_tasks_lists_builtins():
    r = run("tasks", "--json")
    assert r.exit_code == 0
    assert {t["name"] for t in json.loads(r.stdout)["tasks"]} == {"mnist1d", "digits", "dots", "text"}


def test_user_errors_are_one_line_and_exit_2(tmp_path):
    cases = [
        (["train", "--task", "nope"], "error: unknown task 'nope'"),
        (["train", "--task", str(tmp_path / "x.py") + ":make_task"], "does not exist"),
        (["train", "--task", "dots", "--batch-size", "0"], "The --batch-size option must be a positive integer"),
        (["train", "--task", "dots", "--batch-size", "99999", "--steps", "1"], "larger than the training set"),
        (["train", "--task", "dots", "--lr", "1e9", "--steps", "50"], "lower the learning rate"),
    ]
    for args, message in cases:
        r = run(*args)
        assert r.exit_code == 2, (args, r.output)
        assert message in r.stderr
        assert "Traceback" not in r.output
        assert len(r.stderr.strip().splitlines()) == 1


def test_a_diverged_run_keeps_its_history(tmp_path):
    out = tmp_path / "run.json"
    r = run("train", "--task", "dots", "--lr", "1e9", "--steps", "50", "--eval-every", "1", "--out", str(out))
    assert r.exit_code == 2 and f"measurements so far written to {out}" in r.stderr
    doc = json.loads(out.read_text())
    assert doc["error"].startswith("the training loss") and doc["history"][0]["step"] == 0
