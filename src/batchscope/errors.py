"""One exception family for everything a user can get wrong.

The CLI prints ``str(error)`` as one line and exits non-zero; library users catch
:class:`BatchscopeError`. Messages say what was wrong, the value received, and the fix.
"""

from __future__ import annotations


class BatchscopeError(Exception):
    """Base class: a problem with the input or the run that the user can fix.

    ``measured`` holds what the failed call had measured before it stopped (JSON-ready values by
    name), or None when it had measured nothing; :func:`batchscope.serialize.save_measured` writes it.
    """

    measured: "dict | None" = None

    def keep(self, **measured) -> "BatchscopeError":
        """Add to what this error carries; items already kept by a deeper call win (they are more specific)."""
        self.measured = {**measured, **(self.measured or {})}
        return self


class TaskError(BatchscopeError):
    """The task could not be loaded or is malformed."""


class ConfigError(BatchscopeError, ValueError):
    """A parameter is out of range or inconsistent with the task."""


class DivergedError(BatchscopeError):
    """Training produced a non-finite loss; carries the history measured before it."""

    def __init__(self, message: str, history=None):
        super().__init__(message)
        if history:
            self.keep(history=list(history))

    @property
    def history(self) -> list:
        return list((self.measured or {}).get("history", []))


def check_positive_int(name: str, value, *, where: str = "") -> int:
    """The one template for integer parameters (scikit-learn style)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        at = f" of {where}" if where else ""
        raise ConfigError(f"The '{name}' parameter{at} must be a positive integer. Got {value!r} instead.")
    return value


def check_positive_float(name: str, value, *, where: str = "") -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not (v > 0 and v != float("inf")):
        at = f" of {where}" if where else ""
        raise ConfigError(f"The '{name}' parameter{at} must be a positive finite number. Got {value!r} instead.")
    return v


# Above this a learning rate overflows the optimizer's float32 arithmetic in the first step (Adam
# divides it by 1 - beta1 = 0.1; float32 ends at 3.4e38) instead of diverging as a number: a rate
# that large is a typing slip, refused with the others.
MAX_LR = 1e30


def check_lr(name: str, value, *, where: str = "") -> float:
    """A learning rate: positive, finite and at most :data:`MAX_LR`."""
    v = check_positive_float(name, value, where=where)
    if v > MAX_LR:
        at = f" of {where}" if where else ""
        raise ConfigError(f"The '{name}' parameter{at} must be a learning rate up to {MAX_LR:g} (a larger one "
                          f"overflows the optimizer's float32 arithmetic). Got {value!r} instead.")
    return v
