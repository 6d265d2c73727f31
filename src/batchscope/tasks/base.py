"""The Task: everything batchscope needs to know about one training problem."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional

import torch
from torch import nn
from torch.utils.data import Dataset

OPTIMIZERS = ("sgd", "adam", "adamw")   # the one list of optimizer names (train.make_optimizer builds them)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MetricFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Target:
    """When a run counts as trained: ``kind`` ('loss' or 'metric') on ``split`` reaches ``value``.

    Loss targets are reached from above (loss <= value); metric targets from below
    (metric >= value), since every built-in metric is higher-is-better.
    """

    kind: Literal["loss", "metric"]
    value: float
    split: Literal["val", "train"] = "val"

    def reached(self, loss: float | None, metric: float | None) -> bool:
        x = loss if self.kind == "loss" else metric
        if x is None or not math.isfinite(x):
            return False
        return x <= self.value if self.kind == "loss" else x >= self.value

    def describe(self, metric_name: str | None = None) -> str:
        name = "loss" if self.kind == "loss" else (metric_name or "metric")
        op = "<=" if self.kind == "loss" else ">="
        return f"{self.split} {name} {op} {self.value:g}"


def accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of correct argmax predictions; works for (N, C) and (N, T, C) logits."""
    return (output.argmax(dim=-1) == target).float().mean()


@dataclass(frozen=True)
class Task:
    """A model factory, data, loss, metric, default optimizer and a target.

    ``loss_fn`` must return the *mean* over the batch: the training loop and every gradient
    estimator rely on that to turn micro-batch losses into the gradient of the full batch.
    """

    name: str
    make_model: Callable[[], nn.Module]
    train_data: Dataset
    loss_fn: LossFn
    target: Target
    val_data: Optional[Dataset] = None
    metric_fn: Optional[MetricFn] = None
    metric_name: Optional[str] = None
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    reference_batch: int = 32
    description: str = ""
    model_description: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return len(self.train_data)  # type: ignore[arg-type]

    @property
    def n_val(self) -> int:
        return 0 if self.val_data is None else len(self.val_data)  # type: ignore[arg-type]

    def parameter_count(self) -> int:
        model = self.make_model()
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    def facts(self) -> dict:
        """The numbers a user should see before trusting any advice about this task."""
        return {
            "name": self.name,
            "description": self.description,
            "model": self.model_description,
            "parameters": self.parameter_count(),
            "train_examples": self.n_train,
            "val_examples": self.n_val,
            "optimizer": self.optimizer,
            "lr": self.lr,
            "reference_batch": self.reference_batch,
            "target": self.target.describe(self.metric_name),
        }
