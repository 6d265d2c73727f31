"""The gradient noise scale B_simple = tr(Σ)/|G|² (McCandlish et al. 2018): three estimators, a monitor.

- micro-batch: inside gradient accumulation, free (norms taken during backward);
- data-parallel: each rank's micro-batches against the all-reduced gradient, free under DDP;
- exact: per-example gradients with torch.func, a reference for small models without BatchNorm.

|G|² and tr(Σ) are smoothed separately and divided; B_simple comes with a Fieller interval.
"""

from .callback import NoiseCallback
from .capture import AdamPreconditioner, GradNormCapture
from .exact import per_example_moments, refuse_batch_coupled
from .measure import NoiseMeasurement, measure_noise
from .monitor import NoiseScaleMonitor
from .stats import (METHODS, NoiseError, NoiseEstimate, NoisePoint, RawSample, WeightedMoments,
                    estimate_from_samples, fieller_interval, per_example, ratio, two_batch)

__all__ = [
    "NoiseEstimate", "NoisePoint", "RawSample", "NoiseScaleMonitor", "NoiseCallback", "NoiseMeasurement",
    "measure_noise",
    "NoiseError", "METHODS", "two_batch", "per_example", "ratio", "fieller_interval", "WeightedMoments",
    "estimate_from_samples", "per_example_moments", "refuse_batch_coupled", "GradNormCapture",
    "AdamPreconditioner",
]
