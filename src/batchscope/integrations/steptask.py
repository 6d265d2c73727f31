"""A framework's model + data seen as a batchscope :class:`~batchscope.Task`, without rewriting either.

batchscope's loop batches a dataset by index and calls ``loss_fn(model(inputs), target)``. A
Lightning module or a Hugging Face model instead computes its own loss from a batch that its own
collate function builds (dicts, padding). So the task's dataset holds only example indices, and
its "model" is a thin module that collates those examples with the framework's collate function,
moves them to the parameters' device and returns the framework's loss: every measurement
(memory ceiling, step time, noise scale, the measuring run) then runs the user's own code on the
user's own batches. The loss must be a mean over the batch, as batchscope's estimators assume.
"""

from __future__ import annotations

import copy
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data import to_device
from ..errors import ConfigError
from ..tasks import Target, Task

SPLITS = ("train", "val")


class IndexDataset(Dataset):
    """Example ``i`` of a split as ``(split, i, 0)``: what batchscope batches; the 0 is an unused target."""

    def __init__(self, data: Dataset, split: int):
        self.data, self.split = data, split

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        return self.split, i, 0


class StepLoss(nn.Module):
    """forward(split, index) -> the framework's loss on those examples, collated its way."""

    def __init__(self, model: nn.Module, loss_of: Callable, datasets: Sequence[Dataset], collate: Callable):
        super().__init__()
        self.model = model
        self._loss_of, self._datasets, self._collate = loss_of, list(datasets), collate

    def forward(self, split: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        data = self._datasets[int(split[0])]
        batch = self._collate([data[int(i)] for i in index.tolist()])
        device = next(self.model.parameters()).device
        return self._loss_of(self.model, to_device(batch, device))


def loss_itself(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The model already returns the (mean) loss."""
    return output


def optimizer_settings(optimizer: torch.optim.Optimizer) -> dict:
    """batchscope's optimizer name, lr, momentum and weight decay of a torch optimizer (first group)."""
    names = {torch.optim.SGD: "sgd", torch.optim.Adam: "adam", torch.optim.AdamW: "adamw"}
    name = names.get(type(optimizer))
    if name is None:
        raise ConfigError(f"find works with SGD, Adam or AdamW (its learning-rate rules are for those); got "
                          f"{type(optimizer).__name__}; pass optimizer=... to the task builder to say which rule fits")
    g = optimizer.param_groups[0]
    return {"optimizer": name, "lr": float(g["lr"]), "momentum": float(g.get("momentum", 0.0) or 0.0),
            "weight_decay": float(g.get("weight_decay", 0.0) or 0.0)}


def build_task(name: str, model: nn.Module, loss_of: Callable, train_data: Dataset, val_data: Optional[Dataset],
               collate: Callable, *, settings: dict, reference_batch: int, target: "float | Target",
               description: str) -> Task:
    """The Task whose model factory copies ``model`` as it is now (every run starts from these weights)."""
    initial = copy.deepcopy(model)
    datasets = [train_data] + ([val_data] if val_data is not None else [])
    if not isinstance(target, Target):
        target = Target("loss", float(target), "val" if val_data is not None else "train")
    return Task(name=name, make_model=lambda: StepLoss(copy.deepcopy(initial), loss_of, datasets, collate),
                train_data=IndexDataset(train_data, 0),
                val_data=None if val_data is None else IndexDataset(val_data, 1),
                loss_fn=loss_itself, target=target, reference_batch=reference_batch, description=description,
                model_description=f"{type(model).__name__} "
                                  f"({sum(p.numel() for p in model.parameters() if p.requires_grad):,} parameters)",
                **settings)
