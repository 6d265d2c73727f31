"""MNIST-1D (Greydanus 2020): 1-D signals of ten digit templates, made by the `mnist1d` generator."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from .base import Target, Task, accuracy

N_TOTAL = 12_500  # 10,000 train + 2,500 validation
LENGTH = 40


@lru_cache(maxsize=2)
def _arrays(n_total: int, seed: int):
    # The generator is deterministic given its seed; made in memory, never downloaded.
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = n_total
    args.train_split = 0.8
    args.seed = seed
    data = make_dataset(args)
    return (
        np.asarray(data["x"], dtype=np.float32),
        np.asarray(data["y"], dtype=np.int64),
        np.asarray(data["x_test"], dtype=np.float32),
        np.asarray(data["y_test"], dtype=np.int64),
    )


def make_model(hidden: int = 256) -> nn.Module:
    return nn.Sequential(
        nn.Linear(LENGTH, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, 10),
    )


def make_task(n_total: int = N_TOTAL, seed: int = 42) -> Task:
    x, y, xv, yv = _arrays(n_total, seed)
    return Task(
        name="mnist1d",
        make_model=make_model,
        train_data=TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
        val_data=TensorDataset(torch.from_numpy(xv), torch.from_numpy(yv)),
        loss_fn=nn.functional.cross_entropy,
        metric_fn=accuracy,
        metric_name="accuracy",
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
        reference_batch=64,
        target=Target("metric", 0.80, "val"),
        description=f"MNIST-1D: {len(y):,} train / {len(yv):,} val signals of length {LENGTH}, 10 classes",
        model_description="MLP 40-256-256-10, ReLU",
    )
