"""Which optimizer steps the two-batch noise estimator can use, from the micro-batches each one saw.

The micro-batch estimator (McCandlish et al. 2018, appendix A.1) compares the squared norms of
equal-sized micro-batch gradients with the squared norm of their mean. A framework's loop does not
always give it that: the last batch of an epoch is usually smaller, and Lightning ends an epoch
with a shorter accumulation window whose loss is still divided by the full count. Such steps are
left out (their captured norms dropped) rather than measured with the wrong batch sizes.
"""

from __future__ import annotations

from typing import Any, Optional

import torch


def leading_size(batch: Any) -> Optional[int]:
    """Number of examples in a collated batch: the first dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() > 0 else None
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            n = leading_size(item)
            if n is not None:
                return n
    return None


def measurable(sizes: list[Optional[int]], expected: Optional[int], world: int = 1) -> bool:
    """True when a step's micro-batches suit the two-batch estimator.

    sizes: examples in each micro-batch of the step (None where unknown); expected: the number of
    micro-batches the loop normalised the loss by (None: the loop divides by the actual count);
    world: data-parallel processes (each contributes its own micro-batches).
    """
    if not sizes or any(s is None for s in sizes) or len(set(sizes)) != 1:
        return False
    if expected is not None and len(sizes) != expected:
        return False
    return len(sizes) * world >= 2
