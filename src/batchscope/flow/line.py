"""A production line: stations in order, an order quantity, a process batch and a transfer batch.

The model (every simulation and closed form in :mod:`batchscope.flow` follows it):

* The order of ``order_quantity`` units is released to the first station at time 0 (all its
  material is there at once).
* It is made in **process batches** of ``process_batch`` units; the last one holds what is left
  (``order_quantity mod process_batch``) when the batch does not divide the order. A station does
  one **set-up** per process batch before the first unit of that batch. The set-up needs the
  batch's first unit to have arrived (set-ups are not done in advance) and a free resource.
* A station with several parallel **resources** gives each process batch to one resource, which
  keeps it from set-up to the last unit, so one set-up per batch per station holds and the
  capacity is ``resources * B / (setup + B * unit_time)``. Waiting process batches are served in
  order of arrival.
* Units are processed one at a time, in order, and leave a station in **transfer batches** of
  ``transfer_batch`` units, taken within a process batch; the last transfer batch of a process
  batch holds the rest when the transfer batch does not divide it. Moving takes no time. The last
  station also releases finished units in transfer batches (to shipping). A station may set its
  own transfer batch (``Station.transfer_batch``), for example a pipeline's flush.
* Processing times are drawn per unit and station from a named distribution with the station's
  mean ``unit_time`` and coefficient of variation ``cv``; set-up times are fixed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Optional, Sequence

from ..errors import ConfigError, check_positive_int
from .distributions import check_distribution, is_random, mean_of


def _time(name: str, value, where: str, *, positive: bool) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(value, bool) or not math.isfinite(v) or v < 0 or (positive and v == 0):
        need = "a positive finite number" if positive else "a non-negative finite number"
        raise ConfigError(f"The '{name}' parameter of {where} must be {need} (a time). Got {value!r} instead.")
    return v


@dataclass(frozen=True)
class Station:
    name: str
    unit_time: float                 # mean processing time per unit (time units of the line)
    setup: float = 0.0               # set-up time per process batch
    resources: int = 1               # identical parallel resources (machines, workers)
    distribution: str = "deterministic"
    cv: float = 0.0                  # coefficient of variation of the unit time (std / mean)
    transfer_batch: Optional[int] = None   # overrides the line's transfer batch for units leaving here

    def __post_init__(self):
        where = f"station {self.name!r}"
        object.__setattr__(self, "unit_time", _time("unit_time", self.unit_time, where, positive=True))
        object.__setattr__(self, "setup", _time("setup", self.setup, where, positive=False))
        check_positive_int("resources", self.resources, where=where)
        check_distribution(self.distribution, self.cv, where=where)
        if self.distribution == "exponential":
            object.__setattr__(self, "cv", 1.0)
        if self.transfer_batch is not None:
            check_positive_int("transfer_batch", self.transfer_batch, where=where)

    @property
    def random(self) -> bool:
        return is_random(self.distribution)

    @property
    def mean_unit_time(self) -> float:
        """Exact mean of the drawn unit times (differs from unit_time only for the truncated normal)."""
        return mean_of(self.distribution, self.unit_time, self.cv)

    def capacity(self, process_batch: int) -> float:
        return capacity(self.setup, self.mean_unit_time, process_batch, self.resources)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Station":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        name = d.get("name", "?")
        if unknown:
            raise ConfigError(f"station {name!r} has unknown field(s) {sorted(unknown)}; "
                              f"allowed: {sorted(known)}")
        if "name" not in d or "unit_time" not in d:
            raise ConfigError(f"every station needs 'name' and 'unit_time'. Got {d!r} instead.")
        return cls(**d)


def capacity(setup: float, unit_time: float, process_batch: int, resources: int = 1) -> float:
    """Units per time a station can make in process batches of B: resources * B / (setup + B * p).
    Set-up is paid once per batch, so it matters less as B grows; the limit is resources / p."""
    return resources * process_batch / (setup + process_batch * unit_time)


@dataclass(frozen=True)
class Line:
    stations: tuple[Station, ...]
    order_quantity: int
    process_batch: Optional[int] = None     # default: the whole order
    transfer_batch: Optional[int] = None    # default: the process batch
    name: str = "line"
    time_unit: str = "min"

    def __post_init__(self):
        object.__setattr__(self, "stations", tuple(self.stations))
        if not self.stations:
            raise ConfigError(f"The line {self.name!r} has no stations. Give at least one station "
                              f"(name, unit_time, optionally setup, resources, distribution, cv).")
        names = [s.name for s in self.stations]
        if len(set(names)) != len(names):
            raise ConfigError(f"Station names must be unique. Got {names} instead.")
        check_positive_int("order_quantity", self.order_quantity, where=f"line {self.name!r}")
        if self.process_batch is None:
            object.__setattr__(self, "process_batch", self.order_quantity)
        check_positive_int("process_batch", self.process_batch, where=f"line {self.name!r}")
        if self.transfer_batch is None:
            object.__setattr__(self, "transfer_batch", self.process_batch)
        check_positive_int("transfer_batch", self.transfer_batch, where=f"line {self.name!r}")
        q, n = self.process_batch, self.order_quantity
        if q > n:
            raise ConfigError(f"The process batch ({q}) is larger than the order quantity ({n}). "
                              f"Use a process batch of at most {n}.")
        for label, t in [("line", self.transfer_batch)] + [(f"station {s.name!r}", s.transfer_batch)
                                                             for s in self.stations]:
            if t is not None and t > q:
                raise ConfigError(f"The transfer batch of {label} ({t}) is larger than the process batch ({q}); "
                                  f"units move within a process batch, so use a transfer batch of at most {q}.")

    # -- derived facts -------------------------------------------------------------------------
    @property
    def random(self) -> bool:
        return any(s.random for s in self.stations)

    def transfer_batch_at(self, i: int) -> int:
        t = self.stations[i].transfer_batch
        return self.transfer_batch if t is None else t

    def process_batches(self) -> list[tuple[int, int]]:
        """[start, end) unit ranges of the process batches, in order."""
        q, n = self.process_batch, self.order_quantity
        return [(a, min(a + q, n)) for a in range(0, n, q)]

    def capacities(self) -> list[float]:
        return [s.capacity(self.process_batch) for s in self.stations]

    def bottleneck(self) -> int:
        """Index of the station with the lowest capacity (the first one on ties)."""
        caps = self.capacities()
        return caps.index(min(caps))

    @property
    def value_added_time(self) -> float:
        """Mean processing time one unit receives on the whole line."""
        return math.fsum(s.mean_unit_time for s in self.stations)

    def with_(self, **changes) -> "Line":
        """A copy with some fields changed (validated again). Lowering the process batch below the
        transfer batch also lowers the transfer batch, which a sweep over process batches needs."""
        if "process_batch" in changes and "transfer_batch" not in changes:
            changes["transfer_batch"] = min(self.transfer_batch, changes["process_batch"])
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return {"name": self.name, "time_unit": self.time_unit, "order_quantity": self.order_quantity,
                "process_batch": self.process_batch, "transfer_batch": self.transfer_batch,
                "stations": [s.to_dict() for s in self.stations]}

    @classmethod
    def from_dict(cls, d: dict) -> "Line":
        if not isinstance(d, dict):
            raise ConfigError(f"A line must be a table/object with 'stations' and 'order_quantity'. Got {d!r}.")
        allowed = {"name", "time_unit", "order_quantity", "process_batch", "transfer_batch", "stations"}
        unknown = set(d) - allowed
        if unknown:
            raise ConfigError(f"The line has unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        if "order_quantity" not in d:
            raise ConfigError("The line needs 'order_quantity' (units in the order).")
        stations = d.get("stations") or []
        if not isinstance(stations, list):
            raise ConfigError(f"'stations' must be a list of tables/objects. Got {stations!r} instead.")
        return cls(stations=tuple(Station.from_dict(s) for s in stations),
                   **{k: v for k, v in d.items() if k != "stations"})


def make_line(unit_times: Sequence[float], order_quantity: int, *, setups: Sequence[float] = (),
              resources: Sequence[int] = (), process_batch: Optional[int] = None,
              transfer_batch: Optional[int] = None, distribution: str = "deterministic", cv: float = 0.0,
              names: Sequence[str] = (), **line_fields) -> Line:
    """A line from per-station lists (the CLI's flags); missing set-ups are 0, resources 1."""
    n = len(unit_times)
    for label, seq in (("setups", setups), ("resources", resources), ("names", names)):
        if seq and len(seq) != n:
            raise ConfigError(f"Give one value per station for '{label}': {n} station(s) from the unit times, "
                              f"got {len(seq)} ({list(seq)}).")
    stations = tuple(
        Station(name=names[i] if names else f"S{i + 1}", unit_time=unit_times[i],
                setup=setups[i] if setups else 0.0, resources=resources[i] if resources else 1,
                distribution=distribution, cv=cv)
        for i in range(n))
    return Line(stations, order_quantity, process_batch, transfer_batch, **line_fields)


def example_line() -> Line:
    """A small machining cell, times in minutes: the press has a long set-up, two parallel presses
    and variable cycle times; the mill is the bottleneck at this process batch."""
    return Line(
        stations=(Station("saw", unit_time=1.0, setup=10.0),
                  Station("press", unit_time=3.0, setup=30.0, resources=2, distribution="lognormal", cv=0.5),
                  Station("mill", unit_time=2.0, setup=20.0),
                  Station("inspect", unit_time=0.5)),
        order_quantity=60, process_batch=20, transfer_batch=5, name="example cell", time_unit="min")
