"""One exception family for everything a user can get wrong.

The CLI prints ``str(error)`` as one line and exits non-zero; library users catch
:class:`BatchscopeError`. Messages say what was wrong, the value received, and the fix.
"""

from __future__ import annotations

TYPE_CHECKING = False   # typing.TYPE_CHECKING without importing typing: this module stays import-free
if TYPE_CHECKING:
    from collections.abc import Callable


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


def parameter_message(name: str, what: str, value, *, where: str = "") -> str:
    """The one message template for a parameter out of range (scikit-learn style)."""
    at = f" of {where}" if where else ""
    return f"The '{name}' parameter{at} must be {what}. Got {value!r} instead."


class Rule:
    """What a parameter must be: ``what`` completes "must be ..."; ``optional``: None is accepted.

    A plain class: this module is imported before the command line can handle Ctrl-C, so it stays light.
    """

    __slots__ = ("what", "test", "optional")

    def __init__(self, what: str, test: "Callable[[object], bool]", optional: bool = False):
        self.what, self.test, self.optional = what, test, optional


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_integral(v) -> bool:
    """int or any integer type (numpy's too: they have ``__index__``), never bool."""
    return hasattr(type(v), "__index__") and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < float("inf")


POSITIVE_INT = Rule("a positive integer", lambda v: _is_int(v) and v > 0)
POSITIVE_NUMBER = Rule("a positive finite number", lambda v: _is_number(v) and v > 0)
FRACTION = Rule("a fraction in (0, 1]", lambda v: _is_number(v) and 0 < v <= 1)
INTEGER = Rule("an integer", _is_integral)


def one_of(choices) -> Rule:
    return Rule(f"one of {', '.join(map(str, choices))}", lambda v: v in tuple(choices))


def optional(rule: Rule) -> Rule:
    return Rule(rule.what, rule.test, optional=True)


def check_params(where: str, rules: "dict[str, Rule]", **values) -> None:
    """Check each value against its declared rule; the first that fails raises :class:`ConfigError`."""
    for name, value in values.items():
        rule = rules[name]
        if not (value is None and rule.optional) and not rule.test(value):
            raise ConfigError(parameter_message(name, rule.what, value, where=where))


def check_positive_int(name: str, value, *, where: str = "") -> int:
    """The one template for integer parameters (scikit-learn style)."""
    if not POSITIVE_INT.test(value):
        raise ConfigError(parameter_message(name, POSITIVE_INT.what, value, where=where))
    return value


def check_positive_float(name: str, value, *, where: str = "") -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not (v > 0 and v != float("inf")):
        raise ConfigError(parameter_message(name, POSITIVE_NUMBER.what, value, where=where))
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
