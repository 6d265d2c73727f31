import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import batchscope
from batchscope.study import ResultStore, StudyError, StudyLock, StudyPlan, load_study, run_study

HERE = Path(__file__).parent
TASK = f"{HERE / 'study_tasks.py'}:blobs"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(batchscope.__file__).parents[1]), str(HERE)])}


def child(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-u", "-c", textwrap.dedent(code)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def plan(**kw) -> StudyPlan:
    base = dict(task=TASK, batch_sizes=(8, 16, 32), budget="steps", steps=40, optimizers=("sgd",),
                lr_rules=("none", "linear"), seeds=(0,), grad_norm_batches=0, evals_per_run=10,
                train_eval_examples=64)
    return StudyPlan(**{**base, **kw})


def test_lock_is_exclusive_and_dies_with_its_process(tmp_path):
    holder = child(f"""
        from batchscope.study import StudyLock
        lock = StudyLock({str(tmp_path)!r}).acquire()
        print("locked", flush=True)
        import time; time.sleep(60)
    """)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StudyError, match=rf"study directory {tmp_path} is in use by pid {holder.pid} since .*; "
                                             rf"wait for that study to finish"):
            StudyLock(tmp_path).acquire()
        with pytest.raises(StudyError, match="is in use by"):
            run_study(tmp_path, plan())
        assert not ResultStore.exists(tmp_path)   # refused before touching anything
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with StudyLock(tmp_path):                      # the kernel dropped the dead process's lock
        with pytest.raises(StudyError, match="in use by"):
            StudyLock(tmp_path).acquire()          # and it is exclusive within one process too
    StudyLock(tmp_path).acquire().release()


def test_store_round_trip(tmp_path):
    with ResultStore(tmp_path) as store:
        store.set_meta("plan", {"a": 1})
        store.save_run("k1", "ok", {"x": 1.5})
        store.save_run("k2", "diverged", {"x": None})
        store.save_run("k3", "error", {"x": 2})
        assert store.get_meta("plan") == {"a": 1} and store.get_meta("nope") is None
        assert store.keys() == {"k1", "k2"}         # errors are retried on resume
        assert [r["x"] for r in store.records()] == [1.5, None, 2]
        assert [r["x"] for r in store.records(statuses=("ok", "diverged"))] == [1.5, None]


def test_sigkill_loses_nothing_finished_and_resume_repeats_nothing(tmp_path):
    p = plan()
    proc = child(f"""
        from batchscope.study import StudyPlan, run_study
        plan = StudyPlan.from_dict({p.to_dict()!r})
        run_study({str(tmp_path)!r}, plan, on_run=lambda rec, done, total: print("saved", rec.key, flush=True))
    """)
    finished = []
    try:
        while len(finished) < 2:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            finished.append(line.split()[1])
        with pytest.raises(StudyError, match="is in use by"):   # a second study is refused while it runs
            run_study(tmp_path, resume=True)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with sqlite3.connect(tmp_path / "study.db") as db:
        before = dict(db.execute("SELECT key, finished FROM runs").fetchall())
    assert set(finished) <= set(before)           # every run reported finished was already on disk
    total = len(p.expand(batchscope.load_task(TASK)))
    assert len(before) < total

    summary = run_study(tmp_path, resume=True)
    assert (summary.total, summary.done_before, summary.ran) == (total, len(before), total - len(before))
    with sqlite3.connect(tmp_path / "study.db") as db:
        after = dict(db.execute("SELECT key, finished FROM runs").fetchall())
    assert len(after) == total
    assert {k: after[k] for k in before} == before  # nothing that was saved ran again
    again = run_study(tmp_path, resume=True)
    assert again.ran == 0
    saved = load_study(tmp_path)
    loaded_plan, facts, records = saved.plan, saved.facts, saved.records
    assert loaded_plan == p.resolved(batchscope.load_task(TASK)) and facts["name"] == "blobs"
    assert sorted(r.key for r in records) == sorted(s.key for s in loaded_plan.expand(batchscope.load_task(TASK)))


def test_new_study_in_a_used_directory_and_resume_of_nothing_are_refused(tmp_path):
    with pytest.raises(StudyError, match=f"nothing to resume in {tmp_path}: it holds no study.db"):
        run_study(tmp_path, resume=True)
    small = plan(batch_sizes=(8, 16), lr_rules=("none",), steps=20)
    run_study(tmp_path, small)
    with pytest.raises(StudyError, match=f"{tmp_path} already holds a study; continue it with "
                                         f"`batchscope study --resume {tmp_path}`"):
        run_study(tmp_path, small)


def test_parallel_workers_run_everything_once(tmp_path):
    p = plan(batch_sizes=(8, 16), lr_rules=("none",), steps=10)
    summary = run_study(tmp_path, p, workers=2)
    assert summary.ran == 2
    records = load_study(tmp_path).records
    assert sorted(r.spec.batch_size for r in records) == [8, 16]
    assert all(r.status == "ok" and len(r.step_losses) == 10 for r in records)


def test_a_task_object_runs_in_process_only(tmp_path):
    from .study_tasks import blobs

    from batchscope import ConfigError

    p = plan(task="blobs-object", batch_sizes=(8,), lr_rules=("none",), steps=5)
    with pytest.raises(ConfigError, match="a Task object cannot be sent to worker processes; pass the task by name"):
        run_study(tmp_path / "a", p, task=blobs(), workers=2)
    summary = run_study(tmp_path / "b", p, task=blobs())
    assert summary.ran == 1
    assert load_study(tmp_path / "b").records[0].steps == 5


@pytest.mark.parametrize("damage", [b"this is not a database at all" * 40, "truncate"])
def test_a_damaged_database_is_one_clear_error_on_report_and_resume(tmp_path, damage):
    run_study(tmp_path, plan(batch_sizes=(8,), lr_rules=("none",), steps=5))
    db = tmp_path / "study.db"
    if damage == "truncate":
        db.write_bytes(db.read_bytes()[:700])
    else:
        db.write_bytes(damage)
    for call in (lambda: load_study(tmp_path), lambda: run_study(tmp_path, resume=True)):
        with pytest.raises(StudyError, match=rf"{db} is damaged or not a study database .*; move it away"):
            call()


def test_a_run_with_a_damaged_record_is_reported_and_run_again_on_resume(tmp_path):
    run_study(tmp_path, plan(batch_sizes=(8, 16), lr_rules=("none",), steps=5))
    with sqlite3.connect(tmp_path / "study.db") as db:
        db.execute("UPDATE runs SET record = '{broken' WHERE key LIKE 'B8-%'")
    with ResultStore(tmp_path, readonly=True) as store:
        assert len(list(store.records())) == 1 and store.damaged == ["B8-sgd-none-x1-w0-s0"]
        assert store.keys() == {"B16-sgd-none-x1-w0-s0"}
    assert run_study(tmp_path, resume=True).ran == 1
    assert sorted(r.spec.batch_size for r in load_study(tmp_path).records) == [8, 16]


def test_reading_a_foreign_sqlite_file_changes_no_byte(tmp_path):
    db = tmp_path / "study.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE people (name TEXT)")
        c.execute("INSERT INTO people VALUES ('ada')")
    c.close()
    before = db.read_bytes()
    with pytest.raises(StudyError, match="is an SQLite database but not a batchscope study"):
        load_study(tmp_path)
    assert db.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["study.db"]
