"""Red-vs-blue points in the plane: two interleaving noisy half-moons, generated with numpy."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from .base import Target, Task, accuracy


def two_moons(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points, half per class; class 1 is the lower moon shifted right (as in the classic set)."""
    n0 = n // 2
    n1 = n - n0
    t0 = rng.uniform(0, math.pi, n0)
    t1 = rng.uniform(0, math.pi, n1)
    upper = np.stack([np.cos(t0), np.sin(t0)], axis=1)
    lower = np.stack([1 - np.cos(t1), 0.5 - np.sin(t1)], axis=1)
    x = np.concatenate([upper, lower]) + rng.normal(0.0, noise, (n, 2))
    y = np.concatenate([np.zeros(n0, np.int64), np.ones(n1, np.int64)])
    order = rng.permutation(n)
    return x[order].astype(np.float32), y[order]


def make_model(hidden: int = 64) -> nn.Module:
    return nn.Sequential(
        nn.Linear(2, hidden), nn.Tanh(),
        nn.Linear(hidden, hidden), nn.Tanh(),
        nn.Linear(hidden, 2),
    )


def make_task(n_train: int = 4000, n_val: int = 1000, noise: float = 0.2, seed: int = 0) -> Task:
    rng = np.random.default_rng(seed)
    x, y = two_moons(n_train + n_val, noise, rng)
    t = lambda a: torch.from_numpy(a)  # noqa: E731
    return Task(
        name="dots",
        make_model=make_model,
        train_data=TensorDataset(t(x[:n_train]), t(y[:n_train])),
        val_data=TensorDataset(t(x[n_train:]), t(y[n_train:])),
        loss_fn=nn.functional.cross_entropy,
        metric_fn=accuracy,
        metric_name="accuracy",
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        reference_batch=32,
        target=Target("metric", 0.955, "val"),
        description=f"two noisy moons (noise {noise}): {n_train:,} train / {n_val:,} val points, 2 classes",
        model_description="MLP 2-64-64-2, tanh",
    )
