"""A task whose runs fail on purpose inside Ray workers, for the retry tests (``ray_tasks.py:failing_blobs``).

Only where BATCHSCOPE_FAIL_DIR is set (the tests set it for Ray workers alone): a run at batch 16
kills its worker on the first attempt (a marker file remembers it) and succeeds on the retry; a
run at batch 24 raises on every attempt.
"""

import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from batchscope import Target, Task
from batchscope.tasks import accuracy


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


def failing_blobs(n: int = 512, d: int = 4) -> Task:
    """study_tasks.blobs with the failing loss (repeated here: a task file is imported on its own)."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, d, generator=g) + 1.5 * (2 * y[:, None].float() - 1)
    cut = n * 3 // 4
    return Task(name="failing_blobs", make_model=lambda: nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, 2)),
                train_data=TensorDataset(x[:cut], y[:cut]), val_data=TensorDataset(x[cut:], y[cut:]),
                loss_fn=_loss, metric_fn=accuracy, metric_name="accuracy", optimizer="sgd", lr=0.05,
                target=Target("metric", 0.9, "val"))
