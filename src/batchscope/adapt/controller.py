"""BatchSizeController: the planner of ``find``, re-run every K steps with the live noise scale.

Progress per second at global batch B is 1 / (S(B)·t(B)) with S(B) = S_min (1 + B_crit/B) and t(B)
the hardware profile's step time (with accumulation when B exceeds the memory ceiling); maximising
it is Pollux's goodput (Qiao et al., OSDI 2021) and the argmin ``find`` computes. The candidates are
evaluated by :func:`batchscope.plan.recommend.evaluate_candidates`, the same code ``find`` uses, so
the two can never disagree on the model; only B_crit differs (measured now instead of predicted).

The critical batch B_crit it plans with is ``noise_factor`` x the monitor's B_simple. S(B) above is the model the
sweep's critical batch is fitted with, and over the validation suite's tasks the measured B_crit
was ``plan.critical_batch.LIVE_FACTOR`` x the B_simple averaged over the run to the target
(geometric mean over the suite's tasks; ``plan.critical_batch.live_calibration()`` states the
figures). Both the batch and the learning rate (:meth:`b_crit`) use the calibrated value;
``noise_factor=1`` plans with raw B_simple.

The batch may fall below the start down to ``min_batch`` (default: a quarter of the start): early in
training B_crit is small and a smaller batch then makes more progress per example. The floor keeps
the batch within a factor the user's known-good start can vouch for (a model with BatchNorm, say,
was only checked at the start's micro-batches).

Rules that keep it safe to leave running:

- it holds the starting batch until the monitor has ``min_samples`` finite measurements;
- a non-finite or non-positive estimate is held (the batch stays), counted in ``nonfinite``, and
  never acted on;
- it moves only when the predicted time per unit of progress falls by more than ``threshold``
  (AdaptDL's 5%), so an estimate wandering around a boundary between two candidates cannot flap;
- with ``confident`` (on by default) the move must also clear the threshold
  at the end of the estimate's interval that argues against it (the low end for growth, the high
  end for shrinking): the first few measurements are noisy, and a batch grown on one lucky ratio
  is paid for at every later step;
- it moves at most one doubling or halving per decision (:data:`MAX_MOVE`): the model's best batch
  may lie further away (the decision records it as ``goal``), but a larger jump multiplies the rate
  (SGD) by up to as much on an estimate nobody has checked at the new batch; the next decision,
  with the estimate re-measured there, takes the next factor of two;
- after a move it holds for ``dwell`` steps (the policy measures the steps after a move, so the
  monitor has ``min_samples`` measurements at the new batch before it moves again);
- a batch a rolled-back move went to (:meth:`roll_back`) is not proposed again, nor any beyond it,
  until the step the roll-back barred it to;
- the per-device micro-batch stays under the memory ceiling (the batch grows beyond it by gradient
  accumulation), and the global batch stays within ``max_batch`` and the data set.

Each :class:`Decision` records in ``checks`` what it checked: the move limit and the goal, the
dwell, a barred batch, and (added by the policy) the rate's stability bound or a roll-back.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Optional, Sequence, Union

from ..errors import ConfigError, check_positive_int
from ..hardware.steptime import StepTimeModel  # the one step-time model (batchscope.adapt re-exports it)
from ..plan import recommend as rec
from ..plan.critical_batch import LIVE_FACTOR

DEFAULT_EVERY = 50          # steps between decisions
DEFAULT_THRESHOLD = 0.05    # AdaptDL: re-allocate only for a predicted speed-up above 5%
DEFAULT_MIN_SAMPLES = 5     # finite noise measurements before the first decision
SHRINK_LIMIT = 4            # the default floor: the start batch / 4
MAX_MOVE = 2                # the largest factor one decision may change the batch by (one doubling or halving)


@dataclass(frozen=True)
class Decision:
    """One look at the noise scale: what was seen, what was predicted, what was done."""

    step: int
    batch_size: int           # global batch from now on
    micro_batch: int          # per device and pass
    accumulation: int         # passes per optimizer step on each device
    previous: int             # global batch before this decision
    b_crit: float             # predicted critical batch, noise_factor x B_simple, as acted on (nan: none yet)
    b_crit_low: float
    b_crit_high: float
    gain: float               # predicted fall in time per unit progress of the best candidate vs the current batch
    changed: bool
    reason: str
    goal: int = 0             # the best batch over every candidate (the move goes at most MAX_MOVE toward it)
    checks: dict = field(default_factory=dict)   # what was checked: limit, dwell, barred, bound, rollback

    def __post_init__(self):
        # keys in one order, so a decision read back from a JSON checkpoint is the same decision
        object.__setattr__(self, "checks", _sorted(self.checks))

    def to_dict(self) -> dict:
        return asdict(self)


def _sorted(d):
    return {k: _sorted(d[k]) for k in sorted(d)} if isinstance(d, dict) else d


def _estimate_parts(estimate, factor: float = 1.0) -> tuple[float, float, float, int]:
    """(B_crit, low, high, finite samples) from a NoiseEstimate or a B_simple number (x ``factor``), or None."""
    if estimate is None:
        return math.nan, math.nan, math.nan, 0
    if isinstance(estimate, (int, float)):
        return factor * float(estimate), math.nan, math.nan, 1_000_000
    return (factor * float(estimate.b_simple), factor * float(estimate.low), factor * float(estimate.high),
            int(estimate.n_samples))


def check_limits(*, start_batch: int, n_train: int, memory_ceiling: Optional[int] = None,
                 max_batch: Optional[int] = None, min_batch: Optional[int] = None, devices: int = 1) -> int:
    """The one check of an adaptive run's batch limits (every entry point calls it); returns the floor.

    The floor defaults to a quarter of the start, at least two per device, a multiple of the devices.
    """
    for name, value in (("start_batch", start_batch), ("n_train", n_train), ("devices", devices)):
        check_positive_int(name, value)
    for name, value in (("memory_ceiling", memory_ceiling), ("max_batch", max_batch), ("min_batch", min_batch)):
        if value is not None:
            check_positive_int(name, value)
    if start_batch > n_train:
        raise ConfigError(f"The 'start_batch' parameter must be at most the data set's {n_train} examples. "
                          f"Got {start_batch!r} instead.")
    if start_batch % devices:
        raise ConfigError(f"The 'start_batch' parameter must be a multiple of the {devices} devices. "
                          f"Got {start_batch!r} instead.")
    if max_batch is not None and max_batch < start_batch:
        raise ConfigError(f"The 'max_batch' parameter must be at least the starting batch {start_batch}. "
                          f"Got {max_batch!r} instead.")
    if min_batch is None:
        floor = max(2 * devices, start_batch // SHRINK_LIMIT)
        return min(start_batch, -(-floor // devices) * devices)
    if not 2 <= min_batch <= start_batch:
        raise ConfigError(f"The 'min_batch' parameter must be in 2..{start_batch} (the starting batch; a measured "
                          f"step needs two examples). Got {min_batch!r} instead.")
    return min_batch


class BatchSizeController:
    """Picks the global batch minimising predicted time per unit of progress, every ``every`` steps.

    step_time: a :class:`StepTimeModel` or a hardware profile (its alpha, beta and measured points).
    start_batch: the batch to train with until there is an estimate (and the reference for ``gain``).
    n_train: the data set size (the batch never exceeds it).
    memory_ceiling: largest micro-batch that fits one device (None: not limiting).
    max_batch: the user's cap on the global batch. min_batch: the smallest batch considered
        (default: a quarter of the start, at least two per device; pass ``start_batch`` to only grow).
    devices: data-parallel ranks; the global batch is a multiple of it.
    min_samples: finite noise measurements needed before the first move.
    confident: a move must also pay off at the interval's end against it (see the module docstring).
    noise_factor: B_crit = noise_factor x B_simple (see the module docstring; 1: raw B_simple).
    dwell: steps to hold after a move before the next (0: none beyond ``every``; the adaptive policy
        passes ``min_samples``, the steps it measures after a move).
    """

    def __init__(self, step_time, *, start_batch: int, n_train: int, memory_ceiling: Optional[int] = None,
                 max_batch: Optional[int] = None, min_batch: Optional[int] = None, devices: int = 1,
                 every: int = DEFAULT_EVERY, threshold: float = DEFAULT_THRESHOLD,
                 min_samples: int = DEFAULT_MIN_SAMPLES, confident: bool = True,
                 noise_factor: float = LIVE_FACTOR, dwell: int = 0):
        self.time_model = step_time if isinstance(step_time, StepTimeModel) else StepTimeModel.from_profile(step_time)
        self.min_batch = check_limits(start_batch=start_batch, n_train=n_train, memory_ceiling=memory_ceiling,
                                      max_batch=max_batch, min_batch=min_batch, devices=devices)
        check_positive_int("every", every)
        if not (0.0 <= threshold < 1.0):
            raise ConfigError(f"The 'threshold' parameter must be in [0, 1). Got {threshold!r} instead.")
        if not (isinstance(noise_factor, (int, float)) and math.isfinite(noise_factor) and noise_factor > 0):
            raise ConfigError(f"The 'noise_factor' parameter must be a positive number. Got {noise_factor!r} instead.")
        self.constraints = rec.Constraints(n_train=n_train, memory_ceiling=memory_ceiling, max_batch=max_batch,
                                           devices=devices)
        self.start_batch = start_batch
        self.noise_factor = float(noise_factor)
        self.every = every
        self.threshold = float(threshold)
        self.min_samples = check_positive_int("min_samples", min_samples)
        self.confident = bool(confident)
        first = rec.layout(start_batch, self.constraints)
        self.batch_size, self.micro_batch, self.accumulation = first.batch_size, first.micro_batch, first.accumulation
        if isinstance(dwell, bool) or not isinstance(dwell, int) or dwell < 0:
            raise ConfigError(f"The 'dwell' parameter must be a whole number of steps >= 0. Got {dwell!r} instead.")
        self.dwell = dwell
        self.last_move: Optional[int] = None     # the step of the last move (a roll-back counts)
        self.barred: list[tuple[int, int, int]] = []   # (from, to, until): `to` and beyond it (away from `from`)
        self.nonfinite = 0                       # estimates held because they were not finite and positive
        self.decisions: list[Decision] = []

    # ---- the pure part ----------------------------------------------------------------------

    def candidates(self) -> list[int]:
        """Powers of two between ``min_batch`` and the limit, plus the current batch (as ``find``)."""
        grid = rec.candidate_batches(self.constraints, smallest=min(self.min_batch, self.batch_size))
        return sorted(set(grid) | {self.batch_size})

    def predict(self, b_crit: float, batches: Optional[Sequence[int]] = None) -> list[rec.Candidate]:
        """Predicted steps and seconds to a common target for each batch, with ``b_crit`` as it is now.

        S_min cancels out of every comparison, so the reference is one step at the current batch.
        """
        inp = rec.Inputs(step_time=self.time_model, b_crit=b_crit, b_crit_low=b_crit, b_crit_high=b_crit,
                         b_ref=self.batch_size, steps_ref=1.0, lr_ref=1.0, optimizer="sgd")
        return rec.evaluate_candidates(inp, self.constraints, list(batches or self.candidates()))

    def due(self, step: int) -> bool:
        """Whether ``step`` (optimizer steps done) is a decision point."""
        return step > 0 and step % self.every == 0

    def b_crit(self, estimate: Union[object, float, None]) -> float:
        """The critical batch planned with: ``noise_factor`` x the estimate's B_simple (NaN without one)."""
        return _estimate_parts(estimate, self.noise_factor)[0]

    def reachable(self, b: int, step: int) -> Optional[str]:
        """Why the batch ``b`` cannot be moved to from the current one at ``step`` (None: it can)."""
        here = self.batch_size
        if b != here and not here / MAX_MOVE <= b <= here * MAX_MOVE:
            return "limit"
        for frm, to, until in self.barred:
            if step < until and b != here and (b >= to if to > frm else b <= to):
                return "barred"
        return None

    def decide(self, step: int, estimate: Union[object, float, None]) -> Decision:
        """Look at ``estimate`` (a NoiseEstimate, a B_simple number, or None) and keep or change the batch."""
        bn, low, high, n = _estimate_parts(estimate, self.noise_factor)
        if n < self.min_samples:
            return self._record(step, bn, low, high, 0.0, None, f"waiting for an estimate ({n} of "
                                                                  f"{self.min_samples} measurements)")
        if not (math.isfinite(bn) and bn > 0):
            self.nonfinite += 1
            return self._record(step, bn, low, high, 0.0, None, f"non-finite noise estimate {bn} held "
                                                                  f"({self.nonfinite} so far)")
        best, gain, goal, checks = self._best(bn, step)
        if best.batch_size == self.batch_size or gain <= self.threshold:
            return self._record(step, bn, low, high, gain, None,
                                f"best batch {best.batch_size} saves {gain:.1%}, not above {self.threshold:.0%}",
                                goal, checks)
        end = low if best.batch_size > self.batch_size else high     # the end of the interval against the move
        if self.confident and math.isfinite(low):
            sure = self._gain_of(best.batch_size, end) if math.isfinite(end) and end > 0 else -math.inf
            if sure <= self.threshold:
                return self._record(step, bn, low, high, gain, None,
                                    f"batch {best.batch_size} saves {gain:.1%} at B_crit {bn:.3g} but "
                                    f"{max(sure, -1.0):.1%} at the interval's end {end:.3g}: held", goal, checks)
        if checks["dwell"]["held"]:
            d = checks["dwell"]
            return self._record(step, bn, low, high, gain, None,
                                f"batch {best.batch_size} saves {gain:.1%}, but only {d['since_move']} of "
                                f"{self.dwell} steps since the move at step {self.last_move}: held (dwell)",
                                goal, checks)
        toward = f" (one step toward {goal})" if goal != best.batch_size else ""
        return self._record(step, bn, low, high, gain, best,
                            f"batch {self.batch_size} -> {best.batch_size}{toward}: "
                            f"predicted {gain:.1%} less time per progress", goal, checks)

    def _best(self, bn: float, step: int) -> tuple[rec.Candidate, float, int, dict]:
        """The best candidate it may move to, its gain, the best over all, and what limited the choice."""
        cands = self.predict(bn)
        here = next(c for c in cands if c.batch_size == self.batch_size)
        goal = min(cands, key=lambda c: c.seconds)
        why = {c.batch_size: self.reachable(c.batch_size, step) for c in cands}
        best = min((c for c in cands if why[c.batch_size] is None), key=lambda c: c.seconds)
        since = None if self.last_move is None else step - self.last_move
        checks = {"limit": {"goal": goal.batch_size, "factor": MAX_MOVE,
                            "held_back": goal.batch_size != best.batch_size and why[goal.batch_size] == "limit"},
                  "dwell": {"steps": self.dwell, "since_move": since,
                            "held": since is not None and since < self.dwell}}
        barred = sorted(b for b, w in why.items() if w == "barred")
        if barred:
            checks["barred"] = {"batches": barred, "until": max(u for _, _, u in self.barred if step < u)}
        return best, 1.0 - best.seconds / here.seconds, goal.batch_size, checks

    def _gain_of(self, b: int, bn: float) -> float:
        """Predicted fall in time per progress from the current batch to ``b`` if B_crit were ``bn``."""
        secs = {c.batch_size: c.seconds for c in self.predict(bn, sorted({self.batch_size, b}))}
        return 1.0 - secs[b] / secs[self.batch_size]

    def _record(self, step, bn, low, high, gain, best: Optional[rec.Candidate], reason: str, goal: int = 0,
                checks: Optional[dict] = None) -> Decision:
        previous = self.batch_size
        if best is not None:
            self.batch_size, self.micro_batch, self.accumulation = best.batch_size, best.micro_batch, best.accumulation
            self.last_move = step
        d = Decision(step, self.batch_size, self.micro_batch, self.accumulation, previous, bn, low, high, gain,
                     best is not None, reason, goal or self.batch_size, checks or {})
        self.decisions.append(d)
        return d

    def annotate(self, **checks) -> Decision:
        """Add entries to the last decision's ``checks`` (the policy's rate bound); returns it."""
        d = replace(self.decisions[-1], checks={**self.decisions[-1].checks, **checks})
        self.decisions[-1] = d
        return d

    def roll_back(self, step: int, batch: int, reason: str, *, moved_to: int, bar_until: float, **checks) -> Decision:
        """Go back to ``batch`` after moves that went wrong (the policy restored the state kept before the
        first, a move to ``moved_to``); that batch, and any beyond it, is not proposed before ``bar_until``."""
        failed, lay = self.batch_size, rec.layout(batch, self.constraints)
        self.barred = [b for b in self.barred if b[2] > step] + [(batch, moved_to, bar_until)]
        self.batch_size, self.micro_batch, self.accumulation = lay.batch_size, lay.micro_batch, lay.accumulation
        self.last_move = step
        d = Decision(step, self.batch_size, self.micro_batch, self.accumulation, failed, math.nan, math.nan,
                     math.nan, 0.0, True, reason, self.batch_size, {**checks, "barred": {
                         "batches": [moved_to], "beyond": True, "until": bar_until}})
        self.decisions.append(d)
        return d

    # ---- resume -----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"batch_size": self.batch_size, "micro_batch": self.micro_batch, "accumulation": self.accumulation,
                "nonfinite": self.nonfinite, "decisions": [d.to_dict() for d in self.decisions],
                "last_move": self.last_move, "barred": [list(b) for b in self.barred], "dwell": self.dwell}

    def load_state_dict(self, state: dict) -> None:
        self.batch_size = int(state["batch_size"])
        self.micro_batch = int(state["micro_batch"])
        self.accumulation = int(state["accumulation"])
        self.nonfinite = int(state["nonfinite"])
        self.decisions = [Decision(**d) for d in state["decisions"]]
        self.last_move = state.get("last_move")
        self.barred = [tuple(b) for b in state.get("barred", [])]
        self.dwell = int(state.get("dwell", self.dwell))
