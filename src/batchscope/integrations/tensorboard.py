"""TensorBoard scalars from batchscope's training loop: ``train(task, cfg, [TensorBoardCallback(dir)])``.

Written per optimizer step (x axis: the step): ``train/loss``, ``train/batch_size``, ``train/lr``,
``train/examples``; with a noise monitor, ``noise/b_simple`` and its interval ``noise/b_simple_low``,
``noise/b_simple_high`` (once finite); at each evaluation the task's split loss and metric
(``val/loss``, ``val/accuracy``, ...). Files are TensorBoard event files under ``log_dir``:
``tensorboard --logdir DIR``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from ..errors import ConfigError
from ..noise import NoiseScaleMonitor
from ..train import Callback, HistoryPoint, TrainContext, TrainResult
from .requires import require
from .scalars import first_lr, noise_scalars

require("tensorboard", "tensorboard", "batchscope.integrations.tensorboard")
from torch.utils.tensorboard import SummaryWriter  # noqa: E402


class TensorBoardCallback(Callback):
    """Writes a batchscope run's scalars to ``log_dir`` for TensorBoard.

    monitor: the :class:`~batchscope.noise.NoiseScaleMonitor` of the run (pass the same object in
    the callbacks before this one), so B_simple is written beside the loss; None writes no noise.
    """

    def __init__(self, log_dir: Union[str, Path], monitor: Optional[NoiseScaleMonitor] = None, *,
                 flush_secs: int = 10):
        self.log_dir = str(log_dir)
        self.monitor = monitor
        self.flush_secs = flush_secs
        self.writer: Optional[SummaryWriter] = None
        self._noise_seen = 0

    def on_train_begin(self, ctx: TrainContext) -> None:
        self.writer = SummaryWriter(self.log_dir, flush_secs=self.flush_secs)
        self._noise_seen = len(self.monitor.history) if self.monitor is not None else 0

    def on_step_end(self, ctx: TrainContext, loss: float) -> None:
        w, step = self.writer, ctx.step
        w.add_scalar("train/loss", loss, step)
        w.add_scalar("train/batch_size", ctx.batch_size, step)
        w.add_scalar("train/examples", ctx.examples, step)
        lr = first_lr(ctx.optimizer)
        if lr is not None:
            w.add_scalar("train/lr", lr, step)
        if self.monitor is not None and len(self.monitor.history) > self._noise_seen:
            self._noise_seen = len(self.monitor.history)
            for name, value in noise_scalars(self.monitor.history[-1]).items():
                w.add_scalar(name, value, step)

    def on_evaluate(self, ctx: TrainContext, point: HistoryPoint) -> None:
        split = ctx.task.target.split
        if point.eval_loss is not None:
            self.writer.add_scalar(f"{split}/loss", point.eval_loss, point.step)
        if point.metric is not None:
            self.writer.add_scalar(f"{split}/{ctx.task.metric_name or 'metric'}", point.metric, point.step)

    def on_train_end(self, ctx: TrainContext, result: TrainResult) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def read_scalars(log_dir: Union[str, Path]) -> dict[str, list[tuple[int, float]]]:
    """All scalars under ``log_dir`` as {tag: [(step, value), ...]} (TensorBoard's own event reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not Path(log_dir).is_dir():
        raise ConfigError(f"no TensorBoard log directory at {log_dir}; give the --log-dir (or log_dir) a run wrote")
    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def run_callbacks(log_dir: Union[str, Path], batch_size: int, micro_batch: Optional[int]) -> list[Callback]:
    """What ``batchscope train --log-dir`` adds to a run: the writer, and a noise monitor when the
    run accumulates micro-batches (the micro-batch estimator needs two of them per step)."""
    if micro_batch is not None and micro_batch < batch_size:
        monitor = NoiseScaleMonitor()
        return [monitor, TensorBoardCallback(log_dir, monitor)]
    return [TensorBoardCallback(log_dir)]
