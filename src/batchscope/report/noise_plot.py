"""B_simple against training loss, as a PNG a person can open (matplotlib, an optional extra)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError
from ..noise.stats import NoisePoint
from .plots import pyplot, save


def plot_trajectory(history: Sequence[NoisePoint], path: "str | Path", title: str = "", level: float = 0.9) -> Path:
    """Smoothed B_simple (with its interval) against the smoothed training loss; loss falls to the right."""
    plt = pyplot()
    pts = [p for p in history if math.isfinite(p.loss) and math.isfinite(p.b_simple) and p.b_simple > 0]
    if not pts:
        raise ConfigError("nothing to plot: no step has a finite, positive B_simple yet; train longer")
    loss = [p.loss for p in pts]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    # The interval is clipped to a decade around the trajectory: early on it is [0, inf).
    bottom, top = min(p.b_simple for p in pts) / 10, max(p.b_simple for p in pts) * 10
    ax.fill_between(loss, [max(p.low, bottom) for p in pts], [min(p.high, top) for p in pts], alpha=0.25,
                    label=f"{level:.0%} interval")
    ax.set_ylim(bottom, top)
    ax.plot(loss, [p.b_simple for p in pts], lw=1.5, label="B_simple (EMA of tr Σ / EMA of |G|²)")
    ax.set_xlabel("training loss (smoothed)")
    ax.set_ylabel("B_simple (examples)")
    ax.set_yscale("log")
    ax.invert_xaxis()
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or "gradient noise scale as training proceeds")
    ax.legend(loc="best", fontsize=8)
    return save(fig, path)
