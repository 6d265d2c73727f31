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
  A gradient norm measured after clipping is not the gradient's, so the noise callback takes the
  clipping over: it sets ``max_grad_norm`` to 0 for the run, measures, then clips to the same
  norm with ``torch.nn.utils.clip_grad_norm_`` (restored at the end of training).
"""

from __future__ import annotations

from typing import Any, Optional

from .requires import require

transformers = require("transformers", "hf", "batchscope.integrations.hf")

import torch  # noqa: E402

from ..errors import ConfigError  # noqa: E402
from ..noise import NoiseScaleMonitor  # noqa: E402
from ..adapt import StepTimeModel  # noqa: E402
from .batching import BatchPlan, set_loader_batch_size  # noqa: E402
from .microbatches import leading_size, measurable  # noqa: E402
from .scalars import noise_scalars  # noqa: E402
from .state import pack_state, unpack_state  # noqa: E402

TrainerCallback = transformers.TrainerCallback
ExportableState = transformers.trainer_callback.ExportableState


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class NoiseScaleCallback(TrainerCallback, ExportableState):
    """Measures B_simple = tr(Σ)/|G|² during ``Trainer.train`` and adds it to the Trainer's logs.

    The small batch is one micro-batch (``per_device_train_batch_size``) of gradient accumulation
    (``gradient_accumulation_steps >= 2``) or one process's batch under DDP; the big batch is the
    accumulated gradient. At every logging step ``noise/b_simple``, ``noise/b_simple_low`` and
    ``noise/b_simple_high`` (once finite) join the entry in ``trainer.state.log_history`` and the
    ``logs`` seen by callbacks after this one. Steps with unequal micro-batches (the epoch's last
    batch, unless ``dataloader_drop_last``) are left out. ``monitor`` holds the
    :class:`~batchscope.noise.NoiseScaleMonitor` (``.estimate()``). Keyword arguments go to it.

    By default it measures every 8th optimizer step (``every=8``; ``every=1`` measures all). Between
    measured steps nothing of it runs but a counter check: no gradient hooks, no forward hook. On a
    small model a measured step costs several percent more than an idle one, so sampling keeps the
    callback within a few percent of the step time; the sampled steps do not depend on the
    gradients, so the estimate stays unbiased, from an eighth of the samples.

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
        self.saved_state: Optional[dict] = None   # the monitor's state, packed, from a checkpoint
        self._sizes: list[Optional[int]] = []
        self._clip = 0.0
        self._consumed = 0     # micro-batches run this epoch
        self._handle = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if args.fp16:
            raise ConfigError("the noise callback measures gradients before the optimizer step; under fp16 they are "
                              "still multiplied by the loss scale there; use bf16=True or no mixed precision")
        self._clip, args.max_grad_norm = args.max_grad_norm, 0.0
        self.monitor = NoiseScaleMonitor(model, optimizer=optimizer, **self.monitor_kwargs)
        if self.saved_state is not None:
            self.monitor.load_state_dict(unpack_state(self.saved_state))
        self._sizes = []
        self._consumed = 0
        self._sync_size_hook(model)

    def _tracks_sizes(self) -> bool:
        """Whether the coming step's micro-batch sizes are needed (only for a measured step here)."""
        return self.monitor.measuring

    def _sync_size_hook(self, model) -> None:
        if self._tracks_sizes():
            if self._handle is None:
                self._handle = model.register_forward_pre_hook(self._record_size, with_kwargs=True)
        elif self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _record_size(self, module, args, kwargs):
        if module.training and torch.is_grad_enabled():
            self._sizes.append(leading_size(kwargs) if kwargs else leading_size(args))
            self._consumed += 1

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        sizes, self._sizes = self._sizes, []
        if not self.monitor.measuring:
            self.monitor.update()                # an idle step: counted only
        elif measurable(sizes, args.gradient_accumulation_steps, _world_size()):
            self.monitor.micro_batch = sizes[0]
            self.monitor.update()
        else:
            self.left_out += 1
            self.monitor.bind(model, optimizer)  # drops this step's captured norms
        self._sync_size_hook(model)
        if self._clip and self._clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self._clip)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.monitor is None or not self.monitor.history:
            return
        values = noise_scalars(self.monitor.history[-1], self.prefix)
        if logs is not None:
            logs.update(values)
        if state.log_history:
            state.log_history[-1].update(values)

    def on_train_end(self, args, state, control, **kwargs):
        args.max_grad_norm = self._clip
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self.monitor is not None:
            self.monitor.close()

    def state(self) -> dict:
        saved = pack_state(self.monitor.state_dict()) if self.monitor is not None else self.saved_state
        return {"args": {"prefix": self.prefix, **self.monitor_kwargs},
                "attributes": {"saved_state": saved, "left_out": self.left_out}}


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
    that a step now takes more examples. step_time: a :class:`~batchscope.adapt.StepTimeModel`, a
    hardware profile, or ``{"alpha": s, "beta": s, "measured": [[batch, s], ...]}`` (measured optional). Start with ``gradient_accumulation_steps >= 2``.
    Unlike :class:`NoiseScaleCallback` it measures every step (its ``every`` is the controller's).
    """

    default_every = 1

    def __init__(self, step_time, *, memory_ceiling: Optional[int] = None, max_batch: Optional[int] = None,
                 every: int = 50, threshold: float = 0.05, min_samples: int = 5, prefix: str = "noise/",
                 **monitor_kwargs: Any):
        super().__init__(prefix=prefix, **monitor_kwargs)
        if isinstance(step_time, dict):
            step_time = StepTimeModel(step_time["alpha"], step_time["beta"],
                                      tuple(tuple(p) for p in step_time.get("measured", ())))
        self.step_time = step_time
        self.options = dict(memory_ceiling=memory_ceiling, max_batch=max_batch, every=every, threshold=threshold,
                            min_samples=min_samples)
        self.plan: Optional[BatchPlan] = None
        self.saved_plan: Optional[dict] = None
        self._base_lrs: Optional[list[float]] = None
        self._examples = 0
        self._lr_used = float("nan")
        self._loader = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, train_dataloader=None, **kwargs):
        super().on_train_begin(args, state, control, model=model, optimizer=optimizer, **kwargs)
        self.plan = BatchPlan.build(self.step_time, micro_batch=args.per_device_train_batch_size,
                                    accumulation=args.gradient_accumulation_steps, world=_world_size(),
                                    n_train=len(train_dataloader.dataset), optimizer=optimizer, **self.options)
        if self.saved_plan is not None:
            self.plan.load_state_dict(self.saved_plan)
        self._loader = train_dataloader
        self._apply(args)

    def _tracks_sizes(self) -> bool:
        return True   # every step's examples set its learning rate

    def _apply(self, args) -> None:
        set_loader_batch_size(self._loader, self.plan.micro_batch)
        args.gradient_accumulation_steps = self.plan.accumulation

    def on_epoch_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        # A partial window left at the end of the last epoch never reached the optimizer: drop it.
        model.zero_grad(set_to_none=True)
        self.monitor.bind(model, optimizer)
        self._sizes, self._consumed = [], 0
        self.plan.apply_if_aligned(0)
        self._apply(args)

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
        self.plan.after_step(len(self.plan.steps) + 1, self._examples, self._lr_used, self.monitor.estimate(),
                             consumed=self._consumed)
        self._apply(args)

    def on_log(self, args, state, control, logs=None, **kwargs):
        super().on_log(args, state, control, logs=logs, **kwargs)
        if self.plan is not None and self.plan.steps and state.log_history:
            last = self.plan.steps[-1]
            state.log_history[-1].update({"adapt/examples": last.examples, "adapt/lr": last.lr})

    def on_train_end(self, args, state, control, **kwargs):
        super().on_train_end(args, state, control, **kwargs)
        args.gradient_accumulation_steps = self.plan.accumulation

    def state(self) -> dict:
        out = super().state()
        tm = self.plan.controller.time_model if self.plan is not None else self.step_time
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


def find(trainer: "transformers.Trainer", *, target, **find_kwargs):
    """batchscope's recommendation for the model and data of a ``Trainer`` (before or instead of ``train()``).

    ``find_kwargs`` go to :func:`batchscope.plan.find.find`. Returns its FindResult.
    """
    from ..plan.find import find as plan_find

    return plan_find(task_from_trainer(trainer, target=target), **find_kwargs)
