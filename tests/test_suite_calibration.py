"""The factors batchscope plans with are the ones the stored suite data give, not numbers typed in."""

import sys
from pathlib import Path

import pytest

from batchscope.plan import critical_batch as cb

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "suite"))

import calibrate  # noqa: E402


@pytest.mark.parametrize("kind,factor,spread,tasks", [
    ("window", cb.SUITE_FACTOR, cb.SUITE_LOG_SPREAD, cb.SUITE_TASKS),   # find: the measuring run's second half
    ("path", cb.LIVE_FACTOR, cb.LIVE_LOG_SPREAD, cb.SUITE_TASKS),       # the adaptive controller: the whole run
])
def test_constants_match_the_calibration_on_the_stored_suite(kind, factor, spread, tasks):
    _, truth, table = calibrate.load_table()
    got = calibrate.constants(truth, table, list(truth), kind)
    assert got is not None
    assert (round(got[0], 2), round(got[1], 2), got[2]) == (factor, spread, tasks)


def test_the_counts_quoted_in_prose_match_the_leave_one_task_out_check():
    _, truth, table = calibrate.load_table()
    window = calibrate.loto({n: table[n]["window"] for n in truth if "window" in table[n]}, truth)
    path = calibrate.loto({n: table[n]["path"] for n in truth if "path" in table[n]}, truth)
    assert (sum(r["covered"] for r in window.values()), len(window)) == (cb.SUITE_COVERED, cb.SUITE_TASKS)
    assert (sum(0.5 <= r["ratio"] <= 2 for r in path.values()), len(path)) == (cb.LIVE_WITHIN_2X, cb.SUITE_TASKS)
    # the prose is built from the constants, so it cannot drift from them
    assert f"{cb.SUITE_FACTOR:.2f} x B_simple" in cb.find_calibration()
    assert f"on {cb.SUITE_COVERED} of {cb.SUITE_TASKS} tasks" in cb.find_calibration()
    assert f"{cb.LIVE_FACTOR:.2f} x B_simple" in cb.live_calibration()
