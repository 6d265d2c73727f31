"""Lightning (``lightning.pytorch`` 2.x): the noise scale and an adaptive batch during ``Trainer.fit``.

What Lightning's loop honours (lightning 2.6, ``loops/training_epoch_loop.py``,
``loops/optimization/automatic.py``), and so what these callbacks rely on:

- every batch from the ``DataLoader`` is one micro-batch; the loop divides its loss by
  ``trainer.accumulate_grad_batches`` and steps once ``batches this epoch % accumulate == 0``
  (or on the epoch's last batch), re-reading the attribute at every batch;
- gradients are zeroed before the first backward of a window (``batch_idx % accumulate == 0``), so a
  new count must divide the batches already run this epoch, or old gradients leak into a step;
- the epoch's length is counted at the start of ``fit`` (``num_training_batches``); after the batch
  sampler's size grew, the epoch's last window may end without an optimizer step, and Lightning
  zeroes its gradients at the next epoch's first batch (the callbacks forget that window too);
- ``on_before_optimizer_step`` runs after the window's last backward (and AMP's unscale), before
  clipping and the step: the accumulated gradient there is the one the optimizer will use.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from typing import Any, Optional

from .requires import require

pl = require("lightning.pytorch", "lightning", "batchscope.integrations.lightning")

import torch  # noqa: E402

from ..adapt import DEFAULT_EVERY, AdaptiveConfig  # noqa: E402
from ..errors import ConfigError  # noqa: E402
from ..noise import NoiseScaleMonitor  # noqa: E402
from .batching import BatchPlan, RealStepClock, set_loader_batch_size  # noqa: E402
from .finding import check_find_kwargs, check_target, progress_wanted, run_find  # noqa: E402
from .microbatches import leading_size, measurable, measure_in_halves, one_pass  # noqa: E402
from .scalars import noise_scalars  # noqa: E402
from .sources import check_profile_model, resolve_step_time  # noqa: E402
from .target import TargetWatch  # noqa: E402

# The adaptive settings' one default each, shared with train(..., adaptive=AdaptiveConfig()).
DEFAULTS = AdaptiveConfig()

log = logging.getLogger(__name__)


class NoiseScaleCallback(pl.Callback):
    """Measures B_simple = tr(Σ)/|G|² during ``fit`` and logs it with its interval (``self.log``).

    With gradient accumulation (``Trainer(accumulate_grad_batches=k)``, k >= 2) the small batch is
    one micro-batch and the big batch the accumulated gradient; under DDP, one rank's batch and the
    all-reduced gradient. Norms are taken by hooks during backward: no extra pass. Steps whose
    micro-batches differ in size, or the short window that ends an epoch, are left out.

    In Lightning's default set-up (``accumulate_grad_batches=1`` on one device) a step has one
    micro-batch, which the estimator cannot use alone: on each measured step the batch runs once
    more as two equal halves through your ``training_step`` (with ``self.log`` silenced), measured
    as ``train`` measures micro-batches, and the step's own gradients, random state and buffers are
    put back, so training is as without the callback (see
    :func:`~batchscope.integrations.microbatches.measure_in_halves`). That costs one more forward
    and backward pass of the batch per measured step (about 1/8 more time at ``every=8``).

    Logged on the steps the Trainer writes logs (``log_every_n_steps``): ``noise/b_simple``,
    ``noise/b_simple_low``, ``noise/b_simple_high`` (the last once finite). Until a measured step
    gives an estimate, a logging step says so once on the ``batchscope`` logger (with how many steps
    were left out and why), and a fit that ends without one says that too.
    ``monitor`` is the :class:`~batchscope.noise.NoiseScaleMonitor` doing the work (``.estimate()``).
    Keyword arguments go to the monitor (``decay``, ``level``, ``every``, ``max_micro_batches``,
    ``preconditioned``, ``per_layer``).

    By default it measures every 8th optimizer step (``every=8``; ``every=1`` measures all). Between
    measured steps nothing of it runs but a counter check: no gradient hooks, no bookkeeping. On a
    small model a measured step costs several percent more than an idle one, so sampling keeps the
    callback within a few percent of the step time; the sampled steps do not depend on the
    gradients, so the estimate stays unbiased, from an eighth of the samples.
    """

    default_every = 8

    def __init__(self, *, prefix: str = "noise/", prog_bar: bool = False, **monitor_kwargs: Any):
        self.prefix = prefix
        self.prog_bar = prog_bar
        self.monitor_kwargs = {"every": self.default_every, **monitor_kwargs}
        self.monitor: Optional[NoiseScaleMonitor] = None
        self.left_out = 0              # steps not measurable (unequal or missing micro-batches)
        self.why_left_out = ""         # the reason for the last one
        self._sizes: list[Optional[int]] = []
        self._batch: Optional[tuple] = None   # (batch, batch_idx) of a one-micro-batch measured step
        self._loss: Optional[torch.Tensor] = None
        self._restored: Optional[dict] = None
        self._tracking = False         # record this window's sizes and loss (a measured step, or always)
        self._waiting_said = False     # "no estimate yet" was logged
        self._state_key = self._generate_state_key(prefix=self.prefix)

    @property
    def state_key(self) -> str:
        return self._state_key   # Lightning reads it at every hook call

    def _tracks_every_step(self) -> bool:
        return False

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        self.monitor = NoiseScaleMonitor(pl_module, optimizer=optimizer, **self.monitor_kwargs)
        if self._restored is not None:
            self.monitor.load_state_dict(self._restored)
            self._restored = None
        self._tracking = self.monitor.measuring or self._tracks_every_step()
        self._waiting_said = False

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.monitor is not None:
            self.monitor.close()
            if not self.monitor.history:
                log.warning("noise scale: the fit ended without an estimate (%d optimizer steps, %d left out%s); "
                            "noise/b_simple was never logged", trainer.global_step, self.left_out,
                            f": {self.why_left_out}" if self.why_left_out else "")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # No hooks may stay on the model after a fit that raised.
        self._sizes, self._batch, self._loss = [], None, None
        if self.monitor is not None:
            self.monitor.close()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        # A window left open at the end of the last epoch never reached the optimizer (Lightning zeroes
        # the gradients at the first batch of an epoch): forget its sizes, loss and captured norms.
        if self._sizes:
            self._sizes, self._loss, self._batch = [], None, None
            self.monitor.bind(pl_module, trainer.optimizers[0] if trainer.optimizers else None)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._tracking:
            self._sizes.append(leading_size(batch))
            if trainer.accumulate_grad_batches * trainer.world_size == 1 and self.monitor.measuring:
                self._batch = (batch, batch_idx)

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        # Lightning passes the loss already divided by the accumulation count: the window's sum is its mean.
        if not self._tracking:
            return
        loss = loss.detach()
        self._loss = loss if self._loss is None else self._loss + loss

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        sizes, self._sizes = self._sizes, []
        loss, self._loss = self._loss, None
        batch, self._batch = self._batch, None
        monitor = self.monitor
        if not monitor.measuring:
            monitor.update()                         # an idle step: counted only
        elif one_pass(sizes, trainer.accumulate_grad_batches, trainer.world_size):
            if batch is None or not measure_in_halves(monitor, pl_module, _half_loss(pl_module, batch[1]), batch[0],
                                                      optimizer):
                self._leave_out(pl_module, optimizer, f"a batch of {sizes[0]} cannot be split into two halves")
        elif measurable(sizes, trainer.accumulate_grad_batches, trainer.world_size):
            monitor.micro_batch = sizes[0]
            monitor.update(loss)
        else:
            self._leave_out(pl_module, optimizer, "its micro-batches differ in size or the window was cut short "
                                                  f"(sizes {sizes})")
        self._tracking = monitor.measuring or self._tracks_every_step()
        # self.log has a per-call cost in Lightning: call it only on the steps the logger writes, with
        # the latest estimate (the step written need not be a measured one).
        if (trainer.global_step + 1) % max(trainer.log_every_n_steps, 1):
            return
        if not monitor.history:
            self._say_waiting(trainer.global_step + 1)
            return
        for name, value in noise_scalars(monitor.history[-1], self.prefix).items():
            pl_module.log(name, value, on_step=True, on_epoch=False, prog_bar=self.prog_bar and
                          name.endswith("b_simple"), batch_size=monitor.micro_batch or 1)

    def _leave_out(self, pl_module, optimizer, why: str) -> None:
        self.left_out += 1
        self.why_left_out = why
        self.monitor.bind(pl_module, optimizer)   # drops this step's captured norms

    def _say_waiting(self, step: int) -> None:
        if self._waiting_said:
            return
        self._waiting_said = True
        why = f"; the last was left out because {self.why_left_out}" if self.why_left_out else ""
        log.warning("noise scale: no estimate yet at step %d (%d steps left out%s); %sb_simple is logged once a "
                    "measured step gives one", step, self.left_out, why, self.prefix)

    def state_dict(self) -> dict:
        monitor = self.monitor.state_dict() if self.monitor is not None else self._restored
        return {"monitor": monitor, "left_out": self.left_out}

    def load_state_dict(self, state_dict: dict) -> None:
        self.left_out = state_dict.get("left_out", 0)
        if self.monitor is not None and state_dict.get("monitor") is not None:
            self.monitor.load_state_dict(state_dict["monitor"])
            self._tracking = self.monitor.measuring or self._tracks_every_step()
        else:
            self._restored = state_dict.get("monitor")


def _ignore_log(*args, **kwargs) -> None:
    return None


def _half_loss(module: "pl.LightningModule", batch_idx: int):
    """loss_of(half) for :func:`measure_in_halves`: ``training_step`` on the half, its ``self.log`` calls
    silenced (the step's own pass logged already)."""
    def loss_of(half):
        module.log = _ignore_log   # log_dict calls self.log too
        try:
            out = module.training_step(half, batch_idx)
        finally:
            del module.log
        loss = out["loss"] if isinstance(out, dict) else out
        return loss if isinstance(loss, torch.Tensor) and loss.requires_grad else None
    return loss_of


class AdaptiveBatchCallback(NoiseScaleCallback):
    """Adapts the batch during ``fit`` with the controller and rate rule of :mod:`batchscope.adapt`.

    It measures the noise scale as :class:`NoiseScaleCallback` does (and logs it); every ``every``
    optimizer steps :class:`~batchscope.adapt.BatchSizeController` picks the batch with the least
    predicted time per unit of progress, laid out as micro-batch x accumulation x devices; the
    callback sets the train DataLoader's batch sampler to the micro-batch and
    ``trainer.accumulate_grad_batches`` to the accumulation, at the first step boundary the loop
    allows (see :mod:`batchscope.integrations.batching`). Each step's rate is the one your optimizer
    (and scheduler) set, times the rule of :class:`~batchscope.adapt.ScaledLearningRate` for the
    examples the step took (AdaScale gain for SGD, square root for Adam-type) relative to the
    starting batch, restored right after the step so schedulers see your rate. Logged per step:
    ``adapt/examples``, ``adapt/lr``; ``plan.steps`` keeps the record, ``plan.controller.decisions``
    the decisions with their reasons.

    step_time: a :class:`~batchscope.adapt.StepTimeModel` (alpha, beta, measured), ``{"alpha": s, "beta": s}``,
    a hardware profile (``profile_hardware(task_from_lightning(...))``), a find result (``find(...)``
    or ``FindResult.load``: its profile), or the path of a saved profile or find result; checked
    here (see :mod:`batchscope.integrations.sources`), and a profile against the model at the start
    of training. memory_ceiling: the largest micro-batch that fits (None: not limiting). Start with
    ``accumulate_grad_batches >= 2`` and a DataLoader built with ``batch_size=m`` (or
    ``batch_sampler=AdaptiveBatchSampler``) and ``num_workers=0``. Unlike :class:`NoiseScaleCallback`
    it measures every step (its ``every`` is the controller's).

    The Trainer's ``accumulate_grad_batches``, the DataLoader's batch size and the optimizer's rate
    are yours again when training ends, whether it ends normally or by an exception
    (``on_exception``).
    """

    default_every = 1

    def __init__(self, step_time, *, memory_ceiling: Optional[int] = None, max_batch: Optional[int] = None,
                 every: int = DEFAULT_EVERY, threshold: float = DEFAULTS.threshold,
                 min_samples: int = DEFAULTS.min_samples, confident: bool = DEFAULTS.confident,
                 prefix: str = "noise/", **monitor_kwargs: Any):
        super().__init__(prefix=prefix, **monitor_kwargs)
        self.step_time = resolve_step_time(step_time, "lightning AdaptiveBatchCallback")
        self.options = dict(memory_ceiling=memory_ceiling, max_batch=max_batch, every=every, threshold=threshold,
                            min_samples=min_samples, confident=confident)
        self.plan: Optional[BatchPlan] = None
        self._plan_state: Optional[dict] = None
        self._base_lrs: Optional[list[float]] = None
        self._examples = 0
        self._lr_used = float("nan")
        self._hook = None
        self._yours: Optional[tuple[int, int]] = None   # (accumulate_grad_batches, micro-batch) before the fit
        self.clock = RealStepClock()

    def _tracks_every_step(self) -> bool:
        return True   # every step's examples set its learning rate

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        loader = trainer.train_dataloader
        micro = getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
        if not micro:
            raise ConfigError("the adaptive batch needs a train DataLoader built with batch_size=m (the micro-batch)")
        optimizer = trainer.optimizers[0]
        check_profile_model(self.step_time, pl_module, "lightning AdaptiveBatchCallback")
        self._yours = (trainer.accumulate_grad_batches, micro)
        self.plan = BatchPlan.build(self.step_time, micro_batch=micro, world=trainer.world_size,
                                    accumulation=trainer.accumulate_grad_batches, n_train=len(loader.dataset),
                                    optimizer=optimizer, **self.options)
        if self._plan_state is not None:
            self.plan.load_state_dict(self._plan_state)
            self._plan_state = None
        self._apply(trainer)
        self._hook = optimizer.register_step_post_hook(self._restore_lr)
        self.clock.forget()

    def _apply(self, trainer) -> None:
        set_loader_batch_size(trainer.train_dataloader, self.plan.micro_batch)
        trainer.accumulate_grad_batches = self.plan.accumulation

    def on_train_end(self, trainer, pl_module) -> None:
        self._give_back(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        if self._base_lrs is not None and trainer.optimizers:   # raised between the rate's scaling and the step
            self._restore_lr(trainer.optimizers[0], (), {})
            self._base_lrs = None
        self._give_back(trainer)

    def _give_back(self, trainer) -> None:
        """The Trainer's accumulation and the DataLoader's batch size as they were before the fit."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._yours is not None:
            accumulation, micro = self._yours
            trainer.accumulate_grad_batches = accumulation
            if trainer.train_dataloader is not None:
                set_loader_batch_size(trainer.train_dataloader, micro)
            self._yours = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self.plan.apply_if_aligned(0)
        self._apply(trainer)
        self.clock.forget()             # the epoch's first step starts the data loader again

    def on_validation_end(self, trainer, pl_module) -> None:
        self.clock.restart()            # a validation is not a step's cost

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.clock.restart()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._examples = sum(s or 0 for s in self._sizes) * trainer.world_size
        super().on_before_optimizer_step(trainer, pl_module, optimizer)
        gain = self.plan.gain(self._examples)
        self._base_lrs = [g["lr"] for g in optimizer.param_groups]
        for g in optimizer.param_groups:
            g["lr"] = g["lr"] * gain
        self._lr_used = optimizer.param_groups[0]["lr"]

    def _restore_lr(self, optimizer, args, kwargs) -> None:
        if self._base_lrs is not None:
            for g, lr in zip(optimizer.param_groups, self._base_lrs):
                g["lr"] = lr

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._base_lrs is None:       # inside an accumulation window
            return
        self._base_lrs = None
        plan = self.plan
        plan.step_seconds(self.clock.lap())
        plan.after_step(len(plan.steps) + 1, self._examples, self._lr_used, self.monitor.estimate(),
                        consumed=batch_idx + 1)
        self._apply(trainer)
        if len(plan.steps) % max(trainer.log_every_n_steps, 1):
            return
        pl_module.log("adapt/examples", float(self._examples), on_step=True, on_epoch=False, batch_size=1)
        pl_module.log("adapt/lr", self._lr_used, on_step=True, on_epoch=False, batch_size=1)

    def state_dict(self) -> dict:
        plan = self.plan.state_dict() if self.plan is not None else self._plan_state
        return {**super().state_dict(), "plan": plan}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if self.plan is not None and state_dict.get("plan") is not None:
            self.plan.load_state_dict(state_dict["plan"])
        else:
            self._plan_state = state_dict.get("plan")


class StopAtTarget(pl.Callback):
    """Stops ``fit`` at the first validation that reaches the target, and records when: time to target.

    value: the target; monitor: the logged validation metric (``val_loss``, or ``val_acc`` with
    ``mode="max"``); mode: 'min' (reached at or below the value) or 'max' (at or above). Checked at
    every validation (``on_validation_end``, sanity checks excluded; under DDP the ranks agree), so
    the crossing is known to within ``val_check_interval``. ``reached`` is None until then, else an
    :class:`~batchscope.integrations.target.Evaluation` (step, examples trained on, seconds since
    the fit began, of which evaluating, value); ``evaluations`` lists every check;
    ``describe()`` says it in one line (also logged when the fit stops or ends).
    """

    def __init__(self, value: float, monitor: str = "val_loss", mode: str = "min"):
        self.watch = TargetWatch(value, monitor, mode, "lightning StopAtTarget")
        self._t0 = time.perf_counter()
        self._v0 = 0.0
        self._eval_seconds = 0.0
        self._examples = 0

    @property
    def reached(self):
        return self.watch.reached

    @property
    def evaluations(self) -> list:
        return self.watch.evaluations

    def describe(self) -> str:
        return self.watch.describe()

    def on_fit_start(self, trainer, pl_module) -> None:
        self._t0, self._eval_seconds, self._examples = time.perf_counter(), 0.0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._examples += (leading_size(batch) or 0) * trainer.world_size

    def on_validation_start(self, trainer, pl_module) -> None:
        self._v0 = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        now = time.perf_counter()
        self._eval_seconds += now - self._v0
        value = self.watch.read(trainer.callback_metrics)
        hit = self.watch.check(value, trainer.global_step, self._examples, now - self._t0, self._eval_seconds)
        if trainer.strategy.reduce_boolean_decision(hit, all=False):
            trainer.should_stop = True
            log.info("StopAtTarget: %s", self.describe())

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.watch.reached is None:
            log.info("StopAtTarget: %s", self.describe())


LOSS_NOTE = ("its loss is your training_step's loss on the validation data, batched by batchscope in eval mode, "
             "not the val_loss your validation_step logs (they differ when validation_step computes another loss)")


def _lightning_loss(module: "pl.LightningModule", batch) -> torch.Tensor:
    # training_step outside a Trainer: self.log() only warns (and logs nothing); silence that one warning.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")
        out = module.training_step(batch, 0)
    loss = out["loss"] if isinstance(out, dict) else out
    if not isinstance(loss, torch.Tensor):
        raise ConfigError(f"{type(module).__name__}.training_step returned {type(out).__name__}; find needs the loss "
                         "tensor (or a dict with 'loss')")
    return loss


def _first_optimizer(configured):
    """The optimizer from any of configure_optimizers' return forms."""
    if isinstance(configured, torch.optim.Optimizer):
        return configured
    if isinstance(configured, dict):
        return _first_optimizer(configured["optimizer"])
    if isinstance(configured, (list, tuple)) and configured:
        return _first_optimizer(configured[0])
    raise ConfigError(f"configure_optimizers returned {type(configured).__name__}; find needs an optimizer")


def task_from_lightning(module: "pl.LightningModule", datamodule: "pl.LightningDataModule", *, target,
                        name: Optional[str] = None, reference_batch: Optional[int] = None):
    """A batchscope Task from a LightningModule and LightningDataModule, for ``find``, ``profile``, ``noise``.

    Model: a copy of ``module`` as it is now; loss: its ``training_step``, on every split: the loss
    at the target is ``training_step``'s on the validation data (in eval mode), not the ``val_loss``
    that ``validation_step`` logs; optimizer and rate: the first optimizer of
    ``configure_optimizers`` (SGD, Adam or AdamW; schedulers are not used); data: the datasets and
    collate function of the DataModule's train (and, if defined, val) DataLoader; reference batch:
    the train DataLoader's batch size. target: the loss to reach (on the validation split when
    there is one), or a :class:`~batchscope.Target`; checked before the DataModule is set up.
    ``training_step`` runs without a Trainer: ``self.log`` logs nothing, ``self.trainer`` is absent.
    """
    from .steptask import build_task, optimizer_settings

    check_target(target, "task_from_lightning")
    datamodule.prepare_data()
    datamodule.setup("fit")
    train_loader = datamodule.train_dataloader()
    try:
        val_data = datamodule.val_dataloader().dataset
    except Exception:  # a DataModule without val_dataloader raises Lightning's own MisconfigurationException
        val_data = None
    settings = optimizer_settings(_first_optimizer(copy.deepcopy(module).configure_optimizers()))
    split = "the validation data" if val_data is not None else "the training data (no val_dataloader)"
    return build_task(name or type(module).__name__, module, _lightning_loss, train_loader.dataset, val_data,
                      train_loader.collate_fn, settings=settings,
                      reference_batch=reference_batch or train_loader.batch_size or 32, target=target,
                      description=f"{type(module).__name__} with {type(datamodule).__name__}; loss: training_step "
                                  f"(the target's on {split})")


def find(module: "pl.LightningModule", datamodule: "pl.LightningDataModule", *, target,
         progress: Optional[bool] = None, time_trainer: bool = True, **find_kwargs):
    """batchscope's recommendation (batch size, rate, schedule, evidence) for a Lightning model and data.

    target: the loss to reach, computed with ``training_step`` on the validation data (in eval
    mode), not the ``val_loss`` your ``validation_step`` logs; or a :class:`~batchscope.Target`.
    ``find_kwargs`` go to :func:`batchscope.plan.find.find`: ``objective``, ``measure_fraction`` (the
    measuring run's share of the projected run, the CLI's ``--budget``), ``max_batch``,
    ``memory_budget``, ``ref_batch``, ``device``, ``profile``, ... Every argument is checked before any
    work. progress: lines on stderr as the CLI prints them (None: when stderr is a terminal).
    Returns its FindResult; its caveats, and the last progress line, say how the target loss is
    computed. Save it with ``result.save(path)``; give it (or the path) to
    :class:`AdaptiveBatchCallback` as its step time.

    time_trainer: first time a few optimizer steps of a copy of the module under a plain Lightning
    ``Trainer`` (:func:`~batchscope.integrations.lightning_timing.lightning_step_times`), so Lightning's
    own per-step cost joins the step-time model the recommendation is made with (``result.step_time``);
    unless ``timed_steps`` or ``step_overhead`` is given.
    """
    where = "batchscope.integrations.lightning.find"
    check_target(target, where)
    check_find_kwargs(find_kwargs, where)
    progress_wanted(progress)
    task = task_from_lightning(module, datamodule, target=target)
    if time_trainer and find_kwargs.get("timed_steps") is None and find_kwargs.get("step_overhead") is None:
        from .lightning_timing import lightning_step_times

        find_kwargs = {**find_kwargs, "timed_steps": lightning_step_times(
            module, datamodule, datamodule.train_dataloader().batch_size or task.reference_batch,
            find_kwargs.get("device", "cpu"), task=task)}
    note = LOSS_NOTE if task.val_data is not None else "its loss is your training_step's loss on the training data"
    return run_find(task, find_kwargs, progress, target_note=note)
