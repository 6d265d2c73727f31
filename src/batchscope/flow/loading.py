"""Reading a line from a TOML or JSON file.

TOML layout (JSON: the same keys)::

    name = "cell"
    time_unit = "min"
    order_quantity = 60
    process_batch = 20
    transfer_batch = 5

    [[stations]]
    name = "saw"
    unit_time = 1.0
    setup = 10.0

    [[stations]]
    name = "press"
    unit_time = 3.0
    setup = 30.0
    resources = 2
    distribution = "lognormal"
    cv = 0.5
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import ConfigError
from .line import Line


def _toml_loads(text: str, path: Path) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised only on Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigError(f"Reading TOML ({path}) needs Python >= 3.11 or the 'tomli' package. "
                              f"Run `pip install tomli`, or write the line as JSON with the same keys.") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None


def load_line(path: "str | Path") -> Line:
    """A :class:`Line` from ``path`` (``.toml`` or ``.json``), validated."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"The line file {path} does not exist. Give a .toml or .json file, or use --example.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"The line file {path} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8 "
                          ".toml or .json.") from None
    if path.suffix.lower() == ".toml":
        data = _toml_loads(text, path)
    elif path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
    else:
        raise ConfigError(f"The line file must end in .toml or .json. Got {path.name!r} instead.")
    return Line.from_dict(data)
