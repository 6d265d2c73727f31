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
pass it as a callback: ``train(task, cfg, [NoiseScaleMonitor()])`` (``train`` adapts it with
:meth:`NoiseScaleMonitor.as_callback`, a :class:`~batchscope.noise.callback.NoiseCallback`).
``state_dict()`` / ``load_state_dict()`` save and restore the smoothed moments and counters.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn

from ..data import split_batch
from ..errors import ConfigError
from ..train import batch_coupled_layers
from .capture import AdamPreconditioner, GradNormCapture, trainable_parameters
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


class NoiseScaleMonitor:
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
    every: measure every ``every``-th step only. The gradient-norm hooks are attached only for the
        steps measured (by ``update``, after the step before), so the steps in between cost nothing;
        which steps are measured does not depend on the gradients, so the estimate stays unbiased.
    max_micro_batches: take norms of at most this many micro-batches per step (the first ones).
        Still unbiased, since the micro-batches of a random batch are exchangeable; fewer means
        less overhead and a noisier small-batch norm.
    exact_examples: inside ``train`` the exact method measures on a fresh batch of this many
        examples (default: the training batch size) drawn by the monitor.

    After ``update``: ``history`` (smoothed :class:`NoisePoint` per measured step), ``raw``
    (unsmoothed per-step :class:`RawSample`), ``skipped`` (non-finite steps, never averaged in).
    """

    def __init__(self, model: Optional[nn.Module] = None, *, micro_batch: Optional[int] = None,
                 method: str = "microbatch", decay: float = DEFAULT_DECAY, level: float = DEFAULT_LEVEL,
                 optimizer: Optional[torch.optim.Optimizer] = None, preconditioned: bool = False,
                 grad_is_mean: bool = True, scaler=None, loss_fn: Optional[Callable] = None,
                 per_layer: bool = False, every: int = 1, max_micro_batches: Optional[int] = None,
                 exact_examples: Optional[int] = None, seed: int = 0):
        if method not in METHODS:
            raise ConfigError(f"The 'method' parameter must be one of {', '.join(METHODS)}. Got {method!r} instead.")
        if not 0 < level < 1:
            raise ConfigError(f"The 'level' parameter must be in (0, 1). Got {level!r} instead.")
        for name, v in (("every", every), ("max_micro_batches", max_micro_batches), ("micro_batch", micro_batch)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"The '{name}' parameter must be a positive integer. Got {v!r} instead.")
        self.method = method
        self.micro_batch = micro_batch
        self.level = level
        self.preconditioned = preconditioned
        self.grad_is_mean = grad_is_mean
        self.scaler = scaler
        self.loss_fn = loss_fn
        self.per_layer = per_layer
        self.every = every
        self.max_micro_batches = max_micro_batches
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
        self._world: Optional[int] = None
        self._model: Optional[nn.Module] = None
        self._optimizer = optimizer
        self._capture: Optional[GradNormCapture] = None
        self._precond: Optional[AdamPreconditioner] = None
        self._coupled: list[str] = []            # BatchNorm layers of the bound model
        self._callback = None
        self._closed = False
        if model is not None:
            self.bind(model, optimizer)

    # ---- set-up -------------------------------------------------------------------------------

    def bind(self, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None) -> "NoiseScaleMonitor":
        """Attach to ``model`` (hooks for the micro-batch and data-parallel methods)."""
        if self._capture is not None:
            self._capture.detach()
        named = trainable_parameters(model)
        self._model = model
        self._coupled = batch_coupled_layers(model)
        self._names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self._optimizer = optimizer or self._optimizer
        self._precond = None
        self._closed = False
        if self.preconditioned:
            if self._optimizer is None:
                raise ConfigError("preconditioned=True needs the optimizer: NoiseScaleMonitor(model, optimizer=opt, "
                                  "preconditioned=True)")
            self._precond = AdamPreconditioner(self._optimizer, self._params)
        if self.method == "exact":
            refuse_batch_coupled(model)
        else:
            self._capture = GradNormCapture(named, self._precond, self.max_micro_batches)
            self._sync_hooks()
        return self

    @property
    def measuring(self) -> bool:
        """Whether the next ``update`` measures (its step's backward passes are hooked)."""
        return self._steps % self.every == 0

    def _sync_hooks(self) -> None:
        # Hooks only for a step that will be measured: an idle step runs no Python in backward.
        if self._capture is None:
            return
        if self.measuring and not self._closed:
            self._capture.attach()
        else:
            self._capture.detach()

    def close(self) -> None:
        """Remove the hooks (the monitor keeps its history; ``bind`` attaches it again)."""
        self._closed = True
        if self._capture is not None:
            self._capture.detach()

    # ---- results ------------------------------------------------------------------------------

    @property
    def method_name(self) -> str:
        """The estimator in use: the last measured step's, else what the current process would use."""
        if self.method == "exact":
            return "exact"
        if self._world is not None:  # kept, so the name survives destroy_process_group()
            return "dataparallel" if self._world > 1 else "microbatch"
        return "dataparallel" if _world_size() > 1 else "microbatch"

    def estimate(self, level: Optional[float] = None) -> NoiseEstimate:
        """The current smoothed B_simple with its interval (at ``level``, default the monitor's)."""
        layers = None
        if self.per_layer and self._layer_sums is not None:
            t, g = (self._layer_sums / self._layer_w).tolist()
            layers = {n: {"g2": gi, "trace": ti, "b_simple": ratio(ti, gi)} for n, ti, gi in zip(self._names, t, g)}
        caveats = ()
        if self._coupled and self.method != "exact":
            caveats = (f"the model has BatchNorm (layer {self._coupled[0]!r}): batch statistics couple the examples "
                       f"of a micro-batch, so micro-batch gradients are not independent draws and B_simple is "
                       f"approximate; larger micro-batches couple less",)
        return self.moments.estimate(self.method_name, self.level if level is None else level, skipped=self.skipped,
                                     batch_small=self.sizes[0], batch_big=self.sizes[1],
                                     preconditioned=self.preconditioned, layers=layers, caveats=caveats)

    # ---- saving and resuming ------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The smoothed moments (per layer too) and the counters; not ``history`` or ``raw``."""
        return {"moments": self.moments.state_dict(), "steps": self._steps, "skipped": self.skipped,
                "unmeasured": self.unmeasured, "sizes": list(self.sizes), "world": self._world,
                "layer_sums": None if self._layer_sums is None else self._layer_sums.tolist(),
                "layer_w": self._layer_w}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`: the next ``estimate()`` is what the saved monitor's would be."""
        self.moments.load_state_dict(state["moments"])
        self._steps, self.skipped = int(state["steps"]), int(state["skipped"])
        self.unmeasured = int(state["unmeasured"])
        self.sizes = (int(state["sizes"][0]), int(state["sizes"][1]))
        self._world = state.get("world")
        sums = state.get("layer_sums")
        self._layer_sums = None if sums is None else torch.tensor(sums, dtype=torch.float64)
        self._layer_w = float(state.get("layer_w", 0.0))
        self._sync_hooks()

    def as_callback(self):
        """This monitor as a :class:`batchscope.train.Callback` (what ``train()`` calls it through)."""
        from .callback import NoiseCallback  # the adapter imports this module

        if self._callback is None:
            self._callback = NoiseCallback(self)
        return self._callback

    # ---- the user-loop entry point ------------------------------------------------------------

    def update(self, loss=None, *, batch=None, step: Optional[int] = None) -> Optional[NoisePoint]:
        """Record one optimizer step. Call after its backward pass(es), before ``optimizer.step()``.

        Returns the smoothed point, or None if the step was skipped (non-finite gradients, or no
        optimizer second moments yet for the preconditioned variant).
        """
        if self._model is None:
            raise NoiseError("the monitor is not attached to a model: NoiseScaleMonitor(model, ...) or "
                             "monitor.bind(model) before update()")
        measured = self.measuring
        self._steps += 1
        if not measured:   # no hooks ran this step; attach them if the next one is measured
            self._sync_hooks()
            return None
        try:
            return self._record(self._steps if step is None else step, loss, batch)
        finally:
            self._sync_hooks()

    def _record(self, step: int, loss, batch) -> Optional[NoisePoint]:
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
        g2, trace = math.fsum(g2_p), math.fsum(tr_p)
        if not (math.isfinite(g2) and math.isfinite(trace)):
            self.skipped += 1
            return None
        self.raw.append(RawSample(step, loss_value, g2, trace))
        self.moments.update(trace, g2, loss_value)
        if self.per_layer:
            d = self.moments.decay
            pair = torch.tensor([list(tr_p), list(g2_p)], dtype=torch.float64)
            self._layer_sums = pair if self._layer_sums is None else d * self._layer_sums + pair
            self._layer_w = d * self._layer_w + 1.0
        est = self.estimate()
        point = NoisePoint(step, self.moments.means()[2], est.g2, est.trace, est.b_simple, est.low, est.high,
                           est.n_samples)
        self.history.append(point)
        return point

    def _two_batch(self) -> Optional[tuple[list[float], list[float]]]:
        assert self._capture is not None
        raw = [p.grad for p in self._params]
        grads = raw
        precond = self._precond is not None and not self._capture.unusable
        denoms = [self._precond.denominator(i) for i in range(len(self._params))] if precond else []
        if precond and all(d is not None for d in denoms):
            grads = [None if g is None else g / d for g, d in zip(grads, denoms)]
        elif self._precond is not None:
            self._capture.mark_unusable()
        small_sums, big, passes, measured, usable = self._capture.collect(grads)    # |g_B|² per parameter
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
                                                  device=self._capture.device))
            if int(counts[0]) != passes * world:
                raise NoiseError(f"ranks ran different numbers of backward passes this step (this rank {passes}, "
                                 f"all ranks {int(counts[0])}); every rank must accumulate the same micro-batches")
            usable = int(counts[1]) == world
        big_b = m * passes * world
        if passes * world < 2:
            raise NoiseError(
                f"the {self.method_name} estimator needs two batch sizes, but this step had one backward pass of "
                f"{m} example(s) on {world} process(es); use gradient accumulation with at least 2 micro-batches "
                "per step (a micro-batch smaller than the batch), more processes, or method='exact'")
        if not usable:
            if world > 1:  # keep the collective calls in step on every rank
                _all_reduce_sum(torch.zeros(len(small_sums), dtype=torch.float64, device=self._capture.device))
            self.unmeasured += 1
            return None
        if not self.grad_is_mean:
            big = [v / passes**2 for v in big]
        # Hook gradients are in the loss's units: times 1/accumulation (grad_is_mean), times the AMP
        # loss scale. Mean over the measured micro-batches of |g_m|²:
        unit = (passes**2 if self.grad_is_mean else 1.0) / self._loss_scale_squared() / measured
        small = [v * unit for v in small_sums]
        if world > 1:
            t = _all_reduce_sum(torch.tensor(small, dtype=torch.float64, device=self._capture.device))
            small = (t / world).tolist()
        self.sizes = (m, big_b)
        self._world = world
        pairs = [two_batch(s_, b_, m, big_b) for s_, b_ in zip(small, big)]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def _loss_scale_squared(self) -> float:
        # The hooks saw the scaled micro-batch gradients; the scale is the one of this step's backward
        # passes as long as update() runs before scaler.update().
        if self.scaler is not None and self.scaler.is_enabled():
            return float(self.scaler.get_scale()) ** 2
        return 1.0

    def _exact(self, batch) -> Optional[tuple[list[float], list[float]]]:
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
        pairs = [per_example(a, b, n) for a, b in zip(sum_sq.tolist(), mean_sq.tolist())]
        return [p[0] for p in pairs], [p[1] for p in pairs]
