"""Tiny tasks for the study tests, importable by path from a child process (``study_tasks.py:blobs``)."""

import torch
from torch import nn
from torch.utils.data import TensorDataset

from batchscope import Target, Task
from batchscope.tasks import accuracy


def blobs(n: int = 512, d: int = 4, seed: int = 0) -> Task:
    """Two Gaussian blobs: a classification task that trains in milliseconds."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, d, generator=g) + 1.5 * (2 * y[:, None].float() - 1)
    cut = n * 3 // 4
    return Task(name="blobs", make_model=lambda: nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, 2)),
                train_data=TensorDataset(x[:cut], y[:cut]), val_data=TensorDataset(x[cut:], y[cut:]),
                loss_fn=nn.functional.cross_entropy, metric_fn=accuracy, metric_name="accuracy",
                optimizer="sgd", lr=0.05, target=Target("metric", 0.9, "val"))
