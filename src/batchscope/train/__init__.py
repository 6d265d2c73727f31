"""The one training loop every command uses.

:func:`train` trains a :class:`~batchscope.tasks.Task` for a number of steps or epochs or until the
task's target is reached, and returns the history. What each step uses (batch, micro-batches,
rate, whether it is measured) comes from a batch policy (:mod:`.policy`): a fixed batch, or the
adaptive controller of :mod:`batchscope.adapt`. Measurements (noise scale, progress bars, study
probes) plug in as :class:`Callback` objects. A run in progress (:class:`Run`) can be forked to
train a short branch (:meth:`Run.branch`).
"""

from .config import Callback, HistoryPoint, StepClock, StepLosses, TrainConfig, TrainContext, TrainResult, check_config
from .loop import (Branch, Run, accumulate_step, as_callbacks, load_checkpoint, make_policy, save_checkpoint,
                   start_run, train)
from ..data import IndexStream
from .policy import BatchPolicy, FixedBatch, StepPlan
from .schedule import (DIVERGE_SMOOTHING, EVALS_PER_RUN, SCHEDULES, TARGET_RESOLUTION, TargetCrossing,
                       crossing_step, divergence, evaluation_gap, lr_factor, target_crossing, total_steps)
from .setup import (OptimizerSettings, TrainingSetup, amp_dtype, batch_coupled_layers, build_training, check_batch,
                    make_optimizer, resolve_device, smallest_batch)
from .taskcalls import build_model, evaluate, loss_of, task_loss, task_metric, task_output

__all__ = [
    "Callback", "HistoryPoint", "StepClock", "StepLosses", "TrainConfig", "TrainContext", "TrainResult", "check_config",
    "Branch", "Run", "accumulate_step", "as_callbacks", "load_checkpoint", "make_policy", "save_checkpoint",
    "start_run", "train", "BatchPolicy", "FixedBatch", "IndexStream", "StepPlan", "DIVERGE_SMOOTHING",
    "EVALS_PER_RUN", "SCHEDULES", "TARGET_RESOLUTION", "TargetCrossing", "crossing_step", "divergence",
    "evaluation_gap", "lr_factor", "target_crossing", "total_steps", "OptimizerSettings", "TrainingSetup",
    "amp_dtype", "batch_coupled_layers", "build_training", "check_batch", "make_optimizer", "resolve_device",
    "smallest_batch", "build_model", "evaluate", "loss_of", "task_loss", "task_metric", "task_output",
]
