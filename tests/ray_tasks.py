"""A task whose runs fail on purpose inside Ray workers, for the retry tests (``ray_tasks.py:failing_blobs``).

Only where BATCHSCOPE_FAIL_DIR is set (the tests set it for Ray workers alone): a run at batch 16
kills its worker on the first attempt (a marker file remembers it) and succeeds on the retry; a
run at batch 24 raises on every attempt.
"""

import os
from dataclasses import replace
from pathlib import Path

from torch import nn

from batchscope.tasks import Task
from study_tasks import blobs


def _loss(output, target):
    where = os.environ.get("BATCHSCOPE_FAIL_DIR")
    if where and output.shape[0] == 16:
        marker = Path(where) / "died-once"
        if not marker.exists():
            marker.touch()
            os._exit(1)                                     # the worker process dies mid-run
    if where and output.shape[0] == 24:
        raise RuntimeError("batch 24 fails on purpose")
    return nn.functional.cross_entropy(output, target)


def failing_blobs() -> Task:
    return replace(blobs(), name="failing_blobs", loss_fn=_loss)
