"""NoiseScaleMonitor: the gradient noise scale of a run in progress, in batchscope's loop or yours.

In your own loop (gradient accumulation over micro-batches of 16, loss divided by the number of
micro-batches as usual)::

    monitor = NoiseScaleMonitor(model, micro_batch=16)
    ...                         # for each micro-batch: (loss / accumulation).backward()
    monitor.update(loss)        # after the backward passes (and scaler.unscale_), before optimizer.step()

and ``monitor.estimate()`` whenever you want the number. Under ``torch.distributed`` (DDP started by
torchrun) the same two lines measure the data-parallel estimate: each rank's micro-batches are the
small batches and the all-reduced gradient the big one. Without accumulation on one process use
``method="exact"`` and pass the batch: ``monitor.update(loss, batch=(x, y))``. In batchscope's loop,
pass it as a callback: ``train(task, cfg, [NoiseScaleMonitor()])``.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn

from ..data import split_batch, take, to_device
from ..errors import ConfigError
from ..train import Callback, TrainContext
from .capture import AdamPreconditioner, GradNormCapture, squared_norms, trainable_parameters
from .exact import per_example_moments, refuse_batch_coupled
from .stats import (DEFAULT_DECAY, DEFAULT_LEVEL, METHODS, NoiseError, NoiseEstimate, NoisePoint, RawSample,
                    WeightedMoments, per_example, ratio, two_batch)


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    # gloo reduces float64 on the CPU; NCCL wants the tensor on the rank's device, where it already is.
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


class NoiseScaleMonitor(Callback):
    """Measures |G|², tr(Σ) and B_simple = tr(Σ)/|G|² at every optimizer step.

    method:
      ``"microbatch"``   micro-batches inside gradient accumulation are the small batch, the
                         accumulated batch the big one; free (norms taken during backward).
      ``"dataparallel"`` the same across ranks: each rank's micro-batch small, the all-reduced
                         gradient big (chosen automatically when torch.distributed runs >1 process).
      ``"exact"``        per-example gradients with torch.func on a batch (extra compute).
    decay: EMA decay for the smoothed |G|², tr(Σ) (kept separately, then divided; 0.95 averages
        about the last 40 steps). level: coverage of the interval for B_simple (Fieller, 90%).
    preconditioned: measure the gradient divided by Adam's sqrt(v̂)+eps (needs ``optimizer``).
    grad_is_mean: ``.grad`` after accumulation holds the batch *mean* (each micro-batch loss divided
        by the number of micro-batches, batchscope's and the usual recipe); False if it holds the sum.
    scaler: a ``torch.amp.GradScaler`` in your loop, so micro-batch norms are divided by scale².
        Call ``scaler.unscale_(optimizer)`` before ``update``.
    per_layer: also keep |G|², tr(Σ), B_simple per parameter tensor.
    every / exact_examples: the exact method inside ``train`` measures every ``every`` steps on a
        fresh batch of ``exact_examples`` (default: the training batch size) drawn by the monitor.

    After ``update``: ``history`` (smoothed :class:`NoisePoint` per measured step), ``raw``
    (unsmoothed per-step :class:`RawSample`), ``skipped`` (non-finite steps, never averaged in).
    """

    def __init__(self, model: Optional[nn.Module] = None, *, micro_batch: Optional[int] = None,
                 method: str = "microbatch", decay: float = DEFAULT_DECAY, level: float = DEFAULT_LEVEL,
                 optimizer: Optional[torch.optim.Optimizer] = None, preconditioned: bool = False,
                 grad_is_mean: bool = True, scaler=None, loss_fn: Optional[Callable] = None,
                 per_layer: bool = False, every: int = 1, exact_examples: Optional[int] = None, seed: int = 0):
        if method not in METHODS:
            raise ConfigError(f"The 'method' parameter must be one of {', '.join(METHODS)}. Got {method!r} instead.")
        if not 0 < level < 1:
            raise ConfigError(f"The 'level' parameter must be in (0, 1). Got {level!r} instead.")
        if micro_batch is not None and (isinstance(micro_batch, bool) or not isinstance(micro_batch, int)
                                        or micro_batch < 1):
            raise ConfigError(f"The 'micro_batch' parameter must be a positive integer. Got {micro_batch!r} instead.")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"The 'every' parameter must be a positive integer. Got {every!r} instead.")
        self.method = method
        self.micro_batch = micro_batch
        self.level = level
        self.preconditioned = preconditioned
        self.grad_is_mean = grad_is_mean
        self.scaler = scaler
        self.loss_fn = loss_fn
        self.per_layer = per_layer
        self.every = every
        self.exact_examples = exact_examples
        self.seed = seed
        self.moments = WeightedMoments(decay)
        self.history: list[NoisePoint] = []
        self.raw: list[RawSample] = []
        self.skipped = 0          # steps with a non-finite gradient norm
        self.unmeasured = 0       # preconditioned steps before the optimizer had second moments
        self.sizes: tuple[int, int] = (0, 0)
        self._layer_sums: Optional[torch.Tensor] = None   # (2, P): EMA sums of per-parameter trace, g2
        self._layer_w = 0.0
        self._steps = 0
        self._model: Optional[nn.Module] = None
        self._optimizer = optimizer
        self._capture: Optional[GradNormCapture] = None
        self._precond: Optional[AdamPreconditioner] = None
        # batchscope-loop state
        self._ctx: Optional[TrainContext] = None
        self._step_loss = 0.0
        self._scaled_big: Optional[torch.Tensor] = None
        self._generator: Optional[torch.Generator] = None
        if model is not None:
            self.bind(model, optimizer)

    # ---- set-up -------------------------------------------------------------------------------

    def bind(self, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None) -> "NoiseScaleMonitor":
        """Attach to ``model`` (hooks for the micro-batch and data-parallel methods)."""
        if self._capture is not None:
            self._capture.detach()
        named = trainable_parameters(model)
        self._model = model
        self._names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self._optimizer = optimizer or self._optimizer
        self._precond = None
        if self.preconditioned:
            if self._optimizer is None:
                raise ConfigError("preconditioned=True needs the optimizer: NoiseScaleMonitor(model, optimizer=opt, "
                                  "preconditioned=True)")
            self._precond = AdamPreconditioner(self._optimizer, self._params)
        if self.method == "exact":
            refuse_batch_coupled(model)
        else:
            self._capture = GradNormCapture(named, self._precond).attach()
        return self

    def close(self) -> None:
        """Remove the hooks (the monitor keeps its history)."""
        if self._capture is not None:
            self._capture.detach()

    # ---- results ------------------------------------------------------------------------------

    @property
    def method_name(self) -> str:
        if self.method == "exact":
            return "exact"
        return "dataparallel" if _world_size() > 1 else "microbatch"

    def estimate(self) -> NoiseEstimate:
        """The current smoothed B_simple with its interval."""
        layers = None
        if self.per_layer and self._layer_sums is not None:
            t, g = (self._layer_sums / self._layer_w).tolist()
            layers = {n: {"g2": gi, "trace": ti, "b_simple": ratio(ti, gi)} for n, ti, gi in zip(self._names, t, g)}
        return self.moments.estimate(self.method_name, self.level, skipped=self.skipped,
                                     batch_small=self.sizes[0], batch_big=self.sizes[1],
                                     preconditioned=self.preconditioned, layers=layers)

    # ---- the user-loop entry point ------------------------------------------------------------

    def update(self, loss=None, *, batch=None, step: Optional[int] = None) -> Optional[NoisePoint]:
        """Record one optimizer step. Call after its backward pass(es), before ``optimizer.step()``.

        Returns the smoothed point, or None if the step was skipped (non-finite gradients, or no
        optimizer second moments yet for the preconditioned variant).
        """
        if self._model is None:
            raise NoiseError("the monitor is not attached to a model: NoiseScaleMonitor(model, ...) or "
                             "monitor.bind(model) before update()")
        self._steps += 1
        step = self._steps if step is None else step
        loss_value = float(loss.detach().float()) if isinstance(loss, torch.Tensor) else (
            math.nan if loss is None else float(loss))
        if self.method == "exact":
            if batch is None:
                raise ConfigError("method='exact' needs the batch: monitor.update(loss, batch=(inputs, target))")
            per_param = self._exact(batch)
        else:
            per_param = self._two_batch()
        if per_param is None:
            return None
        g2_p, tr_p = per_param
        g2, trace = float(g2_p.sum()), float(tr_p.sum())
        if not (math.isfinite(g2) and math.isfinite(trace)):
            self.skipped += 1
            return None
        self.raw.append(RawSample(step, loss_value, g2, trace))
        self.moments.update(trace, g2, loss_value)
        if self.per_layer:
            d = self.moments.decay
            pair = torch.stack([tr_p, g2_p]).cpu()
            self._layer_sums = pair if self._layer_sums is None else d * self._layer_sums + pair
            self._layer_w = d * self._layer_w + 1.0
        est = self.estimate()
        point = NoisePoint(step, self.moments.means()[2], est.g2, est.trace, est.b_simple, est.low, est.high,
                           est.n_samples)
        self.history.append(point)
        return point

    def _two_batch(self) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        assert self._capture is not None
        small_sums, passes, usable = self._capture.collect()
        world = _world_size()
        if self.method == "dataparallel" and world < 2:
            raise NoiseError("method='dataparallel' needs torch.distributed initialised with at least 2 processes "
                             "(torchrun --nproc-per-node 2 ...); on one process use method='microbatch'")
        if passes == 0:
            raise NoiseError("no backward pass reached the model since the last update(); call update() after "
                             "loss.backward() and before optimizer.zero_grad()")
        m = self.micro_batch
        if m is None:
            raise ConfigError("the micro-batch estimator needs the micro-batch size: "
                              "NoiseScaleMonitor(model, micro_batch=m)")
        if world > 1:
            counts = _all_reduce_sum(torch.tensor([float(passes), 1.0 if usable else 0.0], dtype=torch.float64,
                                                  device=small_sums.device))
            if int(counts[0]) != passes * world:
                raise NoiseError(f"ranks ran different numbers of backward passes this step (this rank {passes}, "
                                 f"all ranks {int(counts[0])}); every rank must accumulate the same micro-batches")
            usable = int(counts[1]) == world
        big_b = m * passes * world
        if big_b < 2 or passes * world < 2:
            raise NoiseError(
                f"the {self.method_name} estimator needs two batch sizes, but this step had one backward pass of "
                f"{m} example(s) on {world} process(es); use gradient accumulation with at least 2 micro-batches "
                "per step (a micro-batch smaller than the batch), more processes, or method='exact'")
        grads = [p.grad for p in self._params]
        if self._precond is not None:
            denoms = [self._precond.denominator(i) for i in range(len(self._params))]
            usable = usable and all(d is not None for d in denoms)
            if usable:
                grads = [None if g is None else g / d for g, d in zip(grads, denoms)]
        if not usable:
            if world > 1:  # keep the collective calls in step on every rank
                _all_reduce_sum(small_sums)
            self.unmeasured += 1
            return None
        big = squared_norms(grads, self._capture.device)                   # (P,) |g_B|² per parameter
        # Hook gradients are in the loss's units: times 1/accumulation, times the AMP loss scale.
        unit = float(passes) ** 2 if self.grad_is_mean else 1.0
        if not self.grad_is_mean:
            big = big / float(passes) ** 2
        unit /= self._loss_scale_squared(big)
        small = small_sums * unit / passes                                  # mean over micro-batches of |g_m|²
        if world > 1:
            small = _all_reduce_sum(small) / world
        self.sizes = (m, big_b)
        g2, trace = two_batch(small, big, m, big_b)
        return g2, trace

    def _loss_scale_squared(self, big: torch.Tensor) -> float:
        if self.scaler is not None and self.scaler.is_enabled():
            return float(self.scaler.get_scale()) ** 2
        if self._scaled_big is not None:
            # Inside batchscope's loop under AMP: the gradients were unscaled in place after the last
            # micro-batch; the ratio of their squared norms before and after is scale².
            before, after = float(self._scaled_big.sum()), float(big.sum())
            self._scaled_big = None
            return before / after if after > 0 and math.isfinite(before) else math.nan
        return 1.0

    def _exact(self, batch) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        if self.loss_fn is None:
            raise ConfigError("method='exact' needs the loss: NoiseScaleMonitor(model, method='exact', loss_fn=...)")
        inputs, target = split_batch(batch)
        denoms = None
        if self._precond is not None:
            ds = [self._precond.denominator(i) for i in range(len(self._params))]
            if any(d is None for d in ds):
                self.unmeasured += 1
                return None
            denoms = dict(zip(self._names, ds))
        sum_sq, mean_sq, n = per_example_moments(self._model, self.loss_fn, inputs, target, denoms)
        if n < 2:
            raise NoiseError(f"the exact estimator needs a batch of at least 2 examples to estimate a variance; "
                             f"got {n}")
        self.sizes = (1, n)
        g2_p = torch.empty_like(sum_sq)
        tr_p = torch.empty_like(sum_sq)
        for i in range(len(sum_sq)):
            g2_p[i], tr_p[i] = per_example(float(sum_sq[i]), float(mean_sq[i]), n)
        return g2_p, tr_p

    # ---- batchscope.train callback ------------------------------------------------------------

    def on_train_begin(self, ctx: TrainContext) -> None:
        self._ctx = ctx
        if self.method == "dataparallel":
            raise NoiseError("batchscope's training loop runs on one process; the data-parallel estimator is for "
                             "your own DDP loop (NoiseScaleMonitor(model, micro_batch=m) under torchrun)")
        if self.method == "microbatch" and ctx.accumulation < 2:
            b = ctx.batch_size
            hint = (f"pass a micro-batch smaller than the batch that divides it (for example {b // 2})"
                    if b >= 2 else "use a batch of at least 2")
            raise NoiseError(f"the micro-batch estimator needs two batch sizes, but micro-batch {ctx.micro_batch} "
                             f"equals the batch size {b} (one micro-batch per step); {hint}, or use method='exact'")
        if self.method == "exact" and (self.exact_examples or ctx.batch_size) < 2:
            raise NoiseError("the exact estimator needs at least 2 examples per measurement to estimate a variance; "
                             "got a batch of 1; use a batch of at least 2")
        self.micro_batch = ctx.micro_batch
        self.loss_fn = self.loss_fn or ctx.task.loss_fn
        self._generator = torch.Generator().manual_seed(self.seed + 7919)
        self.bind(ctx.model, ctx.optimizer)

    def on_micro_batch_end(self, ctx: TrainContext, index: int, loss: float) -> None:
        self._step_loss += loss / ctx.accumulation
        if ctx.config.amp and self.method != "exact" and index == ctx.accumulation - 1:
            self._scaled_big = squared_norms([p.grad for p in self._params], self._capture.device)

    def on_before_step(self, ctx: TrainContext) -> None:
        loss, self._step_loss = self._step_loss, 0.0
        if self.method != "exact":
            self.update(loss, step=ctx.step + 1)
        elif ctx.step % self.every == 0:
            n = min(self.exact_examples or ctx.batch_size, ctx.task.n_train)
            idx = torch.randperm(ctx.task.n_train, generator=self._generator)[:n]
            self.update(loss, batch=to_device(take(ctx.task.train_data, idx), ctx.device), step=ctx.step + 1)

    def on_train_end(self, ctx: TrainContext, result) -> None:
        self.close()
