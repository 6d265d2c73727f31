"""Batches of a map-style Dataset, fast for in-memory tensors, reproducible from a seed."""

from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch.utils.data import Dataset, TensorDataset, default_collate


def take(dataset: Dataset, index: torch.Tensor):
    """The examples at ``index`` as one collated batch (a tuple of tensors for a TensorDataset)."""
    if isinstance(dataset, TensorDataset):
        return tuple(t[index] for t in dataset.tensors)
    return default_collate([dataset[int(i)] for i in index])


def batch_indices(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless stream of index batches from ``generator`` (see :class:`IndexStream`)."""
    stream = IndexStream(n, batch_size, generator=generator)
    while True:
        yield stream.next()


class IndexStream:
    """Endless index batches of one size: a fresh seeded permutation each epoch, the tail dropped.

    Every step therefore sees exactly ``batch_size`` distinct examples, which the gradient
    estimators need. An object, not a generator, so a fork or a checkpoint can carry its position.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, generator: Optional[torch.Generator] = None):
        self.n, self.batch_size = n, batch_size
        self.generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        self.perm: Optional[torch.Tensor] = None
        self.k = 0                                  # batches taken from the current permutation

    def next(self) -> torch.Tensor:
        if self.perm is None or self.k == self.n // self.batch_size:
            self.perm, self.k = torch.randperm(self.n, generator=self.generator), 0
        b, self.k = self.batch_size, self.k + 1
        return self.perm[(self.k - 1) * b: self.k * b]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "perm": self.perm, "k": self.k}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.perm, self.k = state["perm"], int(state["k"])


def to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def split_batch(batch):
    """(inputs, targets) from a collated batch: the last element is the target."""
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        inputs = batch[0] if len(batch) == 2 else tuple(batch[:-1])
        return inputs, batch[-1]
    raise TypeError("each example must be a tuple (input, target) or (input..., target)")


def forward(model: torch.nn.Module, inputs):
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


def chunks(batch, size: int):
    """Split a collated batch into micro-batches of ``size`` along the first dimension."""
    if isinstance(batch, torch.Tensor):
        return list(batch.split(size))
    parts = [chunks(b, size) for b in batch]
    return [type(batch)(p[i] for p in parts) for i in range(len(parts[0]))]
