"""B_simple against training loss, as a PNG a person can open (matplotlib, an optional extra)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError
from .stats import NoisePoint


def plot_trajectory(history: Sequence[NoisePoint], path: "str | Path", title: str = "", level: float = 0.9) -> Path:
    """Smoothed B_simple (with its interval) against the smoothed training loss; loss falls to the right."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ConfigError("--plot needs matplotlib: pip install 'batchscope[plot]'") from e
    pts = [p for p in history if math.isfinite(p.loss) and math.isfinite(p.b_simple) and p.b_simple > 0]
    if not pts:
        raise ConfigError("nothing to plot: no step has a finite, positive B_simple yet; train longer")
    loss = [p.loss for p in pts]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    top = max(p.b_simple for p in pts) * 10
    ax.fill_between(loss, [max(p.low, 1e-12) for p in pts], [min(p.high, top) for p in pts], alpha=0.25,
                    label=f"{level:.0%} interval")
    ax.plot(loss, [p.b_simple for p in pts], lw=1.5, label="B_simple (EMA of tr Σ / EMA of |G|²)")
    ax.set_xlabel("training loss (smoothed)")
    ax.set_ylabel("B_simple (examples)")
    ax.set_yscale("log")
    ax.invert_xaxis()
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or "gradient noise scale as training proceeds")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
