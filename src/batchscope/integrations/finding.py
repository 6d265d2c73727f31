"""``find`` on a framework's model and data: arguments checked before any work, progress on stderr.

A measuring run on a CPU can take minutes, so every argument is checked before the task is even
built (a bad ``target`` used to surface only after the whole run), and the run says what it is
doing: progress is on by default when stderr is a terminal (``progress=True`` forces it,
``progress=False`` silences it), one line per stage as the CLI prints them.
"""

from __future__ import annotations

import inspect
import math
import sys
import time
from typing import Optional, TextIO

from ..errors import ConfigError
from ..tasks import Target
from ..train import Callback

RENAMED = {"budget": "measure_fraction"}   # the CLI's --budget is the Python API's measure_fraction


def check_target(target, where: str) -> None:
    """A positive finite loss, or a :class:`~batchscope.Target` with a finite value."""
    if isinstance(target, Target):
        if target.kind not in ("loss", "metric") or not _finite(target.value) or (
                target.kind == "loss" and target.value <= 0):
            raise ConfigError(f"The 'target' parameter of {where} must be a Target with kind 'loss' (a positive "
                              f"value) or 'metric' (a finite value). Got {target!r} instead.")
        return
    if not _finite(target) or target <= 0:
        raise ConfigError(f"The 'target' parameter of {where} must be a positive finite loss (the loss to reach on "
                          f"the validation data) or a batchscope Target. Got {target!r} instead.")


def _finite(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def check_find_kwargs(find_kwargs: dict, where: str) -> None:
    """Keyword arguments that :func:`batchscope.plan.find.find` takes; a misspelt one fails now, not later."""
    from ..plan.find import find as plan_find

    known = set(inspect.signature(plan_find).parameters) - {"task", "progress"}
    unknown = sorted(set(find_kwargs) - known)
    if unknown:
        hint = "; ".join(f"{k!r} is called {RENAMED[k]!r} here" for k in unknown if k in RENAMED)
        raise ConfigError(f"{where} got unknown keyword argument(s) {', '.join(map(repr, unknown))}"
                          f"{'; ' + hint if hint else ''}; it takes target, progress, {', '.join(sorted(known))}")


def progress_wanted(progress: Optional[bool], stream: Optional[TextIO] = None) -> bool:
    """``progress=None``: on when the stream (stderr) is a terminal."""
    if progress is None:
        stream = stream or sys.stderr
        return bool(getattr(stream, "isatty", lambda: False)())
    if not isinstance(progress, bool):
        raise ConfigError(f"The 'progress' parameter must be True, False or None (on in a terminal). "
                          f"Got {progress!r} instead.")
    return progress


class FindProgress(Callback):
    """The lines ``find`` prints on ``stream``: each profiling probe, then the measuring run's evaluations.

    Called as ``progress(stage, done, total, info)`` while the hardware is profiled, and as a
    :class:`~batchscope.train.Callback` of the measuring run. Lines come at most every
    ``every_seconds`` within a stage (the first and the stage's last always).
    """

    def __init__(self, stream: Optional[TextIO] = None, every_seconds: float = 1.0):
        self.stream = stream or sys.stderr
        self.every = every_seconds
        self._stage: Optional[str] = None
        self._last = -math.inf
        self._t0 = time.perf_counter()

    def say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def _due(self, stage: str, last: bool = False) -> bool:
        now = time.perf_counter()
        if stage != self._stage or last or now - self._last >= self.every:
            self._stage, self._last = stage, now
            return True
        return False

    def __call__(self, stage: str, done: int, total: Optional[int], info: str) -> None:
        if self._stage is None:
            self.say("find: profiling the hardware (memory ceiling, then the step time per batch size)")
        if self._due(stage, last=total is not None and done >= total):
            self.say(f"  {stage} {done}{'/' + str(total) if total else ''}: {info}")

    def on_train_begin(self, ctx) -> None:
        self.say(f"find: measuring run at batch {ctx.batch_size} (micro-batch {ctx.micro_batch}), lr "
                 f"{ctx.optimizer.param_groups[0]['lr']:g}, on {ctx.device}; it stops once it has used its share of "
                 "the run to the target")

    def on_evaluate(self, ctx, point) -> None:
        if self._due("measuring"):
            metric = "" if point.metric is None else f", {ctx.task.metric_name or 'metric'} {point.metric:.4g}"
            self.say(f"  step {point.step}: {point.examples:,} examples, {ctx.task.target.split} loss "
                     f"{point.eval_loss:.4g}{metric} ({time.perf_counter() - self._t0:.0f} s so far)")

    def on_train_end(self, ctx, result) -> None:
        self.say(f"  measuring run: {result.steps} steps, {result.examples:,} examples, {result.seconds:.1f} s "
                 f"({result.stopped_because or 'done'})")

    def finished(self, result, target_line: str) -> None:
        r = result.recommendation
        warm = f", warm-up {r.warmup_steps} steps" if r.warmup_steps else ""
        self.say(f"find: batch {r.batch_size} (micro-batch {r.micro_batch} x {r.accumulation}), lr {r.lr:.4g}{warm}; "
                 f"B_crit {r.b_crit['value']:.4g} ({time.perf_counter() - self._t0:.0f} s)")
        self.say(f"  target: {target_line}")


def run_find(task, find_kwargs: dict, progress: Optional[bool], target_note: str = ""):
    """:func:`batchscope.plan.find.find` on ``task`` with progress lines; ``target_note`` says how the
    target loss is computed (added to the result's caveats and to the last progress line)."""
    from ..plan.find import find as plan_find

    kwargs = dict(find_kwargs)
    reporter = FindProgress() if progress_wanted(progress) else None
    if reporter is not None:
        kwargs["progress"] = reporter
        kwargs["callbacks"] = [*kwargs.get("callbacks", ()), reporter]
    result = plan_find(task, **kwargs)
    described = task.target.describe(task.metric_name)
    if target_note:
        result.recommendation.caveats.append(f"the target {described}: {target_note}")
    if reporter is not None:
        reporter.finished(result, described + (f"; {target_note}" if target_note else ""))
    return result
