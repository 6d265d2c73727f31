"""Curvature through Hessian-vector products: the Hessian-weighted noise scale B_noise = tr(HΣ) / (GᵀHG),
and the largest eigenvalue λ_max that bounds a stable SGD rate (2/λ_max for gradient descent).

McCandlish et al. 2018 (arXiv 1812.06162, eq. 2.6-2.9): for one SGD step of size ε on a locally
quadratic loss, the expected improvement is ε|G|² - ε²/2 (GᵀHG + tr(HΣ)/B); the best step and the
largest improvement depend on B through B_noise = tr(HΣ)/(GᵀHG). The simple noise scale
B_simple = tr(Σ)/|G|² equals it when H is a multiple of the identity; when the noise lies in flat
directions and the signal in sharp ones (or the reverse) the two can differ by a lot.

Both quadratic forms come from per-example gradients g_i (``torch.func.vmap`` over ``grad``) and
Hessian-vector products Hv (forward-over-reverse, ``jvp`` of ``grad``):
    tr(HΣ) = 1/(n-1) Σ_i (g_i - ḡ)ᵀ H (g_i - ḡ)      (one HVP per example)
    GᵀHG  ≈ ḡᵀHḡ - tr(HΣ)/n                          (the mean's own noise removed)
    |G|²  ≈ |ḡ|² - tr(Σ)/n,  tr(Σ) = 1/(n-1) Σ_i |g_i - ḡ|²
H is the Hessian of the mean loss over ``hessian_batch`` (by default the same examples).
The cost is min(n, P) + 1 Hessian-vector products, about 2-3 backward passes each: meant for a few points
of a run on small models, not every step. Models with batch-coupled layers (BatchNorm) have no
per-example gradient and are refused by :func:`per_example_gradients`' vmap.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap


@dataclass(frozen=True)
class HessianNoise:
    n: int                  # examples behind the per-example gradients
    g2: float               # |G|² (unbiased)
    trace_sigma: float      # tr(Σ)
    g_h_g: float            # GᵀHG (unbiased)
    trace_h_sigma: float    # tr(HΣ)

    @property
    def b_simple(self) -> float:
        return self.trace_sigma / self.g2 if self.g2 > 0 else math.inf

    @property
    def b_hessian(self) -> float:
        return self.trace_h_sigma / self.g_h_g if self.g_h_g > 0 else math.inf

    def to_dict(self) -> dict:
        return {**asdict(self), "b_simple": self.b_simple, "b_hessian": self.b_hessian}


def moments(grads: torch.Tensor, hvp: Callable[[torch.Tensor], torch.Tensor], by: str = "auto") -> HessianNoise:
    """The estimates from per-example gradients ``grads`` (n, P) and a batched ``hvp`` ((k, P) -> (k, P)).

    tr(HΣ) takes min(n, P) products: one per example (``by="examples"``), or, when the model has
    fewer parameters than there are examples, the P columns of H and tr(HΣ) = Σ_jk H_jk Σ_jk
    (``by="columns"``). Both are exact; pure arithmetic on what it is given, checked against closed forms.
    """
    n, p = grads.shape
    if n < 2:
        raise ValueError(f"the Hessian-weighted noise scale needs at least 2 examples, got {n}")
    mean = grads.mean(0)                                   # (P,)
    dev = grads - mean                                     # (n, P)
    if by == "columns" or (by == "auto" and p < n):
        h = hvp(torch.eye(p, dtype=grads.dtype))           # (P, P), symmetric
        tr_h_sigma = float((h * (dev.T @ dev)).sum()) / (n - 1)
    else:
        tr_h_sigma = float((dev * hvp(dev)).sum()) / (n - 1)   # (n, P) products, one per example
    tr_sigma = float((dev * dev).sum()) / (n - 1)
    mean_h_mean = float(mean @ hvp(mean[None])[0])
    return HessianNoise(n=n, g2=float(mean @ mean) - tr_sigma / n, trace_sigma=tr_sigma,
                        g_h_g=mean_h_mean - tr_h_sigma / n, trace_h_sigma=tr_h_sigma)


def _flat(tree: dict, batch_dims: int) -> torch.Tensor:
    return torch.cat([v.reshape(*v.shape[:batch_dims], -1) for v in tree.values()], dim=-1)


def _unflat(vec: torch.Tensor, like: dict) -> dict:
    out, i = {}, 0
    for k, v in like.items():
        out[k] = vec[..., i:i + v.numel()].reshape(*vec.shape[:-1], *v.shape)
        i += v.numel()
    return out


def hessian_noise_scale(model: nn.Module, loss_fn: Callable, inputs: torch.Tensor, targets: torch.Tensor, *,
                        hessian_batch: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                        chunk: int = 32) -> HessianNoise:
    """tr(HΣ), GᵀHG, tr(Σ), |G|² of ``model`` at its current weights on ``(inputs, targets)``.

    ``loss_fn(output, target)`` must return the batch mean (the Task contract). ``chunk`` bounds how
    many Hessian-vector products run at once (memory: chunk x parameters).
    """
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    frozen = {k: p.detach() for k, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())
    was_training = model.training
    model.eval()  # dropout off: the gradient of one fixed function

    def loss_at(p, x, y):
        return loss_fn(functional_call(model, ({**p, **frozen}, buffers), (x,)), y)

    def one(p, x, y):
        return loss_at(p, x[None], y[None])

    try:
        per_ex = vmap(grad(one), in_dims=(None, 0, 0))(params, inputs, targets)
        grads = _flat(per_ex, 1).double()                  # (n, P)
        hx, hy = hessian_batch if hessian_batch is not None else (inputs, targets)
        grad_fn = grad(lambda p: loss_at(p, hx, hy))
        dtype = next(iter(params.values())).dtype

        def hvp_one(v_flat):
            tangent = _unflat(v_flat.to(dtype), params)
            return _flat(jvp(grad_fn, (params,), (tangent,))[1], 0)

        batched = vmap(hvp_one)

        def hvp(vs: torch.Tensor) -> torch.Tensor:
            return torch.cat([batched(vs[i:i + chunk]).double() for i in range(0, len(vs), chunk)])

        return moments(grads, hvp)
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class Sharpness:
    """The largest Hessian eigenvalue λ_max found by power iteration, with how it was found."""
    value: float            # λ_max (the largest algebraic eigenvalue, per the mean loss)
    iterations: int         # Hessian-vector products spent
    converged: bool         # the last two estimates agreed within ``tol``
    rel_change: float       # |λ_k - λ_{k-1}| / |λ_k| at the end

    def to_dict(self) -> dict:
        return asdict(self)


def power_iteration(hvp: Callable[[torch.Tensor], torch.Tensor], dim: int, *, iters: int = 20, tol: float = 1e-3,
                    generator: Optional[torch.Generator] = None) -> Sharpness:
    """The largest algebraic eigenvalue of the symmetric operator ``hvp`` (a (dim,) vector to a (dim,) vector).

    Power iteration finds the eigenvalue of largest magnitude; when that one is negative (a saddle), a
    second pass on H - λI finds the top of the spectrum, λ_max = λ + μ. Pure arithmetic on ``hvp``:
    checked against ``torch.linalg.eigvalsh`` on known matrices.
    """
    if iters < 1:
        raise ValueError(f"power iteration needs at least one iteration, got {iters}")

    def run(op) -> tuple[float, int, bool, float]:
        v = torch.randn(dim, generator=generator, dtype=torch.float64)
        v /= v.norm()
        lam, change = 0.0, math.inf
        for k in range(1, iters + 1):
            w = op(v)
            new = float(v @ w)                       # the Rayleigh quotient at the unit vector v
            change = abs(new - lam) / max(abs(new), 1e-30)
            lam = new
            norm = float(w.norm())
            if norm == 0.0 or not math.isfinite(norm):
                return lam, k, norm == 0.0, change
            v = w / norm
            if k > 1 and change < tol:
                return lam, k, True, change
        return lam, iters, False, change

    lam, k, ok, change = run(lambda v: hvp(v).double())
    if lam < 0:
        mu, k2, ok, change = run(lambda v: hvp(v).double() - lam * v)
        lam, k = lam + mu, k + k2
    return Sharpness(value=lam, iterations=k, converged=ok, rel_change=change)


def sharpness(model: nn.Module, loss_fn: Callable, inputs: torch.Tensor, targets: torch.Tensor, *,
              iters: int = 20, tol: float = 1e-3, seed: int = 0) -> Sharpness:
    """λ_max of the Hessian of the mean loss of ``model`` on ``(inputs, targets)`` at its current weights.

    The products are double-backward ones through one graph kept for all iterations (any model,
    BatchNorm included, in the mode it is in); buffers (BatchNorm's running statistics) are restored,
    and the parameters' ``.grad`` is left as it was. Cost: one forward and backward, then ``iters``
    backward passes of the gradient.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    saved = {k: b.detach().clone() for k, b in model.named_buffers()}
    try:
        loss = loss_fn(model(inputs), targets)
        if not torch.isfinite(loss):
            raise ValueError(f"the loss is {float(loss)}: no curvature can be measured at these weights")
        grads = torch.autograd.grad(loss, params, create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads])

        def hvp(v: torch.Tensor) -> torch.Tensor:
            hv = torch.autograd.grad(flat, params, grad_outputs=v.to(flat.dtype), retain_graph=True)
            return torch.cat([h.reshape(-1) for h in hv]).detach()

        gen = torch.Generator().manual_seed(seed)
        return power_iteration(hvp, flat.numel(), iters=iters, tol=tol, generator=gen)
    finally:
        with torch.no_grad():
            for k, b in model.named_buffers():
                b.copy_(saved[k])


def sgd_stability_bound(lam_max: float, momentum: float = 0.0, nesterov: bool = False) -> float:
    """The largest rate at which (heavy-ball or Nesterov) SGD is stable on a quadratic of curvature λ_max.

    Gradient descent: 2/λ. Heavy ball with momentum μ: 2(1 + μ)/λ. Nesterov: 2(1 + μ)/((1 + 2μ)λ).
    A flat or concave top (λ_max <= 0) bounds nothing: inf.
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
    if lam_max <= 0 or not math.isfinite(lam_max):
        return math.inf
    if nesterov:
        return 2.0 * (1.0 + momentum) / ((1.0 + 2.0 * momentum) * lam_max)
    return 2.0 * (1.0 + momentum) / lam_max


# The share of the stability bound that `find` and the adaptive controller let a rate rule reach: the
# edge less a margin for its estimate (power iteration approaches λ_max from below and stops at 0.1%
# agreement; λ_max on 512 examples is a sample of the whole set's), not half of it (docs/design.md,
# "Checking the recommendation": why). One constant for both.
STABILITY_FRACTION = 0.9


SHARPNESS_ITERS = 20      # Hessian-vector products at most (find and the adaptive controller alike)
SHARPNESS_TOL = 1e-3      # relative change between two estimates that counts as converged


class _TaskForward(nn.Module):
    """The task's model called the task's way (tuple inputs unpacked), for :func:`sharpness`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs):
        from ..data import forward

        return forward(self.model, inputs)


def _math_attention():
    """Attention by its plain formula while λ_max is measured: the fused kernels have no double backward."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # an older torch
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


def task_sharpness(task, model: nn.Module, indices: torch.Tensor, device: torch.device, seed: int = 0) -> Sharpness:
    """λ_max of ``task``'s loss at ``model``'s weights on the training examples ``indices``.

    The run is left as it was: the global RNG (dropout in the probe) is forked, buffers and ``.grad``
    left as :func:`sharpness` leaves them. Raises ValueError (a non-finite loss) or RuntimeError (an
    operation without a double backward).
    """
    from ..data import split_batch, take, to_device
    from ..train.taskcalls import loss_of

    inputs, targets = split_batch(to_device(take(task.train_data, indices), device))
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), _math_attention():
        return sharpness(_TaskForward(model), lambda out, y: loss_of(task, out, y), inputs, targets,
                         iters=SHARPNESS_ITERS, tol=SHARPNESS_TOL, seed=seed)


def sgd_settings(optimizer: torch.optim.Optimizer) -> dict:
    """Momentum, Nesterov and weight decay of the first parameter group (what the bound depends on)."""
    g = optimizer.param_groups[0]
    return {"momentum": float(g.get("momentum", 0.0)), "nesterov": bool(g.get("nesterov", False)),
            "weight_decay": float(g.get("weight_decay", 0.0))}
