"""Exact per-example gradients with torch.func (vmap over grad) and their first two moments.

Costs about one extra forward/backward per example batch, so it is a reference and a tool for small
models, not something to leave on in production. Batch-coupled layers (BatchNorm) make a single
example's gradient depend on the rest of its batch, so per-example gradients are not defined there.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from .stats import NoiseError


def refuse_batch_coupled(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm):
            raise NoiseError(
                f"the exact per-example estimator cannot measure a model with BatchNorm (layer "
                f"{name or '<root>'!r}: {type(module).__name__}): batch statistics couple the examples, so one "
                "example's gradient is not defined on its own; use the micro-batch estimator instead "
                "(method='microbatch', CLI --method microbatch)")


def _unsqueeze(x):
    return tuple(t.unsqueeze(0) for t in x) if isinstance(x, tuple) else x.unsqueeze(0)


def per_example_moments(model: nn.Module, loss_fn: Callable, inputs, target: torch.Tensor,
                        denominators: Optional[dict[str, torch.Tensor]] = None,
                        chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per trainable parameter: Σ_j |g_j|² and |ḡ|² over the n examples of one batch, and n.

    ``loss_fn(output, target)`` is the task's batch-mean loss, called on a batch of one.
    ``denominators`` (name -> tensor) divides each per-example gradient elementwise first (the
    Adam-preconditioned variant). Examples are processed ``chunk`` at a time, so memory holds
    chunk × parameters, never n × parameters. Returns float64 tensors of shape (P,).
    """
    refuse_batch_coupled(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def loss_one(ps, x, y):
        out = functional_call(model, {**ps, **frozen, **buffers}, (_unsqueeze(x),) if not isinstance(x, tuple)
                              else _unsqueeze(x))
        return loss_fn(out, y.unsqueeze(0))

    per_example_grad = vmap(grad(loss_one), in_dims=(None, 0, 0), randomness="different")
    n = target.shape[0]
    device = target.device
    sum_sq = torch.zeros(len(names), dtype=torch.float64, device=device)
    total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in params.items()}
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        x = tuple(t[start:stop] for t in inputs) if isinstance(inputs, tuple) else inputs[start:stop]
        grads = per_example_grad(params, x, target[start:stop])       # name -> (c, *shape)
        for i, k in enumerate(names):
            g = grads[k]
            if denominators is not None:
                g = g / denominators[k]
            sum_sq[i] += g.double().flatten(1).square().sum()
            total[k] += g.double().sum(0)
    mean_sq = torch.stack([(total[k] / n).square().sum() for k in names])
    return sum_sq, mean_sq, n
