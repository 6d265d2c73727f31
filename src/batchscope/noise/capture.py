"""PyTorch glue: squared gradient norms taken while autograd delivers them, and Adam's preconditioner.

A tensor hook on a leaf parameter receives the gradient of *one* backward pass, before it is added
into ``.grad``. Its squared norm is exactly what the micro-batch estimator needs for the small batch,
and summing squared norms over hook calls gives Σ_i |g_i|² over micro-batches without ever knowing
where one micro-batch ends: each parameter's hook fires once per backward, and Σ_i Σ_p = Σ_p Σ_i.
No extra forward or backward pass and no copy of the gradients: one reduction per parameter and
micro-batch, kept on the device until the step ends.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from ..errors import ConfigError
from .stats import NoiseError

Transform = Callable[[int, torch.Tensor], Optional[torch.Tensor]]


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise NoiseError(f"the model {type(model).__name__} has no trainable parameters, so it has no gradient "
                         "to measure; give it parameters with requires_grad=True")
    return named


class GradNormCapture:
    """Sum over backward passes of each parameter's squared gradient norm (optionally transformed).

    ``transform(i, grad)`` may rescale a gradient before its norm is taken (the Adam preconditioner);
    returning ``None`` marks the step as unusable (no optimizer state yet). The hooks are attached
    only for the steps being measured (:meth:`attach` / :meth:`detach`): a tensor hook is a call into
    Python per parameter and backward pass, which on a small model costs more than the norm itself.
    """

    def __init__(self, named_params: list[tuple[str, nn.Parameter]], transform: Optional[Transform] = None,
                 limit: Optional[int] = None):
        self.names = [n for n, _ in named_params]
        self.params = [p for _, p in named_params]
        self.transform = transform
        self.limit = limit           # take norms of at most this many backward passes per step
        self.device = self.params[0].device
        self._handles: list = []
        self._calls = [0] * len(self.params)   # backward passes seen per parameter this step
        self._norms: list[torch.Tensor] = []   # one 0-d float32 tensor per measured hook call
        self._index: list[int] = []            # which parameter each norm belongs to
        self._unusable = False

    def attach(self) -> "GradNormCapture":
        if not self._handles:
            self._handles = [p.register_hook(self._hook(i)) for i, p in enumerate(self.params)]
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def mark_unusable(self) -> None:
        """This step cannot be measured (for example: no optimizer second moments yet)."""
        self._unusable = True

    @property
    def unusable(self) -> bool:
        return self._unusable

    def _hook(self, i: int):
        norms, index = self._norms, self._index

        if self.transform is None and self.limit is None:
            def fast(grad: torch.Tensor) -> None:
                # The common case, kept to one reduction and two appends: it runs P times per micro-batch.
                norms.append(torch.linalg.vector_norm(grad.detach(), dtype=torch.float32))
                index.append(i)
                return None
            return fast

        def hook(grad: torch.Tensor) -> None:
            k = self._calls[i]
            self._calls[i] = k + 1
            if self.limit is not None and k >= self.limit:
                return None
            g = grad.detach()
            if self.transform is not None:
                g = self.transform(i, g)
                if g is None:
                    self._unusable = True
                    return None
            norms.append(torch.linalg.vector_norm(g, dtype=torch.float32))
            index.append(i)
            return None  # observe only; the gradient flows on unchanged
        return hook

    def collect(self, extra: list[Optional[torch.Tensor]] = ()) -> tuple[list[float], list[float], int, int, bool]:
        """Drain the step: (per-parameter Σ over measured passes of |grad|², squared norms of ``extra``,
        passes, measured passes, usable).

        ``extra`` (the accumulated gradients) is reduced in the same device sync as the hook norms.
        The pass count is the most hook calls any parameter received (a parameter unused by the
        graph gets none, and contributes zero, as it should).
        """
        calls = list(self._calls)
        if self.transform is None and self.limit is None:  # the fast hook does not count its calls
            for i in self._index:
                calls[i] += 1
        passes = max(calls)
        measured = passes if self.limit is None else min(passes, self.limit)
        extra_present = [t for t in extra if t is not None]
        norms = self._norms + [torch.linalg.vector_norm(t, dtype=torch.float32) for t in extra_present]
        values = torch.stack(norms).double().square().tolist() if norms else []
        sums = [0.0] * len(self.params)
        for i, v in zip(self._index, values):
            sums[i] += v
        rest = iter(values[len(self._norms):])
        extra_sq = [next(rest) if t is not None else 0.0 for t in extra]
        usable = not self._unusable
        # Cleared in place: the hooks hold references to these lists.
        self._norms.clear()
        self._index.clear()
        self._unusable = False
        self._calls = [0] * len(self.params)
        return sums, extra_sq, passes, measured, usable


class AdamPreconditioner:
    """Divides a gradient elementwise by Adam's sqrt(v̂) + eps, v̂ the bias-corrected second moment.

    Measured this way, B_simple is the noise scale of the direction Adam actually steps in: with a
    preconditioner P the step is P·g, so signal and noise are |P·G|² and tr(P Σ P) (the
    preconditioned form of McCandlish et al. 2018's B_simple). It can be larger or smaller than the
    raw B_simple, and is noisier. v̂ is Adam's state before this step's update,
    so the preconditioner is fixed while the step's gradients are measured. Before Adam's first step
    there is no v̂; those steps are not measured (counted in ``unmeasured``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, params: list[nn.Parameter]):
        groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        missing = [i for i, p in enumerate(params) if id(p) not in groups]
        if missing:
            raise ConfigError(f"{len(missing)} trainable parameters are not in the optimizer given for "
                              "preconditioning; pass the optimizer that trains this model")
        if not all("betas" in groups[id(p)] for p in params):
            raise ConfigError(f"preconditioned=True needs an Adam-type optimizer (with betas and exp_avg_sq); "
                              f"got {type(optimizer).__name__}; use Adam/AdamW or preconditioned=False")
        self.optimizer = optimizer
        self.params = params
        self._groups = [groups[id(p)] for p in params]

    def denominator(self, i: int) -> Optional[torch.Tensor]:
        state = self.optimizer.state.get(self.params[i], {})
        v = state.get("max_exp_avg_sq") if self._groups[i].get("amsgrad") else state.get("exp_avg_sq")
        if v is None:
            return None
        step = float(state["step"])
        beta2 = self._groups[i]["betas"][1]
        return (v / (1.0 - beta2 ** step)).sqrt_().add_(self._groups[i]["eps"])

    def __call__(self, i: int, grad: torch.Tensor) -> Optional[torch.Tensor]:
        d = self.denominator(i)
        return None if d is None else grad / d
