"""Recognising an out-of-memory failure.

By type first: ``torch.OutOfMemoryError`` (``torch.cuda.OutOfMemoryError`` is the same class) and
Python's ``MemoryError``. Some libraries still raise a plain ``RuntimeError`` when an allocation
fails (cuBLAS/cuDNN workspaces, the CPU allocator), so the message fallback lives here, in one place,
with its own tests.
"""

from __future__ import annotations

import torch

from ..errors import TaskError

_OOM_TYPES: tuple[type, ...] = tuple(
    t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None), MemoryError)
    if t is not None
)

# Allocation failures that surface as RuntimeError with only the message to go on.
_OOM_MESSAGES = (
    "out of memory",                          # CUDA caching allocator, HIP, MPS
    "cublas_status_alloc_failed",             # cuBLAS workspace
    "cudnn_status_alloc_failed",
    "defaultcpuallocator: can't allocate memory",
    "not enough memory",                      # CPU allocator on Windows
)


def is_out_of_memory(error: BaseException) -> bool:
    """True when ``error`` means an allocation failed, so a smaller batch may fit."""
    if isinstance(error, _OOM_TYPES):
        return True
    if isinstance(error, TaskError) and isinstance(error.__cause__, Exception):
        return is_out_of_memory(error.__cause__)  # a failure in the task's code, named as such by train
    if isinstance(error, RuntimeError):
        text = str(error).lower()
        return any(m in text for m in _OOM_MESSAGES)
    return False
