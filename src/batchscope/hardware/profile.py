"""HardwareProfile: what one device can do for one model, and :func:`profile_hardware` to measure it."""

from __future__ import annotations

import datetime as _dt
import gc
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from ..errors import ConfigError, check_positive_int
from ..serialize import fields_to_dict, from_dict, read_json, write_json
from ..tasks import Task, load_task
from ..train import OptimizerSettings, build_model, resolve_device, smallest_batch
from .ceiling import Ceiling, Probe, ProbeResult, find_ceiling, fit_memory
from .device import device_facts
from .fit import fit_step_time, knee_from_line
from .memory import available_ram, cpu_memory_probe, cpu_memory_supported, cuda_free_memory, cuda_memory_probe
from .step import StepRunner
from .steptime import StepTimeModel, knee, line_problem
from .timing import StepTiming, TimeProbe, step_time_probe
from .units import MAX_BYTES, format_bytes, parse_bytes

SCHEMA = "batchscope.hardware/1"
CPU_BUDGET_FRACTION = 0.5    # of available RAM: the data pipeline, the OS and neighbours need the rest
CUDA_BUDGET_FRACTION = 0.9   # of free device memory
KNEE_GAIN = 0.10             # the knee: doubling B gains less than this much throughput
# A saved profile's step times end here (about 11.6 days a step): no device is profiled that slowly,
# and larger numbers (an alpha of 1e308) overflow the plans made from them to inf.
MAX_STEP_SECONDS = 1e6
FLAT_GAIN = 0.05             # the step-time grid stops after two grid steps in a row gaining less than this
FLAT_STEPS = 2

# progress(stage, done, total, info): stage is "memory" or "step time"; total is None while unknown.
Progress = Callable[[str, int, Optional[int], str], None]


@dataclass(frozen=True)
class ProfilePoint:
    batch: int
    seconds: float                 # median step time
    spread: float                  # interquartile range of the step time, seconds
    throughput: float              # examples per second, batch / seconds
    peak_bytes: Optional[int]      # peak memory of one step (None: not measured)
    repeats: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "ProfilePoint":
        return cls(int(d["batch"]), float(d["seconds"]), float(d.get("spread") or 0.0), float(d["throughput"]),
                   None if d.get("peak_bytes") is None else int(d["peak_bytes"]), int(d.get("repeats") or 0))


@dataclass
class HardwareProfile:
    """Memory ceiling and step-time curve of one task on one device.

    ``max_batch`` is the largest batch that fits ``memory_budget``; ``limited_by`` says what stopped
    it: 'memory', 'data set' (the training set is smaller) or 'max_batch' (the cap asked for).
    """

    task: str
    parameters: int
    device: dict
    amp: bool
    max_batch: int
    limited_by: str
    memory_budget: Optional[int]
    memory_method: str
    m0: Optional[float]                # bytes: memory(B) = m0 + m1*B
    m1: Optional[float]
    memory_r2: Optional[float]
    alpha: float                       # seconds: the fitted line t(B) = alpha + beta*B
    beta: float
    r2: float
    residuals: list[float]             # relative: (measured - fitted) / measured, per point
    points: list[ProfilePoint]
    memory_probes: list[ProbeResult]   # every memory probe step, in the order run
    ceiling_steps: int                 # probe steps the ceiling search took
    over_budget_steps: int             # of which over the budget (or out of memory)
    knee: Optional[int]                # of the step-time model: smallest B from which on doubling gains < 10%
    knee_fit: Optional[float]          # the same from the fit: 4.5 alpha/beta
    seconds: float                     # wall time of the profiling
    created: str = ""
    notes: list[str] = field(default_factory=list)   # what a reader should know (grid cut short, load)
    optimizer: dict = field(default_factory=dict)    # the optimizer the steps ran (name, lr, momentum, ...)
    schema: str = SCHEMA

    # Predictions -------------------------------------------------------------------------------
    def step_time(self, batch: float) -> float:
        """Predicted seconds per optimizer step at ``batch`` (one pass, no accumulation).

        The one step-time model, ``StepTimeModel.from_profile(profile)``, which code that plans with
        a profile evaluates; this is its shorthand at the prompt.
        """
        return StepTimeModel.from_profile(self).seconds(batch)

    def memory(self, batch: float) -> float:
        """Predicted peak bytes of one training step at ``batch``."""
        if self.m0 is None or self.m1 is None:
            raise ConfigError(f"this profile has no memory fit ({self.memory_method}); "
                              "profile again on a machine where memory can be measured")
        return self.m0 + self.m1 * batch

    def check_task(self, task: Task) -> "HardwareProfile":
        """Refuse a profile measured for another model: the ceiling and step time would be wrong."""
        params = task.parameter_count()
        if task.name != self.task or params != self.parameters:
            raise ConfigError(f"the profile was measured for task {self.task!r} ({self.parameters:,} parameters), "
                              f"not for task {task.name!r} ({params:,} parameters); run "
                              f"`batchscope profile --task {task.name}` to measure this one")
        return self

    # JSON -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        # the step-time model goes along for readers; it is recomputed from the points on load
        return {**fields_to_dict(self), "step_time_model": StepTimeModel.from_profile(self).to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "HardwareProfile":
        if d.get("schema", SCHEMA) != SCHEMA:
            raise ConfigError(f"this is not a batchscope hardware profile (schema {d.get('schema')!r}, "
                              f"expected {SCHEMA!r})")
        check_profile_fields(d)
        try:
            return from_dict(cls, {"residuals": [], "memory_probes": [], **d})
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"the hardware profile is incomplete or malformed ({type(e).__name__}: {e}); "
                              "write it again with `batchscope profile --out FILE`") from e

    def save(self, path: "str | Path") -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: "str | Path") -> "HardwareProfile":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"hardware profile {str(path)!r} does not exist; "
                              "write one with `batchscope profile --task NAME --out FILE`")
        try:
            doc = read_json(path)
        except ValueError as e:
            raise ConfigError(f"hardware profile {str(path)!r} is not valid JSON ({e})") from e
        if not isinstance(doc, dict):
            raise ConfigError(f"hardware profile {str(path)!r} is not a JSON object")
        return cls.from_dict(doc)


def _bad(field_name: str, value, need: str) -> ConfigError:
    return ConfigError(f"the hardware profile's {field_name!r} must be {need}; got {value!r}; "
                       "write it again with `batchscope profile --out FILE`")


def _number(d: dict, name: str, *, optional: bool = False) -> Optional[float]:
    v = d.get(name)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _bad(name, v, "a finite number")
    return float(v)


def check_profile_fields(d: dict) -> None:
    """Refuse a saved profile whose numbers cannot describe a device, before any work starts.

    The step-time line follows the one model's rule (:func:`~batchscope.hardware.steptime.line_problem`:
    alpha and beta finite, neither negative, not both zero); the memory line, where present, must be
    finite; every measured point needs a positive batch and positive seconds.
    """
    for name in ("task", "memory_method", "limited_by"):
        if not isinstance(d.get(name), str):
            raise _bad(name, d.get(name), "a string")
    mb = d.get("max_batch")
    if isinstance(mb, bool) or not isinstance(mb, int) or mb < 1:
        raise _bad("max_batch", mb, "a positive integer")
    alpha, beta = _number(d, "alpha"), _number(d, "beta")
    problem = line_problem(alpha, beta)
    if problem is not None:
        raise _bad(*problem)
    for b in (1, mb):
        if not alpha + beta * b <= MAX_STEP_SECONDS:
            big = abs(alpha) >= abs(beta * b)
            raise _bad("alpha" if big else "beta", alpha if big else beta,
                       f"such that alpha + beta*B is a step time up to {MAX_STEP_SECONDS:g} s at B={b}")
    m0, m1 = _number(d, "m0", optional=True), _number(d, "m1", optional=True)
    if m0 is not None and m1 is not None and not abs(m0) + abs(m1) * mb <= MAX_BYTES:
        raise _bad("m0" if abs(m0) >= abs(m1 * mb) else "m1", m0 if abs(m0) >= abs(m1 * mb) else m1,
                   f"such that m0 + m1*B is a memory up to 1 EiB at B={mb}")
    points = d.get("points")
    if not isinstance(points, list) or not points:
        raise _bad("points", points, "a non-empty list of measured step times")
    for p in points:
        if not isinstance(p, dict):
            raise _bad("points", p, "a list of objects")
        b, t = p.get("batch"), p.get("seconds")
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise _bad("points[].batch", b, "a positive integer")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (0 < t < math.inf):
            raise _bad("points[].seconds", t, "a positive finite number")
        if t > MAX_STEP_SECONDS:
            raise _bad("points[].seconds", t, f"a step time up to {MAX_STEP_SECONDS:g} s")


def load_profile_for(task: Task, path: "str | Path") -> HardwareProfile:
    """A saved profile, checked to belong to ``task`` (for commands taking ``--profile``)."""
    return HardwareProfile.load(path).check_task(task)


def batch_grid(max_batch: int, multiple: int = 1, smallest: int = 1) -> list[int]:
    """Powers of two from ``multiple`` (1, or 8 under AMP) and at least ``smallest`` (2 for a model with
    BatchNorm) up to ``max_batch``, and ``max_batch`` itself."""
    b = 1
    while b < max(multiple, smallest):
        b *= 2
    grid = []
    while b < max_batch:
        grid.append(b)
        b *= 2
    grid.append(max_batch)
    return grid


def resolve_budget(budget, device: torch.device) -> tuple[int, int]:
    """(budget in bytes, memory it is a share of) for a user value, None meaning the default."""
    if device.type == "cuda":
        free, _total = cuda_free_memory(device)
        base, fraction = free, CUDA_BUDGET_FRACTION
    else:
        base, fraction = available_ram(), CPU_BUDGET_FRACTION
    if budget is None:
        if base is None:
            raise ConfigError("the available memory is unknown on this machine; give --memory-budget (e.g. 4GB)")
        return int(base * fraction), base
    return parse_bytes(budget, base), base


def _load_note(facts: dict) -> list[str]:
    load, cpus = facts.get("load_average"), facts.get("usable_cpus")
    if facts.get("type") == "cpu" and load is not None and cpus and load > cpus:
        return [f"load average {load} on {cpus} usable CPUs while profiling: other work competed "
                "with the timed steps, so step times are noisy"]
    return []


JUMP = 2.0   # per-example step time rising more than this between neighbouring grid points is flagged


def jump_notes(points: Sequence[tuple[int, float]], limit: float = JUMP) -> list[str]:
    """Where the time per example rises more than ``limit``-fold from one grid point to the next.

    A larger batch costs more per example when it spills a cache or switches kernels, but not by
    this much in one step of the grid; profiles taken while other processes or surplus threads
    competed showed such cliffs (12x for a doubling) that a rerun on an idle machine did not, and
    every plan made from them inherits the cliff.
    """
    out = []
    for (b1, t1), (b2, t2) in zip(points, points[1:]):
        if t1 <= 0 or t2 <= 0:
            continue
        per_example = (t2 / b2) / (t1 / b1)
        if per_example > limit:
            out.append(f"step time rose {t2 / t1:.1f}x from B={b1} to B={b2} ({per_example:.1f}x per example): "
                       "more than a larger batch explains; if other processes or too many threads competed, "
                       "profile again on an idle machine or with fewer threads (torch.set_num_threads)")
    return out


def _noop(stage: str, done: int, total: Optional[int], info: str) -> None:
    return None


# Long on purpose: one straight pipeline (check, memory ceiling, timing grid, fits, result) whose
# stages are calls; the locals they share (probe cache, limits, device) would otherwise travel as
# a dozen arguments.
def profile_hardware(task: "Task | str", device: str = "cpu", memory_budget=None, max_batch: Optional[int] = None,
                     amp: bool = False, progress: Optional[Progress] = None, *, seed: int = 0,
                     warmup: int = 2, repeats: int = 7, max_seconds_per_point: float = 1.0,
                     max_step_seconds: Optional[float] = 10.0,
                     memory_probe: Optional[Probe] = None, time_probe: Optional[TimeProbe] = None,
                     grid: Optional[list[int]] = None,
                     optimizer: Optional[OptimizerSettings] = None) -> HardwareProfile:
    """Measure the memory ceiling and the step-time curve of ``task`` on ``device``.

    ``memory_budget``: bytes or a string (``"512MB"``, ``"2GiB"``, ``"40%"``); by default 90% of the
    free memory on CUDA, half the available RAM on the CPU. ``max_batch`` caps the search.
    ``max_step_seconds``: the step-time grid stops once one step takes longer (the fit extrapolates);
    it also stops where throughput stops growing (two grid steps in a row gaining < 5%, see
    :func:`_time_grid`), so the grid reaches the memory ceiling only while larger batches still pay.
    ``memory_probe`` / ``time_probe`` replace the PyTorch probes (tests, other devices).
    ``optimizer``: the run's optimizer (default: the task's); its state is part of the memory.
    """
    t_start = time.perf_counter()
    task = load_task(task)
    report = progress or _noop
    dev = resolve_device(device)
    settings = optimizer or OptimizerSettings.resolve(task)
    multiple = 8 if amp and dev.type == "cuda" else 1
    limit, limit_reason = task.n_train, "data set"
    if max_batch is not None:
        check_positive_int("max_batch", max_batch, where="profile_hardware")
        if max_batch < limit:
            limit, limit_reason = max_batch, "max_batch"
    if amp and dev.type != "cuda":
        raise ConfigError("automatic mixed precision (--amp) needs a CUDA device; drop --amp on the CPU")
    torch.manual_seed(seed)
    smallest = smallest_batch(build_model(task))   # BatchNorm trains on 2 examples or more
    if limit < smallest:
        raise ConfigError(f"task {task.name!r} has BatchNorm, which needs batches of at least {smallest}; "
                          f"the largest batch allowed is {limit} ({limit_reason}); raise it to {smallest} or more")
    facts = device_facts(dev)
    budget, _ = resolve_budget(memory_budget, dev)
    memory_probe, method = _memory_probe(task, dev, amp, seed, settings, memory_probe)
    cache: dict[int, ProbeResult] = {}

    def counted(b: int) -> ProbeResult:
        if b not in cache:
            cache[b] = memory_probe(b)
            r = cache[b]
            report("memory", len(cache), None,
                   f"B={b}: {'out of memory' if r.oom else format_bytes(r.peak_bytes)}")
        return cache[b]

    ceiling: Optional[Ceiling] = None
    if memory_probe is not None:
        ceiling = find_ceiling(counted, budget, limit, limit_reason=limit_reason, multiple=multiple,
                               smallest=smallest)
        top, limited_by = ceiling.max_batch, ceiling.limited_by
    else:
        top, limited_by = limit - (limit % multiple if limit >= multiple else 0), limit_reason

    sizes = sorted({b for b in (grid or batch_grid(top, multiple, smallest)) if smallest <= b <= top})
    if len(sizes) < 2:
        sizes = sorted({smallest, top}) if top > smallest else [top]
    if time_probe is None:
        time_probe = step_time_probe(StepRunner(task, dev, amp, seed, settings), warmup, repeats,
                                     max_seconds_per_point)
    timings, notes = _time_grid(time_probe, sizes, max_step_seconds, report)
    # Release the timing model (and, on CUDA, its cached blocks) before more memory probes run.
    del time_probe
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    peaks = {t.batch: counted(t.batch).peak_bytes for t in timings} if memory_probe is not None else {}
    points = [ProfilePoint(t.batch, t.seconds, t.spread, t.batch / t.seconds, peaks.get(t.batch), t.repeats)
              for t in timings]
    if len(points) >= 2:
        tfit = fit_step_time([p.batch for p in points], [p.seconds for p in points])
        alpha, beta, r2 = tfit.intercept, tfit.slope, tfit.r2
        residuals = [r / p.seconds for r, p in zip(tfit.residuals, points)]
    else:  # a one-example training set: no slope to fit
        alpha, beta, r2, residuals = points[0].seconds, 0.0, float("nan"), [0.0]
    model = StepTimeModel(alpha, beta, tuple((p.batch, p.seconds) for p in points))
    probes = list(cache.values())
    mfit = fit_memory(probes) if ceiling is not None else None  # every probe, the grid's included
    return HardwareProfile(
        task=task.name, parameters=task.parameter_count(), device=facts, amp=amp,
        max_batch=top, limited_by=limited_by, memory_budget=budget if memory_probe is not None else None,
        memory_method=method,
        m0=mfit.intercept if mfit else None, m1=mfit.slope if mfit else None, memory_r2=mfit.r2 if mfit else None,
        alpha=alpha, beta=beta, r2=r2, residuals=residuals, points=points, memory_probes=probes,
        ceiling_steps=ceiling.steps if ceiling else 0, over_budget_steps=ceiling.over_budget if ceiling else 0,
        knee=knee(model, KNEE_GAIN), knee_fit=knee_from_line(alpha, beta, KNEE_GAIN),
        seconds=time.perf_counter() - t_start,
        notes=notes + _load_note(facts) + jump_notes([(p.batch, p.seconds) for p in points]),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        optimizer=fields_to_dict(settings),
    )


def _memory_probe(task: Task, dev: torch.device, amp: bool, seed: int, settings: OptimizerSettings,
                  given: Optional[Probe]) -> tuple[Optional[Probe], str]:
    """The memory probe for ``dev`` and how it measures (None where memory cannot be measured)."""
    if given is not None:
        return given, "custom probe"
    if dev.type == "cuda":
        return cuda_memory_probe(task, dev, amp, seed, settings), "cuda peak reserved bytes"
    ok, why = cpu_memory_supported()
    if not ok:
        return None, f"not measured: {why}"
    return cpu_memory_probe(task, amp, seed, settings), "cpu peak resident size of a forked child"


def _time_grid(time_probe: TimeProbe, sizes: list[int], max_step_seconds: Optional[float],
               report: Progress) -> tuple[list[StepTiming], list[str]]:
    """Time each batch of ``sizes`` in order, stopping early where larger batches add nothing to learn.

    Two stopping rules, each written into the profile's notes:

    - one step took longer than ``max_step_seconds``;
    - throughput (examples per second) stopped growing: two grid steps in a row (doublings, on the
      default grid) each gained less than 5% over the best throughput measured so far. From there
      on the device is saturated and the step time grows in proportion to the batch, which the
      fitted line extrapolates; timing on to the memory ceiling only costs time (on a CPU with a
      large data set, minutes at B=4096 and beyond). Two steps, not one, so that one noisy point
      does not cut the grid short; against the best so far, so that a slower point counts as no
      gain. The knee (doubling gains < 10%) is then inside the measured range.
    """
    timings: list[StepTiming] = []
    notes: list[str] = []
    best, flat = 0.0, 0
    for i, b in enumerate(sizes):
        timing = time_probe(b)
        timings.append(timing)
        report("step time", i + 1, len(sizes), f"B={b}: {timing.seconds * 1e3:.3g} ms")
        if b == sizes[-1]:
            break
        if max_step_seconds is not None and timing.seconds > max_step_seconds:
            notes.append(f"step-time grid stopped after B={b}: one step took {timing.seconds:.3g} s "
                         f"(> {max_step_seconds:g} s); larger batches are extrapolated from the fit")
            break
        throughput = b / timing.seconds if timing.seconds > 0 else math.inf
        flat = flat + 1 if i > 0 and throughput < (1 + FLAT_GAIN) * best else 0
        best = max(best, throughput)
        if flat >= FLAT_STEPS:
            first = timings[-1 - FLAT_STEPS].batch
            notes.append(f"step-time grid stopped after B={b}: throughput grew less than {FLAT_GAIN:.0%} over each "
                         f"of the last {FLAT_STEPS} grid steps (from B={first}, best {best:,.0f} examples/s); "
                         "larger batches are extrapolated from the fit")
            break
    return timings, notes
