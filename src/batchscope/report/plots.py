"""Matplotlib helpers shared by every report (an optional extra, imported only when plotting)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError


def pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ConfigError("plots need matplotlib: pip install 'batchscope[plot]'") from e
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: "str | Path") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path
