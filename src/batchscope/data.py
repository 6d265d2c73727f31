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
        self.k = 0                                  # batches taken from the current permutation ...
        self.offset = 0                             # ... after this many examples of it (taken at another size)

    def next(self) -> torch.Tensor:
        b = self.batch_size
        if self.perm is None or self.offset + (self.k + 1) * b > self.n:
            self.perm, self.k, self.offset = torch.randperm(self.n, generator=self.generator), 0, 0
        start, self.k = self.offset + self.k * b, self.k + 1
        return self.perm[start: start + b]

    @property
    def position(self) -> int:
        """Examples of the current permutation taken so far."""
        return self.offset + self.k * self.batch_size

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "perm": self.perm, "k": self.k, "offset": self.offset,
                "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        """Go on from a saved position; a stream saved at another batch size goes on from the example where
        it stopped in its permutation (the rest of that epoch's examples come next, at this size)."""
        self.generator.set_state(state["generator"])
        self.perm, self.k, self.offset = state["perm"], int(state["k"]), int(state.get("offset", 0))
        saved = int(state.get("batch_size", self.batch_size))
        if saved != self.batch_size:
            self.k, self.offset = 0, self.offset + self.k * saved


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
