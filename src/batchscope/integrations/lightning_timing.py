"""Lightning's own steps, timed, for ``find`` on a LightningModule and DataModule.

``find``'s measuring run calls ``training_step`` in batchscope's loop, and the profile's grid times
bare passes: neither sees what a Lightning ``Trainer`` does every optimizer step (its fit loop,
hooks, the optimizer closure, ``self.log``). :func:`lightning_step_times` fits a deep copy of the
module on the DataModule with a plain ``Trainer`` (one device of ``find``'s kind, no logger, no
checkpoints, no validation, no progress bar) for a few optimizer steps and times each from one
step's end to the next; ``find`` fits the per-step overhead on them. Your own Trainer's settings
(callbacks, loggers, precision) are not known here, so they are not in the figure; the global random
states are put back afterwards.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from typing import Optional

from ..hardware.realstep import WARMUP_STEPS, TimedSteps
from ..train import resolve_device
from .batching import RealStepClock
from .timing import random_states, restore_random_states

STEPS = 16             # optimizer steps timed (after WARMUP_STEPS, and the first, which starts the loader)


def _timer():
    import lightning.pytorch as pl

    class StepTimes(pl.Callback):
        def __init__(self):
            self.clock, self.seconds = RealStepClock(), []

        def on_train_epoch_start(self, trainer, pl_module):
            self.clock.forget()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            lap = self.clock.lap()
            if lap is not None:
                self.seconds.append(lap)

    return StepTimes()


def lightning_step_times(module, datamodule, micro_batch: int, device: str = "cpu", steps: int = STEPS,
                         task=None) -> Optional[TimedSteps]:
    """Seconds of ``steps`` optimizer steps of a copy of ``module`` under a plain Lightning ``Trainer``
    (see the module docstring), one pass of the DataModule's batch (``micro_batch``) per step; None when
    the fit ran too few steps to time (a data set of fewer batches). ``task`` (the module as a batchscope
    task): bare steps of the grid's kind are timed before and after, to read the overhead against."""
    import lightning.pytorch as pl

    from .hf_timing import bare_around

    kind = resolve_device(device).type
    timer, states, bare = _timer(), random_states(), []
    quiet = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning")]
    levels = [lg.level for lg in quiet]
    try:
        for lg in quiet:
            lg.setLevel(logging.WARNING)
        if task is not None:
            bare = bare_around(task, device, micro_batch, 1, steps)
        with tempfile.TemporaryDirectory() as tmp:
            trainer = pl.Trainer(accelerator="gpu" if kind == "cuda" else "cpu", devices=1, max_steps=1 + WARMUP_STEPS
                                 + steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                 enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                                 default_root_dir=tmp, callbacks=[timer])
            trainer.fit(copy.deepcopy(module), datamodule=datamodule)
        if task is not None:
            bare = bare + bare_around(task, device, micro_batch, 1, steps)[WARMUP_STEPS:]
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
        restore_random_states(states)
    if len(timer.seconds) <= WARMUP_STEPS:
        return None
    return TimedSteps(micro_batch, 1, tuple(timer.seconds),
                      f"a Lightning Trainer's own steps ({len(timer.seconds)} timed on a copy of the module)",
                      tuple(bare))
