import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchscope.cli import cli

TASK = f"{Path(__file__).parent / 'study_tasks.py'}:blobs"


def run(*args):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("study")
    r = run("study", "--task", TASK, "--dir", str(d), "--batch-sizes", "16,32,96", "--epochs", "1",
            "--optimizers", "sgd,adam", "--lr", "sgd=0.05", "--lr-rules", "none,linear", "--grad-norm-batches", "4",
            "--noise-steps", "10", "--evals", "4", "--target", "0.85", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["summary"]["ran"] == doc["summary"]["total"] == 3 * 2 * 2
    return d


def test_report_files_and_content(study_dir, tmp_path):
    r = run("report", str(study_dir), "--out", str(tmp_path), "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    md = (tmp_path / "report.md").read_text()
    for png in ("accuracy_gap.png", "distance.png", "grad_norms.png", "lr_warmup.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in md
    assert "<img src='distance.png'" in (tmp_path / "report.html").read_text()
    names = [f["name"] for f in doc["findings"]]
    assert names[0] == "large_batches_lower_accuracy" and len(names) == 5
    assert doc["findings"][4]["verdict"] == "not tested"   # no warm-up arm in this study
    for f in doc["findings"]:
        assert f["verdict"] in ("held", "did not hold", "mixed", "inconclusive", "not tested")
        assert f["verdict"].upper() in md
    assert doc["plan"]["lrs"] == {"sgd": 0.05, "adam": 0.001}
    assert doc["noise"]["batch_size"] == 32 and "b_simple" in doc["noise"]
    # every run appears in the run table, with its key
    for key in ("B16-sgd-none-x1-w0-s0", "B96-adam-linear-x1-w0-s0"):
        assert f"| {key} |" in md


def test_resume_of_a_finished_study_runs_nothing(study_dir):
    r = run("study", "--resume", str(study_dir), "--no-report", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["summary"]["ran"] == 0


@pytest.mark.parametrize("args,msg", [
    (["--batch-sizes", "32,1000"], "error: batch size(s) 1000 larger than the training set of task 'blobs' "
                                   "(384 examples); use batch sizes up to 384"),
    (["--optimizers", "sgd,lion"], "error: The --optimizers option must hold names from sgd, adam, adamw. "
                                   "Got 'lion' instead."),
    (["--batch-sizes", ","], "error: The 'batch_sizes' parameter is empty, so the study grid has no runs"),
    (["--seeds", ""], "error: The 'seeds' parameter is empty"),
    (["--lr-rules", "cubic"], "error: The --lr-rules option must hold names from none, sqrt, linear"),
    (["--epochs", "2", "--steps", "5"], "error: give a budget in --epochs or in --steps, not both"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, msg):
    d = tmp_path / "s"
    r = run("study", "--task", TASK, "--dir", str(d), *args)
    assert r.exit_code == 2, r.output
    assert msg in r.output
    assert not (d / "study.db").exists()


def test_directory_errors(tmp_path, study_dir):
    r = run("study", "--task", TASK)
    assert r.exit_code == 2 and "give exactly one of --dir DIR (a new study) or --resume DIR" in r.output
    r = run("study", "--resume", str(tmp_path))
    assert r.exit_code == 2 and f"nothing to resume in {tmp_path}" in r.output
    r = run("study", "--task", TASK, "--dir", str(study_dir))
    assert r.exit_code == 2 and "already holds a study; continue it with `batchscope study --resume" in r.output
    r = run("report", str(tmp_path))
    assert r.exit_code == 2 and f"{tmp_path} holds no study.db" in r.output


def test_the_verdicts_shown_are_the_library_analysis_of_the_stored_runs(study_dir, tmp_path):
    from batchscope.study.findings import analyse
    from batchscope.study.runner import load_study

    r = run("report", str(study_dir), "--out", str(tmp_path), "--json")
    doc = json.loads(r.stdout)
    saved = load_study(study_dir)
    expected = analyse(saved.plan, saved.records, saved.noise)
    assert [f["verdict"] for f in doc["findings"]] == [f.verdict for f in expected.findings]
    md = (tmp_path / "report.md").read_text()
    for f in expected.findings:
        assert f"| {f.claim} | {f.verdict.upper()} |" in md


def test_a_study_whose_runs_all_diverge_is_reported(tmp_path):
    d = tmp_path / "s"
    r = run("study", "--task", "dots", "--dir", str(d), "--batch-sizes", "16,32", "--steps", "20",
            "--optimizers", "sgd", "--lr", "1e5", "--lr-rules", "none", "--noise-steps", "0",
            "--grad-norm-batches", "0", "--no-report")
    assert r.exit_code == 0, r.output
    r = run("report", str(d), "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert sorted(doc["diverged"]) == ["B16-sgd-none-x1-w0-s0", "B32-sgd-none-x1-w0-s0"]
    assert all(f["summary"].startswith("not enough finished runs: 2 of 2 diverged") for f in doc["findings"])
    assert doc["bcrit"]["sgd"]["fit"] is None and "not enough finished runs" in doc["bcrit"]["sgd"]["note"]
    md = (d / "report.md").read_text()
    assert "| B16-sgd-none-x1-w0-s0 | diverged |" in md
