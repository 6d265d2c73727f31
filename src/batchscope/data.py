"""Batches of a map-style Dataset, fast for in-memory tensors, reproducible from a seed."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Dataset, TensorDataset, default_collate


def take(dataset: Dataset, index: torch.Tensor):
    """The examples at ``index`` as one collated batch (a tuple of tensors for a TensorDataset)."""
    if isinstance(dataset, TensorDataset):
        return tuple(t[index] for t in dataset.tensors)
    return default_collate([dataset[int(i)] for i in index])


def batch_indices(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless stream of index batches: a fresh permutation each epoch, the last partial batch dropped.

    Every step therefore sees exactly ``batch_size`` distinct examples, which the gradient
    estimators need (their formulas assume a fixed batch size).
    """
    per_epoch = n // batch_size
    while True:
        perm = torch.randperm(n, generator=generator)
        for k in range(per_epoch):
            yield perm[k * batch_size : (k + 1) * batch_size]


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
