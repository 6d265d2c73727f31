"""One table of bad input across every command: exit status 2, exactly one `error:` line, no traceback.

Each row names the problem the message must mention. Rows that need files get them from the
``files`` fixture (placeholders in braces).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import batchscope
from batchscope.cli import cli
from batchscope.tasks import load_task
from tests.helpers import fake_profile

CASES = [
    # train
    (["train", "--task", "nope"], "unknown task 'nope'"),
    (["train", "--task", "{missing}.py:make_task"], "does not exist"),
    (["train", "--task", "dots", "--batch-size", "0"], "The --batch-size option must be a positive integer"),
    (["train", "--task", "dots", "--batch-size", "99999", "--steps", "1"], "larger than the training set"),
    (["train", "--task", "dots", "-b", "32", "--micro-batch", "5", "--steps", "1"], "micro-batch"),
    (["train", "--task", "dots", "--lr", "1e9", "--steps", "50"], "lower the learning rate"),
    (["train", "--task", "dots", "--optimizer", "lion"], "'lion' is not one of"),
    (["train", "--task", "dots", "--device", "tpu"], "unknown device 'tpu'"),
    (["train", "--task", "dots", "--adaptive", "-b", "64", "--max-batch", "32", "--profile", "{dots_profile}"],
     "The --max-batch option must be at least the starting batch 64. Got 32 instead."),
    (["train", "--task", "dots", "--max-batch", "32"], "only apply to adaptive runs; add --adaptive"),
    (["train", "--task", "dots", "--adaptive", "-b", "64", "--micro-batch", "8", "--profile", "{dots_profile}"],
     "an adaptive run picks its own micro-batches"),
    # find
    (["find", "--task", "dots", "--ref-batch", "0", "--profile", "{dots_profile}"],
     "The --ref-batch option must be a positive integer. Got 0"),
    (["find", "--task", "dots", "--ref-batch", "-5", "--profile", "{dots_profile}"],
     "The --ref-batch option must be a positive integer. Got -5"),
    (["find", "--task", "dots", "--ref-batch", "4", "--profile", "{dots_profile}"], "must be at least 8"),
    (["find", "--task", "dots", "--budget", "0", "--profile", "{dots_profile}"], "The 'budget' parameter"),
    (["find", "--task", "dots", "--devices", "0", "--profile", "{dots_profile}"], "The --devices option"),
    (["find", "--task", "dots", "--max-batch", "0", "--profile", "{dots_profile}"], "The --max-batch option"),
    (["find", "--task", "dots", "--profile", "{missing}.json"], "does not exist"),
    (["find", "--task", "dots", "--profile", "{mnist_profile}"], "the profile was measured for task 'mnist1d'"),
    (["find", "--task", "dots", "--profile", "{not_json}"], "is not valid JSON"),
    (["find", "--task", "dots", "--objective", "cheap"], "'cheap' is not one of"),
    # noise
    (["noise", "--task", "dots", "-b", "32", "--micro-batch", "5", "--steps", "5"], "does not divide batch size 32"),
    (["noise", "--task", "dots", "-b", "1", "--steps", "5"], "needs two batch sizes"),
    # profile
    (["profile", "--task", "dots", "--max-batch", "0"], "The --max-batch option"),
    (["profile", "--task", "dots", "--memory-budget", "big"], "The --memory-budget option must be a size"),
    (["profile", "--task", "dots", "--threads", "0"], "--threads must be a positive integer"),
    # study and report
    (["study", "--task", "dots"], "give exactly one of --dir DIR"),
    (["study", "--resume", "{empty_dir}"], "nothing to resume"),
    (["report", "{empty_dir}"], "holds no study.db"),
    (["report", "{garbage_study}"], "is damaged or not a study database"),
    (["report", "{foreign_study}"], "not a batchscope study"),
    (["study", "--resume", "{garbage_study}"], "is damaged or not a study database"),
    # flow
    (["flow", "{latin1_line}"], "is not UTF-8 text"),
    (["flow", "--unit-times", "1,2", "--order", "4", "--distribution", "exponential", "--cv", "1",
      "--replications", "1"], "one replication has no interval"),
    (["flow", "{missing}.toml"], "does not exist"),
    (["flow", "--unit-times", "1,x", "--order", "3"], "--unit-times takes comma-separated numbers"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    fake_profile(load_task("dots")).save(d / "dots.json")
    fake_profile(load_task("mnist1d")).save(d / "mnist1d.json")
    (d / "not.json").write_text("{not json")
    (d / "empty").mkdir()
    (d / "garbage").mkdir()
    (d / "garbage" / "study.db").write_bytes(b"\x00garbage" * 200)
    (d / "foreign").mkdir()
    import sqlite3

    with sqlite3.connect(d / "foreign" / "study.db") as c:
        c.execute("CREATE TABLE t (x)")
    c.close()
    (d / "line.toml").write_bytes("name = 'caf\u00e9'\n".encode("latin-1"))
    return {"missing": str(d / "missing"), "dots_profile": str(d / "dots.json"),
            "mnist_profile": str(d / "mnist1d.json"), "not_json": str(d / "not.json"), "empty_dir": str(d / "empty"),
            "garbage_study": str(d / "garbage"), "foreign_study": str(d / "foreign"),
            "latin1_line": str(d / "line.toml")}


@pytest.mark.parametrize("args, problem", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_is_one_error_line_and_exit_2(files, args, problem):
    r = CliRunner().invoke(cli, [a.format(**files) for a in args])
    assert r.exit_code == 2, r.output
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and problem in errors[0], r.stderr
    assert "Traceback" not in r.output and "Traceback" not in r.stderr


def test_report_leaves_a_foreign_database_byte_identical(files):
    db = Path(files["foreign_study"]) / "study.db"
    before = db.read_bytes()
    CliRunner().invoke(cli, ["report", files["foreign_study"]])
    assert db.read_bytes() == before


ENV = {**os.environ, "PYTHONPATH": str(Path(batchscope.__file__).parents[1])}


def ended_by_ctrl_c(returncode: int) -> bool:
    """Exit status 130, or death by SIGINT: a shell reports both as 130 (128 + 2). Under load a
    run interrupted in training sometimes ends by SIGINT after batchscope printed its line and asked
    for 130 (in about half of the tries on a loaded machine, never under strace; not traced further)."""
    return returncode in (130, -signal.SIGINT)


@pytest.mark.parametrize("delay", [0.1, 0.3, 0.6, 1.5])
def test_ctrl_c_while_starting_is_exit_130_without_a_traceback(delay):
    # 0.3 s lands while torch imports, later ones in the command's own imports or the first steps
    p = subprocess.Popen([sys.executable, "-m", "batchscope", "train", "--task", "dots", "--steps", "100000"],
                         env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert ended_by_ctrl_c(p.returncode), err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted"


def test_ctrl_c_during_a_run_keeps_nothing_half_written(tmp_path):
    out = tmp_path / "run.json"
    p = subprocess.Popen([sys.executable, "-m", "batchscope", "train", "--task", "dots", "--steps", "100000",
                          "--out", str(out)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while "training dots on" not in (p.stdout.readline() or "") and time.time() < deadline:
        pass
    time.sleep(1.0)
    t0 = time.time()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    assert ended_by_ctrl_c(p.returncode) and time.time() - t0 < 5, err
    assert "Traceback" not in err and "kept" not in err and "written" not in err
    assert list(tmp_path.iterdir()) == []
