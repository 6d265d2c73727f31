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


def squared_norms(tensors: list[Optional[torch.Tensor]], device: torch.device) -> torch.Tensor:
    """(P,) float64 squared L2 norms; a missing gradient counts as zero."""
    out = [torch.linalg.vector_norm(t, dtype=torch.float32) if t is not None else torch.zeros((), device=device)
           for t in tensors]
    return torch.stack(out).double().square()


class GradNormCapture:
    """Sum over backward passes of each parameter's squared gradient norm (optionally transformed).

    ``transform(i, grad)`` may rescale a gradient before its norm is taken (the Adam preconditioner);
    returning ``None`` marks the step as unusable (no optimizer state yet).
    """

    def __init__(self, named_params: list[tuple[str, nn.Parameter]], transform: Optional[Transform] = None):
        self.names = [n for n, _ in named_params]
        self.params = [p for _, p in named_params]
        self.transform = transform
        self.device = self.params[0].device
        self._handles: list = []
        self._norms: list[torch.Tensor] = []   # one 0-d float32 tensor per hook call
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

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def _hook(self, i: int):
        def hook(grad: torch.Tensor) -> None:
            g = grad
            if self.transform is not None:
                g = self.transform(i, grad)
                if g is None:  # still count the pass, so the step is known to have happened
                    self._unusable = True
                    g = torch.zeros((), device=grad.device)
            self._norms.append(torch.linalg.vector_norm(g.detach(), dtype=torch.float32))
            self._index.append(i)
            return None  # observe only; the gradient flows on unchanged
        return hook

    def collect(self) -> tuple[torch.Tensor, int, bool]:
        """(per-parameter Σ over backward passes of |grad|², number of backward passes, usable) and reset.

        The pass count is the most hook calls any parameter received (a parameter unused by the
        graph gets none, and contributes zero, as it should).
        """
        p = len(self.params)
        sums = torch.zeros(p, dtype=torch.float64, device=self.device)
        passes = 0
        if self._norms:
            index = torch.tensor(self._index, device=self.device)
            sums.index_add_(0, index, torch.stack(self._norms).double().square())
            passes = int(torch.bincount(index.cpu(), minlength=p).max())
        usable = not self._unusable
        self._norms, self._index, self._unusable = [], [], False
        return sums, passes, usable


class AdamPreconditioner:
    """Divides a gradient elementwise by Adam's sqrt(v̂) + eps, v̂ the bias-corrected second moment.

    Measured this way, B_simple is the noise scale of the update direction Adam actually takes
    (the geometry its step is taken in, cf. McCandlish et al. 2018 §2.3 on preconditioned noise
    scales and Malladi et al. 2022 on Adam's batch-size scaling). Before Adam's first step there is
    no v̂; those steps are not measured.
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
