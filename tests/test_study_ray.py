"""`study --ray` on a local Ray (2 CPUs): the same stored results as local workers, SIGKILL of the
driver and --resume, and runs whose worker dies or raises."""

import json
import signal
import sqlite3

import pytest

import batchscope
from batchscope.study import load_study, run_study
from tests.test_study_store import HERE, TASK, child, plan

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow
FAILING = f"{HERE / 'ray_tasks.py'}:failing_blobs"
MEASURED = ("step_losses", "final", "distance", "cosine", "initial_loss", "steps", "examples", "target_step")


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    fail_dir = tmp_path_factory.mktemp("ray-fail")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20, log_to_driver=False,
             runtime_env={"env_vars": {"BATCHSCOPE_FAIL_DIR": str(fail_dir)}})
    yield fail_dir
    ray.shutdown()


def _measured(records):
    return {r.key: {k: getattr(r, k) for k in MEASURED} for r in records}


def test_ray_and_local_workers_store_the_same_results(local_ray, tmp_path):
    p = plan(batch_sizes=(8, 16), lr_rules=("none",), steps=15, noise_steps=0)
    run_study(tmp_path / "local", p)
    summary = run_study(tmp_path / "ray", p, ray="")
    assert summary.ran == 2
    local = load_study(tmp_path / "local").records
    remote = load_study(tmp_path / "ray").records
    for key, want in _measured(local).items():
        got = _measured(remote)[key]
        assert got["step_losses"] == pytest.approx(want["step_losses"], rel=1e-5)
        assert got["final"] == pytest.approx(want["final"], rel=1e-5)
        assert (got["steps"], got["examples"], got["target_step"]) == (want["steps"], want["examples"],
                                                                         want["target_step"])
    assert all(r.device.startswith("cpu on ") for r in remote) and all(r.device == "cpu" for r in local)


def _stored(directory):
    with sqlite3.connect(directory / "study.db") as db:
        return {json.loads(r)["spec"]["batch_size"]: (s, json.loads(r))
                for s, r in db.execute("SELECT status, record FROM runs")}


def test_a_dead_worker_is_retried_and_a_raising_run_is_recorded_as_failed(local_ray, tmp_path):
    p = plan(task=FAILING, batch_sizes=(8, 16, 24), lr_rules=("none",), steps=10, noise_steps=0)
    summary = run_study(tmp_path, p, ray="")
    assert (summary.total, summary.ran, summary.failed) == (3, 2, 1)
    runs = _stored(tmp_path)
    assert runs[8][0] == "ok" and runs[8][1]["failures"] == []
    status, died = runs[16]                      # the worker died on the first attempt: retried, then ok
    assert status == "ok" and len(died["failures"]) == 1 and "Worker" in died["failures"][0]
    status, failed = runs[24]                    # raised on both attempts: failed, with both reasons
    assert status == "failed" and len(failed["failures"]) == 2
    assert all("RuntimeError: batch 24 fails on purpose" in f for f in failed["failures"]), failed["failures"]
    assert failed["message"] == failed["failures"][-1]
    done = load_study(tmp_path).records           # what a report reads: the finished runs only
    assert sorted(r.spec.batch_size for r in done) == [8, 16]


def test_sigkill_of_the_driver_then_resume_loses_and_repeats_no_finished_run(local_ray, tmp_path):
    import psutil

    p = plan(batch_sizes=(8, 16, 32, 64), lr_rules=("none",), steps=150, noise_steps=0)
    proc = child(f"""
        import ray
        from batchscope.study import StudyPlan, run_study
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20, log_to_driver=False)
        plan = StudyPlan.from_dict({p.to_dict()!r})
        run_study({str(tmp_path)!r}, plan, ray="", on_run=lambda rec, done, total: print("saved", rec.key, flush=True))
    """)
    started = []
    try:
        line = proc.stdout.readline()
        assert line.startswith("saved"), proc.stderr.read()
        started = psutil.Process(proc.pid).children(recursive=True)   # its Ray processes
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _, alive = psutil.wait_procs(started, timeout=20)           # Ray ends a dead driver's processes ...
        for leftover in alive:                                       # ... and what it did not end, we do
            leftover.kill()
    with sqlite3.connect(tmp_path / "study.db") as db:
        before = dict(db.execute("SELECT key, finished FROM runs WHERE status = 'ok'").fetchall())
    total = len(p.expand(batchscope.load_task(TASK)))
    assert 1 <= len(before) < total

    summary = run_study(tmp_path, resume=True, ray="")
    assert (summary.done_before, summary.ran) == (len(before), total - len(before))
    with sqlite3.connect(tmp_path / "study.db") as db:
        after = dict(db.execute("SELECT key, finished FROM runs WHERE status = 'ok'").fetchall())
    assert len(after) == total
    assert {k: after[k] for k in before} == before       # nothing finished before the kill ran again
    records = load_study(tmp_path).records
    assert sorted(r.key for r in records) == sorted(after)


def test_the_command_line_runs_a_study_on_ray(local_ray, tmp_path):
    from click.testing import CliRunner

    from batchscope.cli import cli

    res = CliRunner().invoke(cli, ["study", "--task", TASK, "--dir", str(tmp_path), "--ray", "--batch-sizes", "8,16",
                                   "--steps", "10", "--optimizers", "sgd", "--lr-rules", "none", "--noise-steps", "0",
                                   "--grad-norm-batches", "0", "--evals", "5", "--no-report", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["summary"]["ran"] == 2
    records = load_study(tmp_path).records
    assert all(r.status == "ok" and r.device.startswith("cpu on ") for r in records)


def test_the_command_line_says_why_runs_failed_and_exits_2(local_ray, tmp_path):
    """Every run raised twice: the summary, then one error line with the reason (issue 21: it exited 0)."""
    from click.testing import CliRunner

    from batchscope.cli import cli

    res = CliRunner().invoke(cli, ["study", "--task", FAILING, "--dir", str(tmp_path), "--ray", "--batch-sizes", "24",
                                   "--steps", "5", "--optimizers", "sgd", "--lr-rules", "none", "--noise-steps", "0",
                                   "--grad-norm-batches", "0", "--evals", "2"])
    assert res.exit_code == 2, res.output
    assert "failed (twice)" in res.stdout and "Traceback" not in res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "1 of 1 runs failed twice" in errors[0], res.stderr
    assert "RuntimeError: batch 24 fails on purpose" in errors[0], errors
