"""The one matplotlib setup every plot uses (an optional extra, imported only when a plot is drawn).

Files only, never a window (the Agg backend); each PNG is written atomically like every other output.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..serialize import write_bytes

DPI = 120


def pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ConfigError("plots need matplotlib: pip install 'batchscope[plot]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: "str | Path", dpi: int = DPI) -> Path:
    """Lay out, write (temporary name, then rename) and close ``fig``."""
    fig.tight_layout()
    try:
        return write_bytes(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        pyplot().close(fig)
