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
