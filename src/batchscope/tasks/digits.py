"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, shipped with the package)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..errors import TaskError
from .base import Target, Task, accuracy


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),   # (N, 16, 8, 8)
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),  # (N, 32, 8, 8)
        nn.MaxPool2d(2),                             # (N, 32, 4, 4)
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )


def make_task(val_fraction: float = 0.2, seed: int = 0) -> Task:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # an optional extra
        raise TaskError("the 'digits' task needs scikit-learn: pip install 'batchscope[digits]'") from e
    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8) in [0, 1]
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_val = int(round(val_fraction * len(y)))
    val, train = order[:n_val], order[n_val:]
    t = torch.from_numpy
    return Task(
        name="digits",
        make_model=make_model,
        train_data=TensorDataset(t(x[train]), t(y[train])),
        val_data=TensorDataset(t(x[val]), t(y[val])),
        loss_fn=nn.functional.cross_entropy,
        metric_fn=accuracy,
        metric_name="accuracy",
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
        reference_batch=32,
        target=Target("metric", 0.97, "val"),
        description=f"sklearn digits 8x8: {len(train):,} train / {n_val:,} val images, 10 classes",
        model_description="CNN conv16-conv32-pool-fc64-fc10",
    )
