"""measure_noise: train a task for a while and measure its gradient noise scale along the way."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

from ..errors import ConfigError, DivergedError, check_positive_int
from ..serialize import decode
from ..tasks import Task, load_task
from ..train import Callback, TrainConfig, TrainResult, train
from .monitor import NoiseScaleMonitor
from .stats import DEFAULT_DECAY, DEFAULT_LEVEL, NoiseError, NoiseEstimate, NoisePoint, RawSample


@dataclass
class NoiseMeasurement:
    """The final estimate, the smoothed trajectory, the raw per-step estimates and the training run."""

    task: str
    estimate: NoiseEstimate
    history: list[NoisePoint]
    raw: list[RawSample]
    train: Optional[TrainResult] = None
    monitor: Optional[NoiseScaleMonitor] = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """Top level: b_simple, low, high, method, level, n_samples, ... then history, raw and the run."""
        return {
            "task": self.task,
            **self.estimate.to_dict(),
            "history": [p.to_dict() for p in self.history],
            "raw": [r._asdict() for r in self.raw],
            "train": None if self.train is None else self.train.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "NoiseMeasurement":
        est = NoiseEstimate.from_dict(d)
        raw = decode(list[RawSample], d.get("raw", []))
        return cls(task=d["task"], estimate=est, history=[NoisePoint.from_dict(p) for p in d["history"]], raw=raw)


def measure_noise(task: "Task | str", batch_size: int, micro_batch: Optional[int] = None, steps: int = 300,
                  method: str = "microbatch", lr: Optional[float] = None, seed: int = 0, device: str = "cpu", *,
                  optimizer: Optional[str] = None, preconditioned: bool = False, decay: float = DEFAULT_DECAY,
                  level: float = DEFAULT_LEVEL, per_layer: bool = False, every: int = 1,
                  max_micro_batches: Optional[int] = None,
                  exact_examples: Optional[int] = None, amp: bool = False, warmup_steps: int = 0,
                  eval_every: Optional[int] = None, eval_examples: Optional[int] = 2048,
                  callbacks: Iterable[Callback] = ()) -> NoiseMeasurement:
    """Train ``task`` at ``batch_size`` for ``steps`` steps and measure B_simple at each step.

    The micro-batch method (default) needs ``micro_batch`` < ``batch_size`` (it divides the batch;
    default batch_size // 8, at least 1); the exact method trains without accumulation unless a
    micro-batch is given. If training diverges, the :class:`DivergedError` raised carries the
    partial measurement in ``error.measured["noise"]``.
    """
    task = load_task(task)
    b = check_positive_int("batch_size", batch_size)
    if method == "microbatch":
        if b < 2:
            raise NoiseError(f"the micro-batch estimator needs two batch sizes, so a batch of at least 2; got "
                             f"batch size {b}; use a larger batch")
        if micro_batch is None:
            micro_batch = max(d for d in range(1, max(1, b // 8) + 1) if b % d == 0)
        check_positive_int("micro_batch", micro_batch)
        if b % micro_batch:
            divisor = max(d for d in range(1, micro_batch + 1) if b % d == 0)
            raise ConfigError(f"micro-batch {micro_batch} does not divide batch size {b}; pick a divisor of {b} "
                              f"(for example {divisor})")
        if micro_batch >= b:
            raise NoiseError(f"the micro-batch estimator needs two batch sizes, but micro-batch {micro_batch} is not "
                             f"smaller than the batch size {b}; use a divisor of {b} below it (for example "
                             f"{max(d for d in range(1, b) if b % d == 0)})")
    monitor = NoiseScaleMonitor(method=method, decay=decay, level=level, preconditioned=preconditioned,
                                per_layer=per_layer, every=every, max_micro_batches=max_micro_batches,
                                exact_examples=exact_examples, seed=seed)
    cfg = TrainConfig(batch_size=b, lr=lr, optimizer=optimizer, micro_batch=micro_batch, steps=steps, seed=seed,
                      device=device, amp=amp, warmup_steps=warmup_steps, eval_every=eval_every,
                      eval_examples=eval_examples)
    try:
        result = train(task, cfg, [monitor, *callbacks])
    except DivergedError as e:
        monitor.close()
        e.keep(noise=_package(task.name, monitor, None, require=False).to_dict())
        raise
    return _package(task.name, monitor, result)


def _package(name: str, monitor: NoiseScaleMonitor, result: Optional[TrainResult],
             require: bool = True) -> NoiseMeasurement:
    if require and not monitor.raw:
        why = (f"all {monitor.skipped} steps had non-finite gradients" if monitor.skipped else
               f"{monitor.unmeasured} steps ran before the optimizer had second moments" if monitor.unmeasured
               else "no step was measured")
        raise NoiseError(f"no usable gradient noise measurement: {why}; lower the learning rate or train longer")
    return NoiseMeasurement(task=name, estimate=monitor.estimate(), history=list(monitor.history),
                            raw=list(monitor.raw), train=result, monitor=monitor)
