"""Hugging Face ``Trainer``: the noise scale and an adaptive batch as ``TrainerCallback``s.

What the Trainer's loop honours (transformers 5.x, ``Trainer._run_epoch``), and so what these
callbacks rely on:

- ``num_update_steps_per_epoch`` (and ``max_steps``) are worked out once, at the start of
  ``train()``, from ``gradient_accumulation_steps``; each update then re-reads
  ``args.gradient_accumulation_steps`` to pull that many batches from the epoch's iterator;
- within an epoch a step ends at ``(batch + 1) % gradient_accumulation_steps == 0``, so a new count
  must divide the batches already run this epoch;
- each micro-batch loss is divided by the number of batches pulled, unless the model accepts
  loss keyword arguments: then the Trainer leaves the division to the model through
  ``num_items_in_batch``, and a model that ignores it (``BertForSequenceClassification`` in 5.x)
  accumulates the *sum* of the micro-batch gradients. B_simple is a ratio of two quantities that
  both scale with the square of that factor, so it is the same either way; |G|² and tr(Σ) are in
  the units of the loss the Trainer back-propagates. Windows shorter than
  ``gradient_accumulation_steps`` (an epoch's end) scale differently and are left out;
- gradients are clipped (``max_grad_norm``, 1.0 by default) *before* ``on_pre_optimizer_step``.
  A gradient norm measured after clipping is not the gradient's, so on a measured step of two or
  more micro-batches the noise callback takes the clipping over: at the end of the step's last
  backward pass it sets ``max_grad_norm`` to 0, and in ``on_pre_optimizer_step`` it measures, puts
  your value back (in a ``finally``) and clips to it with ``torch.nn.utils.clip_grad_norm_``. Only
  the Trainer's own few lines between the two run with the 0;
- the Trainer tells callbacks of no exception: settings a callback changes for the run (the
  adaptive callback's ``gradient_accumulation_steps``) are put back at ``on_train_end``, and, after a
  ``train()`` that raised, at the start of the next ``train()`` with a batchscope callback on the
  same ``TrainingArguments`` (logged), or by :func:`restore_arguments`.
"""

from __future__ import annotations

import logging
import time
import weakref
from typing import Any, Optional

from .requires import require

transformers = require("transformers", "hf", "batchscope.integrations.hf")

import torch  # noqa: E402

from ..adapt import DEFAULT_EVERY, AdaptiveConfig, StepTimeModel  # noqa: E402
from ..errors import ConfigError  # noqa: E402
from ..noise import NoiseScaleMonitor  # noqa: E402
from .batching import BatchPlan, RealStepClock, set_loader_batch_size  # noqa: E402
from .finding import check_find_kwargs, check_target, progress_wanted, run_find  # noqa: E402
from .microbatches import leading_size, measurable, measure_in_halves, one_pass  # noqa: E402
from .scalars import noise_scalars  # noqa: E402
from .sources import check_profile_model, resolve_step_time  # noqa: E402
from .state import pack_state, unpack_state  # noqa: E402
from .target import TargetWatch  # noqa: E402

# The adaptive settings' one default each, shared with train(..., adaptive=AdaptiveConfig()).
DEFAULTS = AdaptiveConfig()

TrainerCallback = transformers.TrainerCallback
ExportableState = transformers.trainer_callback.ExportableState


log = logging.getLogger(__name__)


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


# TrainingArguments fields a callback changed, with your values: id(args) -> (weak reference, {name: value}).
_CHANGED: dict[int, tuple[Any, dict[str, Any]]] = {}


def _change(args, name: str, value) -> None:
    """Set ``args.<name>``, remembering your value the first time."""
    entry = _CHANGED.get(id(args))
    if entry is None or entry[0]() is not args:
        entry = _CHANGED[id(args)] = (weakref.ref(args), {})
    entry[1].setdefault(name, getattr(args, name))
    setattr(args, name, value)


def _give_back(args, names=None) -> dict[str, Any]:
    """Put back your values of ``names`` (all changed ones by default); returns what was put back."""
    entry = _CHANGED.get(id(args))
    if entry is None or entry[0]() is not args:
        return {}
    saved = entry[1]
    back = {n: saved.pop(n) for n in list(saved) if names is None or n in names}
    for n, v in back.items():
        setattr(args, n, v)
    if not saved:
        del _CHANGED[id(args)]
    return back


def restore_arguments(args) -> dict[str, Any]:
    """Put back the ``TrainingArguments`` fields a batchscope callback changed for a ``train()`` that raised
    (the Trainer calls no callback on an exception); returns {field: your value} for those it put back."""
    back = _give_back(args)
    if back:
        log.warning("restored TrainingArguments %s, left changed by a batchscope callback in a train() that raised",
                    ", ".join(f"{k}={v!r}" for k, v in back.items()))
    return back


class NoiseScaleCallback(TrainerCallback, ExportableState):
    """Measures B_simple = tr(Σ)/|G|² during ``Trainer.train`` and adds it to the Trainer's logs.

    With gradient accumulation (``gradient_accumulation_steps >= 2``) the small batch is one
    micro-batch (``per_device_train_batch_size``) and the big batch the accumulated gradient; under
    DDP, one process's batch. In the Trainer's default set-up (one micro-batch per step on one
    process) each measured step's batch runs once more as two equal halves through the model
    (its own ``loss`` output; ``num_items_in_batch`` is not passed, so each half's loss is its mean),
    measured as ``train`` measures micro-batches, and the step's own gradients, random state and
    buffers are put back: training is as without the callback (see
    :func:`~batchscope.integrations.microbatches.measure_in_halves`). That costs one more forward
    and backward pass of the batch per measured step (about 1/8 more time at ``every=8``); a model
    that returns no loss from its inputs cannot be measured so (use accumulation).

    At every logging step ``noise/b_simple``, ``noise/b_simple_low`` and ``noise/b_simple_high``
    (once finite) join the entry in ``trainer.state.log_history`` and the ``logs`` seen by callbacks
    after this one; until there is an estimate, a logging step says so once on the ``batchscope``
    logger, as does a run that ends without one. Steps with unequal micro-batches (the epoch's last
    batch, unless ``dataloader_drop_last``) are left out. ``monitor`` holds the
    :class:`~batchscope.noise.NoiseScaleMonitor` (``.estimate()``). Keyword arguments go to it.

    By default it measures every 8th optimizer step (``every=8``; ``every=1`` measures all). Between
    measured steps nothing of it runs but a counter check: no gradient hooks, no forward hook. On a
    small model a measured step costs several percent more than an idle one, so sampling keeps the
    callback within a few percent of the step time; the sampled steps do not depend on the
    gradients, so the estimate stays unbiased, from an eighth of the samples.

    ``args.max_grad_norm`` is 0 only between the end of a measured step's last backward pass and
    this callback's ``on_pre_optimizer_step`` (see the module docstring), so an exception in your
    model, the data or another callback leaves your value in place.

    State is saved with checkpoints; resuming restores it when
    ``TrainingArguments(restore_callback_states_from_checkpoint=True)`` (the Trainer then builds a
    new instance: find it with ``trainer.callback_handler.callbacks``).
    """

    default_every = 8

    def __init__(self, *, prefix: str = "noise/", **monitor_kwargs: Any):
        self.prefix = prefix
        self.monitor_kwargs = {"every": self.default_every, **monitor_kwargs}
        self.monitor: Optional[NoiseScaleMonitor] = None
        self.left_out = 0
        self.why_left_out = ""
        self.saved_state: Optional[dict] = None   # the monitor's state, packed, from a checkpoint
        self._sizes: list[Optional[int]] = []
        self._inputs = None    # the batch of a one-micro-batch measured step, as the model was called
        self._clip = 0.0
        self._args = None
        self._armed = False    # max_grad_norm is 0 for this step
        self._consumed = 0     # micro-batches run this epoch
        self._handle = None
        self._grad_handle = None
        self._waiting_said = False

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if args.fp16:
            raise ConfigError("the noise callback measures gradients before the optimizer step; under fp16 they are "
                              "still multiplied by the loss scale there; use bf16=True or no mixed precision")
        restore_arguments(args)             # what a train() that raised left changed
        if self.monitor is not None:        # ... and the hooks it left on the model
            self.monitor.close()
        self._remove_hooks()
        self._args, self._clip, self._armed = args, args.max_grad_norm, False
        self.monitor = NoiseScaleMonitor(model, optimizer=optimizer, **self.monitor_kwargs)
        if self.saved_state is not None:
            self.monitor.load_state_dict(unpack_state(self.saved_state))
        self._sizes, self._inputs = [], None
        self._consumed = 0
        self._waiting_said = False
        self._sync_size_hook(model)

    def _tracks_sizes(self) -> bool:
        """Whether the coming step's micro-batch sizes are needed (only for a measured step here)."""
        return self.monitor.measuring

    def _sync_size_hook(self, model) -> None:
        if self._tracks_sizes():
            if self._handle is None:
                self._handle = model.register_forward_pre_hook(self._record_size, with_kwargs=True)
            if self._grad_handle is None and self._clip and self._clip > 0:
                params = [p for p in model.parameters() if p.requires_grad]
                self._grad_handle = torch.autograd.graph.register_multi_grad_hook(params, self._end_of_backward)
        else:
            self._remove_hooks()

    def _remove_hooks(self) -> None:
        for name in ("_handle", "_grad_handle"):
            handle = getattr(self, name)
            if handle is not None:
                handle.remove()
                setattr(self, name, None)

    def _record_size(self, module, args, kwargs):
        if module.training and torch.is_grad_enabled():
            self._sizes.append(leading_size(kwargs) if kwargs else leading_size(args))
            self._consumed += 1
            if self.monitor.measuring and self._args.gradient_accumulation_steps * _world_size() == 1:
                self._inputs = kwargs if kwargs else args

    def _end_of_backward(self, grads) -> None:
        # The window's last backward pass is done: the Trainer clips next, unless max_grad_norm is 0.
        a = self._args
        if self.monitor.measuring and len(self._sizes) * _world_size() >= 2 \
                and len(self._sizes) >= a.gradient_accumulation_steps:
            _change(a, "max_grad_norm", 0.0)
            self._armed = True

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        sizes, self._sizes = self._sizes, []
        inputs, self._inputs = self._inputs, None
        armed, self._armed = self._armed, False
        monitor = self.monitor
        try:
            if not monitor.measuring:
                monitor.update()                # an idle step: counted only
            elif one_pass(sizes, args.gradient_accumulation_steps, _world_size()):
                if inputs is None or not measure_in_halves(monitor, model, _half_loss(model), inputs, optimizer):
                    self._leave_out(model, optimizer, f"the model returned no loss for a half of the batch of "
                                                      f"{sizes[0]}, or the batch has fewer than 2 examples")
            elif measurable(sizes, args.gradient_accumulation_steps, _world_size()):
                monitor.micro_batch = sizes[0]
                monitor.update()
            else:
                self._leave_out(model, optimizer, f"its micro-batches differ in size (sizes {sizes})")
        finally:
            if armed:
                _give_back(args, ["max_grad_norm"])
                torch.nn.utils.clip_grad_norm_(model.parameters(), self._clip)
        self._sync_size_hook(model)

    def _leave_out(self, model, optimizer, why: str) -> None:
        self.left_out += 1
        self.why_left_out = why
        self.monitor.bind(model, optimizer)  # drops this step's captured norms

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.monitor is None:
            return
        if not self.monitor.history:
            if not self._waiting_said:
                self._waiting_said = True
                why = f"; the last was left out because {self.why_left_out}" if self.why_left_out else ""
                log.warning("noise scale: no estimate yet at step %d (%d steps left out%s); %sb_simple joins the "
                            "logs once a measured step gives one", state.global_step, self.left_out, why, self.prefix)
            return
        values = noise_scalars(self.monitor.history[-1], self.prefix)
        if logs is not None:
            logs.update(values)
        if state.log_history:
            state.log_history[-1].update(values)

    def on_train_end(self, args, state, control, **kwargs):
        _give_back(args, ["max_grad_norm"])
        self._remove_hooks()
        if self.monitor is not None:
            self.monitor.close()
            if not self.monitor.history:
                log.warning("noise scale: the run ended without an estimate (%d optimizer steps, %d left out%s)",
                            state.global_step, self.left_out, f": {self.why_left_out}" if self.why_left_out else "")

    def state(self) -> dict:
        saved = pack_state(self.monitor.state_dict()) if self.monitor is not None else self.saved_state
        return {"args": {"prefix": self.prefix, **self.monitor_kwargs},
                "attributes": {"saved_state": saved, "left_out": self.left_out}}


def _half_loss(model):
    """loss_of(half) for :func:`measure_in_halves`: the model's own loss, called past its forward hooks."""
    def loss_of(half):
        kw = {k: v for k, v in half.items() if k != "num_items_in_batch"} if isinstance(half, dict) else half
        out = model.forward(**kw) if isinstance(kw, dict) else model.forward(*kw)
        loss = out.get("loss") if isinstance(out, dict) else getattr(out, "loss", None)
        return loss if isinstance(loss, torch.Tensor) and loss.requires_grad else None
    return loss_of


class AdaptiveBatchCallback(NoiseScaleCallback):
    """Adapts the batch during ``Trainer.train`` with the controller and rate rule of :mod:`batchscope.adapt`.

    It measures the noise scale as :class:`NoiseScaleCallback` does; every ``every`` optimizer steps
    :class:`~batchscope.adapt.BatchSizeController` picks the batch with the least predicted time per
    unit of progress, laid out as micro-batch x accumulation x devices. The callback sets the train
    DataLoader's batch sampler to the micro-batch and ``args.gradient_accumulation_steps`` to the
    accumulation, at the first step boundary the loop allows (see
    :mod:`batchscope.integrations.batching`). Each step's rate is the Trainer's (with its schedule)
    times the rule of :class:`~batchscope.adapt.ScaledLearningRate` for the examples the step took
    (AdaScale gain for SGD, square root for Adam-type), restored in ``on_optimizer_step`` before the
    scheduler steps. ``adapt/examples`` and ``adapt/lr`` join the logs; ``plan.steps`` keeps the
    record, ``plan.controller.decisions`` the decisions.

    The Trainer fixes its optimizer steps per epoch at the start from the first accumulation; when
    the batch grows, an epoch runs out of data early and its last, partial window is dropped (its
    gradients are zeroed at the next epoch), so count training in ``max_steps`` or epochs knowing
    that a step now takes more examples. step_time: a :class:`~batchscope.adapt.StepTimeModel`,
    ``{"alpha": s, "beta": s, "measured": [[batch, s], ...]}`` (measured optional), a hardware
    profile, a find result (its profile), or the path of a saved profile or find result; checked
    here (:mod:`batchscope.integrations.sources`), and a profile against the model when training
    begins. Start with ``gradient_accumulation_steps >= 2``.
    Unlike :class:`NoiseScaleCallback` it measures every step (its ``every`` is the controller's).
    ``args.gradient_accumulation_steps`` and the DataLoader's batch size are yours again at the end
    of ``train()``; after a ``train()`` that raised, see :func:`restore_arguments`.
    """

    default_every = 1

    def __init__(self, step_time, *, memory_ceiling: Optional[int] = None, max_batch: Optional[int] = None,
                 every: int = DEFAULT_EVERY, threshold: float = DEFAULTS.threshold,
                 min_samples: int = DEFAULTS.min_samples, confident: bool = DEFAULTS.confident,
                 prefix: str = "noise/", **monitor_kwargs: Any):
        super().__init__(prefix=prefix, **monitor_kwargs)
        self.step_time = resolve_step_time(step_time, "hf AdaptiveBatchCallback")
        self.options = dict(memory_ceiling=memory_ceiling, max_batch=max_batch, every=every, threshold=threshold,
                            min_samples=min_samples, confident=confident)
        self.plan: Optional[BatchPlan] = None
        self.saved_plan: Optional[dict] = None
        self._base_lrs: Optional[list[float]] = None
        self._examples = 0
        self._lr_used = float("nan")
        self._loader = None
        self.clock = RealStepClock()

    def on_train_begin(self, args, state, control, model=None, optimizer=None, train_dataloader=None, **kwargs):
        super().on_train_begin(args, state, control, model=model, optimizer=optimizer, **kwargs)
        check_profile_model(self.step_time, model, "hf AdaptiveBatchCallback")
        self.plan = BatchPlan.build(self.step_time, micro_batch=args.per_device_train_batch_size,
                                    accumulation=args.gradient_accumulation_steps, world=_world_size(),
                                    n_train=len(train_dataloader.dataset), optimizer=optimizer, **self.options)
        if self.saved_plan is not None:
            self.plan.load_state_dict(self.saved_plan)
        self._loader = train_dataloader
        self._apply(args)
        self.clock.forget()

    def _tracks_sizes(self) -> bool:
        return True   # every step's examples set its learning rate

    def _apply(self, args) -> None:
        set_loader_batch_size(self._loader, self.plan.micro_batch)
        _change(args, "gradient_accumulation_steps", self.plan.accumulation)

    def on_epoch_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        # A partial window left at the end of the last epoch never reached the optimizer: drop it.
        model.zero_grad(set_to_none=True)
        self.monitor.bind(model, optimizer)
        self._sizes, self._consumed = [], 0
        self.plan.apply_if_aligned(0)
        self._apply(args)
        self.clock.forget()             # the epoch's first step starts the data loader again

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        self._examples = sum(s or 0 for s in self._sizes) * _world_size()
        super().on_pre_optimizer_step(args, state, control, model=model, optimizer=optimizer, **kwargs)
        gain = self.plan.gain(self._examples)
        self._base_lrs = [g["lr"] for g in optimizer.param_groups]
        for g in optimizer.param_groups:
            g["lr"] = g["lr"] * gain
        self._lr_used = optimizer.param_groups[0]["lr"]

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self._base_lrs is not None:
            for g, lr in zip(optimizer.param_groups, self._base_lrs):
                g["lr"] = lr
            self._base_lrs = None

    def on_step_end(self, args, state, control, **kwargs):
        self.plan.step_seconds(self.clock.lap())
        self.plan.after_step(len(self.plan.steps) + 1, self._examples, self._lr_used, self.monitor.estimate(),
                             consumed=self._consumed)
        self._apply(args)

    def on_evaluate(self, args, state, control, **kwargs):
        self.clock.restart()            # an evaluation is not a step's cost

    def on_save(self, args, state, control, **kwargs):
        self.clock.restart()

    def on_log(self, args, state, control, logs=None, **kwargs):
        super().on_log(args, state, control, logs=logs, **kwargs)
        if self.plan is not None and self.plan.steps and state.log_history:
            last = self.plan.steps[-1]
            state.log_history[-1].update({"adapt/examples": last.examples, "adapt/lr": last.lr})

    def on_train_end(self, args, state, control, **kwargs):
        super().on_train_end(args, state, control, **kwargs)
        _give_back(args, ["gradient_accumulation_steps"])
        if self._loader is not None:
            set_loader_batch_size(self._loader, args.per_device_train_batch_size)

    def state(self) -> dict:
        out = super().state()
        tm = self.plan.grid if self.plan is not None else self.step_time   # the overhead is measured again
        if not isinstance(tm, StepTimeModel):
            tm = StepTimeModel.from_profile(tm)
        saved = {"alpha": tm.alpha, "beta": tm.beta, "measured": [list(p) for p in tm.measured]}
        out["args"].update({"step_time": saved, **self.options})
        out["attributes"]["saved_plan"] = self.plan.state_dict() if self.plan is not None else self.saved_plan
        return out


_OPTIMS = {"sgd": "sgd", "adamw_torch": "adamw", "adamw_torch_fused": "adamw", "adamw_hf": "adamw"}


def _hf_loss(model, batch) -> torch.Tensor:
    out = model(**batch)
    loss = out["loss"] if isinstance(out, dict) else getattr(out, "loss", None)
    if loss is None:
        raise ConfigError(f"{type(model).__name__} returned no loss; the examples need the labels the model takes")
    return loss


def _model_inputs(model, collate):
    """HF's Trainer drops dataset columns the model's forward does not take; so does this collate."""
    import inspect

    names = set(inspect.signature(model.forward).parameters) | {"label", "label_ids", "labels"}

    def collate_inputs(examples):
        batch = collate(examples)
        return {k: v for k, v in batch.items() if k in names} if isinstance(batch, dict) else batch
    return collate_inputs


def task_from_trainer(trainer: "transformers.Trainer", *, target, name: Optional[str] = None,
                      reference_batch: Optional[int] = None):
    """A batchscope Task from what a Hugging Face ``Trainer`` already has, for ``find``, ``profile``, ``noise``.

    Model: a copy of ``trainer.model`` as it is now, its loss the model's own ``loss`` output; data:
    ``train_dataset`` and ``eval_dataset`` with ``data_collator``; optimizer and rate from ``args``
    (``optim`` sgd or AdamW, ``learning_rate``, ``weight_decay``; schedules are not used); reference
    batch: ``per_device_train_batch_size x gradient_accumulation_steps``. target: the loss to reach
    (on ``eval_dataset`` when there is one), or a :class:`~batchscope.Target`.
    """
    from .steptask import build_task

    check_target(target, "task_from_trainer")
    a = trainer.args
    optim = str(getattr(a.optim, "value", a.optim))
    if optim not in _OPTIMS:
        raise ConfigError(f"find works with optim sgd or AdamW (its learning-rate rules are for those); got "
                          f"optim={optim!r}; use TrainingArguments(optim='adamw_torch') or 'sgd'")
    settings = {"optimizer": _OPTIMS[optim], "lr": float(a.learning_rate), "momentum": 0.0,
                "weight_decay": float(a.weight_decay)}
    model = trainer.model
    ref = reference_batch or a.per_device_train_batch_size * a.gradient_accumulation_steps
    return build_task(name or type(model).__name__, model, _hf_loss, trainer.train_dataset, trainer.eval_dataset,
                      _model_inputs(model, trainer.data_collator), settings=settings, reference_batch=ref,
                      target=target, description=f"{type(model).__name__} from a transformers Trainer")


def find(trainer: "transformers.Trainer", *, target, progress: Optional[bool] = None, time_trainer: bool = True,
         **find_kwargs):
    """batchscope's recommendation for the model and data of a ``Trainer`` (before or instead of ``train()``).

    target: the loss to reach, the model's own ``loss`` output on ``eval_dataset`` (as the Trainer's
    ``eval_loss``), or a :class:`~batchscope.Target`. ``find_kwargs`` go to
    :func:`batchscope.plan.find.find` (``objective``, ``measure_fraction``: the CLI's ``--budget``,
    ``max_batch``, ``memory_budget``, ``ref_batch``, ``device``, ``profile``, ...); every argument is
    checked before any work. progress: lines on stderr as the CLI prints them (None: when stderr is
    a terminal). Returns its FindResult (``result.save(path)``; give it, or the path, to
    :class:`AdaptiveBatchCallback`).

    time_trainer: first time a few optimizer steps of a copy of the Trainer
    (:func:`~batchscope.integrations.hf_timing.trainer_step_times`), so the per-step cost of the
    Trainer itself (data loader, clipping, scheduler, logging) joins the step-time model the
    recommendation is made with (``result.step_time``); unless ``timed_steps`` or ``step_overhead``
    is given.
    """
    where = "batchscope.integrations.hf.find"
    check_target(target, where)
    check_find_kwargs(find_kwargs, where)
    progress_wanted(progress)
    task = task_from_trainer(trainer, target=target)
    if time_trainer and find_kwargs.get("timed_steps") is None and find_kwargs.get("step_overhead") is None:
        from .hf_timing import trainer_step_times

        find_kwargs = {**find_kwargs, "timed_steps": trainer_step_times(trainer, find_kwargs.get("device", "cpu"),
                                                                        task=task)}
    split = "eval_dataset" if task.val_data is not None else "train_dataset (no eval_dataset)"
    return run_find(task, find_kwargs, progress, target_note=f"its loss is the model's own loss output on {split}")


class StopAtTarget(TrainerCallback):
    """Stops ``train()`` at the first evaluation that reaches the target, and records when: time to target.

    value: the target; metric: the evaluation's metric (``eval_loss``; the ``eval_`` prefix may be
    left out; ``mode="max"`` for an accuracy from ``compute_metrics``); mode: 'min' (reached at or
    below the value) or 'max'. Checked at every evaluation (``on_evaluate``), so the crossing is known
    to within ``eval_steps``: it needs ``eval_strategy`` 'steps' or 'epoch' and an ``eval_dataset``.
    ``reached`` is None until then, else an :class:`~batchscope.integrations.target.Evaluation`
    (step, examples trained on, seconds since ``train()`` began, of which evaluating, value);
    ``evaluations`` lists every check; ``describe()`` says it in one line (logged at the end).
    """

    def __init__(self, value: float, metric: str = "eval_loss", mode: str = "min"):
        self.watch = TargetWatch(value, metric, mode, "hf StopAtTarget")
        self._t0 = time.perf_counter()
        self._eval_seconds = 0.0
        self._examples = 0
        self._handle = None

    @property
    def reached(self):
        return self.watch.reached

    @property
    def evaluations(self) -> list:
        return self.watch.evaluations

    def describe(self) -> str:
        return self.watch.describe()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        strategy = str(getattr(args.eval_strategy, "value", args.eval_strategy))
        if strategy == "no":
            raise ConfigError("StopAtTarget checks the target at each evaluation, but TrainingArguments has "
                              "eval_strategy='no'; set eval_strategy='steps' with eval_steps=N (and an eval_dataset)")
        self._t0, self._eval_seconds, self._examples = time.perf_counter(), 0.0, 0
        if self._handle is None and model is not None:
            self._handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        if module.training and torch.is_grad_enabled():
            self._examples += (leading_size(kwargs or args) or 0) * _world_size()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics = metrics or {}
        self._eval_seconds += float(metrics.get("eval_runtime", 0.0))
        value = self.watch.read(metrics, names=(f"eval_{self.watch.metric}",))
        if self.watch.check(value, state.global_step, self._examples, time.perf_counter() - self._t0,
                            self._eval_seconds):
            control.should_training_stop = True
            log.info("StopAtTarget: %s", self.describe())

    def on_train_end(self, args, state, control, **kwargs):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self.watch.reached is None:
            log.info("StopAtTarget: %s", self.describe())
