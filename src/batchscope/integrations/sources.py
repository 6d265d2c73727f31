"""What the adaptive callbacks take as their step time, checked when the callback is built.

Accepted: a :class:`~batchscope.adapt.StepTimeModel` (alpha, beta), ``{"alpha": s, "beta": s}``, a
:class:`~batchscope.hardware.HardwareProfile`, a :class:`~batchscope.plan.find.FindResult` (its
profile), or the path of a saved profile (``batchscope profile --out``) or find result
(``FindResult.save``, ``batchscope find --out``), as ``AdaptiveConfig(profile=path)`` takes a path.
Anything else, or numbers that cannot be a step time (nan, negative, zero: refused by
:class:`~batchscope.hardware.steptime.StepTimeModel` itself), is a ConfigError before training
starts, not an AttributeError or ZeroDivisionError in the middle of it.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError

ACCEPTED = ("a StepTimeModel(alpha, beta), {'alpha': s, 'beta': s[, 'measured': [[batch, s], ...]]}, a "
            "HardwareProfile, a FindResult, or the path of a saved profile or find result")


def check_line(alpha, beta, where: str, measured=()):
    """The one StepTimeModel built from these numbers (its own checks run), the error naming ``where``."""
    from ..adapt import StepTimeModel

    try:
        return StepTimeModel(alpha, beta, measured or ())   # it checks the points too, any container
    except ConfigError as e:
        raise ConfigError(f"The step time of {where}: {e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"The step time of {where} has alpha={alpha!r}, beta={beta!r}: {e}; give finite numbers of "
                          "seconds, as profile_hardware measures them.") from None


def _from_mapping(d: dict, where: str, source: str):
    from ..hardware import HardwareProfile
    from ..plan.find_file import HARDWARE_SCHEMA, is_find_document

    if is_find_document(d):
        return HardwareProfile.from_dict(d["profile"])
    if d.get("schema") == HARDWARE_SCHEMA or "points" in d:
        return HardwareProfile.from_dict(d)
    missing = [k for k in ("alpha", "beta") if k not in d]
    if missing:
        raise ConfigError(f"The step time of {where} ({source}) needs 'alpha' and 'beta' (seconds per step and per "
                          f"example); it has no {' or '.join(repr(k) for k in missing)} (keys: "
                          f"{', '.join(map(repr, d)) or 'none'}). Give both, or {ACCEPTED}.")
    return check_line(d["alpha"], d["beta"], where, d.get("measured", ()))


def _from_file(path: Path, where: str):
    from ..plan.find_file import read_document

    doc = read_document(path, what=f"the step-time file of {where}",
                        fix="write one with `batchscope profile --task NAME --out FILE`, FindResult.save(path) or "
                            "`batchscope find --out FILE`")
    try:
        return _from_mapping(doc, where, f"file {str(path)!r}")
    except ConfigError as e:
        if "alpha" in doc or "profile" in doc:
            raise
        raise ConfigError(f"{str(path)!r} is neither a hardware profile nor a find result (keys: "
                          f"{', '.join(sorted(doc)[:6]) or 'none'}); give {where} {ACCEPTED}") from e


def resolve_step_time(value, where: str):
    """The step-time model or hardware profile that ``value`` stands for (see the module docstring)."""
    from ..adapt import StepTimeModel
    from ..hardware import HardwareProfile
    from ..plan.find import FindResult

    if isinstance(value, FindResult):
        return value.profile
    if isinstance(value, (HardwareProfile, StepTimeModel)):
        return value                       # both checked when they were built
    if isinstance(value, dict):
        return _from_mapping(value, where, "a dict")
    if isinstance(value, (str, Path)):
        return _from_file(Path(value), where)
    if hasattr(value, "alpha") and hasattr(value, "beta"):
        return value if isinstance(value, StepTimeModel) else check_line(value.alpha, value.beta, where,
                                                                          getattr(value, "measured", ()) or ())
    raise ConfigError(f"The 'step_time' parameter of {where} must be {ACCEPTED}. Got {type(value).__name__} "
                      f"({value!r:.60}) instead.")


def check_profile_model(step_time, model, where: str) -> None:
    """Refuse a profile measured for another model (its step times and ceiling would be wrong)."""
    from ..hardware import HardwareProfile

    if not isinstance(step_time, HardwareProfile):
        return
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if step_time.parameters != n:
        raise ConfigError(f"the profile given to {where} was measured for {step_time.task!r} "
                          f"({step_time.parameters:,} parameters), not for this {type(model).__name__} ({n:,} "
                          "parameters); profile this model (profile_hardware(task_from_...)) or run find on it")
