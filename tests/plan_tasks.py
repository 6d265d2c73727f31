"""A task for the data-parallel timing tests, importable by path from spawned ranks (``plan_tasks.py:wide_mlp``)."""

import torch
from torch import nn
from torch.utils.data import TensorDataset

from batchscope import Target, Task

D, WIDTH = 32, 1024   # about 1.1 M parameters: a 4.3 MB gradient, milliseconds to all-reduce over loopback


def wide_mlp(n: int = 1024, seed: int = 0) -> Task:
    """Regression with a wide MLP: enough gradient bytes that the all-reduce is a visible part of a step."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g)
    y = x.sin().sum(-1, keepdim=True)
    return Task(name="wide_mlp", train_data=TensorDataset(x, y), val_data=TensorDataset(x[:128], y[:128]),
                make_model=lambda: nn.Sequential(nn.Linear(D, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU(),
                                                 nn.Linear(WIDTH, 1)),
                loss_fn=nn.functional.mse_loss, optimizer="sgd", lr=0.01, target=Target("loss", 0.1, "val"))
