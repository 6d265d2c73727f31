"""An adaptive run as a picture: the batch size it used and the noise scale it measured, per step."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .plots import pyplot, save


def plot_adaptive(adaptive: dict, path: "str | Path", title: str = "") -> Path:
    """Global batch (steps) and the B_crit the controller planned with (line) against optimizer steps, log scale."""
    if not adaptive or not adaptive.get("steps", {}).get("batch_size"):
        raise ConfigError("nothing to plot: the run has no adaptive steps (train with --adaptive)")
    cols = adaptive["steps"]
    steps = list(range(1, len(cols["batch_size"]) + 1))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.step(steps, cols["batch_size"], where="post", lw=2, label="global batch")
    noise = [(s, b) for s, b in zip(steps, cols["b_crit"]) if b is not None and b > 0]
    if noise:
        k = adaptive.get("noise_factor", 1.0)
        ax.plot([s for s, _ in noise], [b for _, b in noise], lw=1, alpha=0.8,
                label=f"B_crit planned with ({k:g} x the smoothed B_simple)")
    moves = [d for d in adaptive.get("decisions", []) if d["changed"]]
    for d in moves:
        ax.axvline(d["step"], color="grey", lw=0.6, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("examples")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or f"adaptive batch: {len(moves)} change(s), measured every {adaptive['measure_every']} steps")
    ax.legend(loc="best", fontsize=8)
    return save(fig, path)
