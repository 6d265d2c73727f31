"""The numbers each integration logs, under one set of names."""

from __future__ import annotations

import math
from typing import Optional


def noise_scalars(point, prefix: str = "noise/") -> dict[str, float]:
    """B_simple and its interval from a NoisePoint/NoiseEstimate, finite values only.

    The upper end is unbounded (inf) while the gradient signal cannot yet be told from zero;
    loggers cannot plot inf, so it is left out until it is finite.
    """
    out = {"b_simple": point.b_simple, "b_simple_low": point.low, "b_simple_high": point.high}
    return {prefix + k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}


def first_lr(optimizer) -> Optional[float]:
    groups = getattr(optimizer, "param_groups", None)
    return float(groups[0]["lr"]) if groups else None
