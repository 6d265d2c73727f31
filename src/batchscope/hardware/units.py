"""Byte sizes people type (``512MB``, ``2GiB``, ``40%``) and read back."""

from __future__ import annotations

import re

from ..errors import ConfigError

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
MAX_BYTES = 2**60   # 1 EiB: larger sizes are typing slips, and past about 1e308 they are no number at all
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z%]*)\s*$", re.IGNORECASE)


def parse_bytes(text: "str | int | float", available: "int | None" = None, *, name: str = "memory_budget") -> int:
    """Bytes from ``"512MB"`` (SI), ``"2GiB"`` (binary), a plain number, or ``"40%"`` of ``available``."""
    if isinstance(text, bool):
        raise ConfigError(f"The '{name}' parameter must be a size such as 512MB, 2GiB or 40%. Got {text!r} instead.")
    if isinstance(text, (int, float)):
        value, unit = float(text), ""
    else:
        m = _PATTERN.match(str(text))
        if not m:
            raise ConfigError(f"The '{name}' parameter must be a size such as 512MB, 2GiB or 40%. "
                              f"Got {text!r} instead.")
        value, unit = float(m.group(1)), m.group(2).lower()
    if unit == "%":
        if available is None:
            raise ConfigError(f"The '{name}' parameter is a percentage ({text!r}) but the available memory "
                              "is unknown here; give a size such as 512MB instead")
        if not 0 < value <= 100:
            raise ConfigError(f"The '{name}' parameter must be a percentage in (0, 100]. Got {text!r} instead.")
        return int(available * value / 100)
    if unit not in _UNITS:
        raise ConfigError(f"The '{name}' parameter has an unknown unit {unit!r} in {text!r}; "
                          "use B, KB, MB, GB, KiB, MiB, GiB or %")
    size = value * _UNITS[unit]
    if not size <= MAX_BYTES:   # also nan and inf: 1e400 reads as inf, 1e300GB overflows to it
        raise ConfigError(f"The '{name}' parameter must be a size up to 1 EiB (no device has more memory). "
                          f"Got {text!r} instead.")
    n = int(size)
    if n <= 0:
        raise ConfigError(f"The '{name}' parameter must be a positive size. Got {text!r} instead.")
    return n


def format_bytes(n: "float | None") -> str:
    """``1.50 GiB`` style, binary units (what memory is sold and reported in)."""
    if n is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"
