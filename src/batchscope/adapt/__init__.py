"""Batch size that changes while a model trains, following the live gradient noise scale.

- :class:`AdaptiveBatchSampler`: seeded batches whose size may change between steps, every example
  once per epoch, resumable, split across data-parallel ranks;
- :class:`BatchSizeController`: every K steps, the batch ``find`` would pick with the noise scale
  measured now (time per unit of progress, with a threshold against flapping);
- :class:`ScaledLearningRate`: the rate for the batch in use (AdaScale gain for SGD, square root for
  Adam-type) with warm-up and decay counted in progress, not steps;
- :class:`AdaptivePolicy`: the three together as a batch policy of :func:`batchscope.train.train`
  (``TrainConfig(adaptive=AdaptiveConfig(...))``), with every setting's one default in :class:`AdaptiveConfig`;
- :class:`BatchSchedule`: batch and rate fixed in advance at example counts, :func:`seesaw` and
  :func:`batch_warmup` built on it (the schedules an adaptive run is judged against).
"""

from ..hardware.steptime import StepTimeModel  # the one step-time model, here for `from batchscope.adapt import`
from .controller import DEFAULT_EVERY, DEFAULT_THRESHOLD, BatchSizeController, Decision, check_limits
from .policy import Adaptation, AdaptiveConfig, AdaptivePolicy
from .rules import ScaledLearningRate, adascale_gain, sqrt_gain
from .sampler import AdaptiveBatchSampler
from .schedules import BatchSchedule, Breakpoint, batch_warmup, seesaw
from .state import adapt_state, load_adapt_state

__all__ = [
    "AdaptiveBatchSampler", "Adaptation", "AdaptiveConfig", "AdaptivePolicy", "BatchSizeController", "check_limits",
    "Decision", "StepTimeModel", "DEFAULT_EVERY",
    "DEFAULT_THRESHOLD", "ScaledLearningRate", "adascale_gain", "sqrt_gain", "adapt_state", "load_adapt_state",
    "BatchSchedule", "Breakpoint", "batch_warmup", "seesaw",
]
