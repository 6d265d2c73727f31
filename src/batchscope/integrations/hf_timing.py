"""The Hugging Face ``Trainer``'s own steps, timed, for ``find`` under the Trainer.

``find``'s measuring run trains the Trainer's model and collate in batchscope's loop, and the
profile's grid times bare passes: neither sees what the Trainer itself does every optimizer step
(its data loader, accelerate's backward and autocast, gradient clipping, the scheduler, logging,
its callbacks), which on a small model can cost more than the passes. :func:`trainer_step_times`
trains a throw-away copy of the Trainer (a deep copy of the model, the same arguments, data and
collator) for a few optimizer steps and times each from one step's end to the next; ``find`` then
fits the per-step overhead on them. Left out: the copy writes nothing (a temporary output
directory, no saving, no evaluation, no reporting) and runs none of your own callbacks (their side
effects), and a Trainer subclass runs as the plain ``Trainer``. The global random states are put
back afterwards, so the copy changes nothing of the run you start next.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from typing import Optional

from ..hardware.realstep import WARMUP_STEPS, TimedSteps
from ..train import resolve_device
from .batching import RealStepClock
from .timing import random_states, restore_random_states

STEPS = 16             # optimizer steps timed (after WARMUP_STEPS, and the first, which starts the loader)


def _timer():
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.clock, self.seconds = RealStepClock(), []

        def on_train_begin(self, args, state, control, **kwargs):
            self.clock.forget()

        def on_step_end(self, args, state, control, **kwargs):
            lap = self.clock.lap()
            if lap is not None:
                self.seconds.append(lap)

        def on_evaluate(self, args, state, control, **kwargs):
            self.clock.restart()

        def on_save(self, args, state, control, **kwargs):
            self.clock.restart()

    return StepTimes()


def trainer_step_times(trainer, device: str = "cpu", steps: int = STEPS, task=None) -> Optional[TimedSteps]:
    """Seconds of ``steps`` optimizer steps of a copy of ``trainer`` (see the module docstring), at its
    ``per_device_train_batch_size`` x ``gradient_accumulation_steps``; None where they would not describe
    ``find``'s device (the Trainer trains on another kind, or on several processes). ``task`` (the
    Trainer's as a batchscope task): bare steps of the grid's kind are timed before and after, so the
    overhead is read against the machine as it is now (:func:`~batchscope.hardware.realstep.fit_overhead`)."""
    from transformers import PrinterCallback, Trainer

    a = trainer.args
    if a.device.type != resolve_device(device).type or a.world_size > 1:
        return None
    micro, k = a.per_device_train_batch_size, a.gradient_accumulation_steps
    timer, states, bare = _timer(), random_states(), []
    try:
        if task is not None:
            bare = bare_around(task, device, micro, k, steps)
        with tempfile.TemporaryDirectory() as tmp:
            args = dataclasses.replace(a, output_dir=tmp, max_steps=1 + WARMUP_STEPS + steps, save_strategy="no",
                                       eval_strategy="no", report_to=[], load_best_model_at_end=False,
                                       push_to_hub=False, disable_tqdm=True)
            twin = Trainer(model=copy.deepcopy(trainer.model), args=args, train_dataset=trainer.train_dataset,
                           data_collator=trainer.data_collator, callbacks=[timer])
            twin.remove_callback(PrinterCallback)         # the copy's logs are not yours to read
            twin.train()
        if task is not None:
            bare = bare + bare_around(task, device, micro, k, steps)[WARMUP_STEPS:]
    finally:
        restore_random_states(states)
    if len(timer.seconds) <= WARMUP_STEPS:
        return None
    return TimedSteps(micro, k, tuple(timer.seconds), f"the Trainer's own steps ({len(timer.seconds)} timed on a "
                      "copy of it)", tuple(bare))


def bare_around(task, device: str, micro: int, passes: int, steps: int) -> list[float]:
    """Seconds of ``WARMUP_STEPS + steps // 2`` bare steps of the grid's kind (the first ones warm-up)."""
    from ..plan.find import bare_step

    timed = bare_step(task, device, False, 0, micro, passes)
    return [timed() for _ in range(WARMUP_STEPS + steps // 2)]
