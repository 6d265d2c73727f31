"""JSON for every result object, exactly round-tripped; the bottom layer every other module may use.

JSON has no inf or NaN, and writing both as ``null`` loses the difference between "unbounded",
"undefined" and "not measured". Here non-finite floats are written as the strings ``"inf"``,
``"-inf"`` and ``"nan"`` and ``None`` stays ``null``, so the four stay distinct.

Reading is driven by the dataclass's field types (:func:`from_dict`): a field typed ``float`` reads
those three strings back as floats, a field typed ``str`` keeps them as text. Inside containers
without a declared element type (``dict``, ``list``, ``Any``) the three strings are read as floats:
they are reserved there.

Every file is written atomically (a temporary name in the same folder, then a rename), so a crash
or Ctrl-C leaves the complete file or none.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import typing
from pathlib import Path
from typing import Any, Union

NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


# Encoding ------------------------------------------------------------------------------------------
def _float(x: float) -> "float | str":
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def fields_to_dict(obj: Any, exclude: tuple[str, ...] = ()) -> dict:
    """A dataclass as a JSON-ready dict of its fields (the generic ``to_dict``)."""
    return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name not in exclude}


def to_jsonable(obj: Any) -> Any:
    """Plain JSON values: dataclasses (their ``to_dict`` when they have one), numpy/torch scalars, paths."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        return _float(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(obj.to_dict()) if hasattr(obj, "to_dict") else fields_to_dict(obj)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_asdict"):  # NamedTuple: by field name
        return to_jsonable(obj._asdict())
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 0) == 0:  # numpy / torch scalars
        return to_jsonable(obj.item())
    if hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist())
    return str(obj)


def dumps(obj: Any, indent: "int | None" = 2) -> str:
    return json.dumps(to_jsonable(obj), indent=indent, allow_nan=False)


# Decoding ------------------------------------------------------------------------------------------
def untyped(value: Any) -> Any:
    """Read a value with no declared type: the reserved strings become floats, containers recursively."""
    if isinstance(value, str):
        return NON_FINITE.get(value, value)
    if isinstance(value, list):
        return [untyped(v) for v in value]
    if isinstance(value, dict):
        return {k: untyped(v) for k, v in value.items()}
    return value


def _to_float(value: Any) -> float:
    if isinstance(value, str) and value in NON_FINITE:
        return NON_FINITE[value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def decode(tp: Any, value: Any) -> Any:
    """``value`` (from JSON) as type ``tp``: the inverse of :func:`to_jsonable` for annotated types."""
    if tp is Any or tp is object or isinstance(tp, (str, typing.ForwardRef)):
        return untyped(value)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union or (origin is not None and type(tp).__name__ == "UnionType"):
        if value is None and type(None) in args:
            return None
        return decode(next(a for a in args if a is not type(None)), value)
    if tp is float:
        return math.nan if value is None else _to_float(value)  # None: files written before "nan" was
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise TypeError(f"expected an integer, got {value!r}")
        return int(value)
    if tp is bool or tp is str:
        if not isinstance(value, tp):
            raise TypeError(f"expected {tp.__name__}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    if isinstance(tp, type) and issubclass(tp, tuple) and hasattr(tp, "_fields"):  # NamedTuple
        hints = typing.get_type_hints(tp)
        items = value if isinstance(value, list) else [value[k] for k in tp._fields]
        return tp(*(decode(hints.get(k, Any), v) for k, v in zip(tp._fields, items)))
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, list):
            raise TypeError(f"expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(decode(args[0], v) for v in value)
        if origin is tuple and args:
            return tuple(decode(a, v) for a, v in zip(args, value))
        inner = args[0] if args else Any
        out = [decode(inner, v) for v in value]
        return tuple(out) if (origin or tp) is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise TypeError(f"expected an object, got {value!r}")
        inner = args[1] if len(args) == 2 else Any
        return {k: decode(inner, v) for k, v in value.items()}
    return untyped(value)


def from_dict(cls: type, data: Any) -> Any:
    """A dataclass from the dict :func:`to_jsonable` made of it, every field read by its declared type.

    Keys the class does not declare are ignored; missing fields take their defaults. Raises
    TypeError/KeyError on a value of the wrong kind (callers turn that into a message for the user).
    """
    if not isinstance(data, dict):
        raise TypeError(f"expected an object for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kw[f.name] = decode(hints.get(f.name, Any), data[f.name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise KeyError(f.name)
    return cls(**kw)


# Files ---------------------------------------------------------------------------------------------
def write_text(path: "str | Path", text: str) -> Path:
    """Write atomically: a temporary file in the same folder, then a rename (complete or absent)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: "str | Path", write) -> Path:
    """Atomic write through ``write(tmp_path)`` (for files other libraries write, such as PNGs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: "str | Path", obj: Any) -> Path:
    return write_text(path, dumps(obj) + "\n")


def read_json(path: "str | Path") -> Any:
    """The JSON document in ``path``, as written (typed reading is :func:`from_dict`'s job)."""
    return json.loads(Path(path).read_text())


def save_measured(path: "str | Path", error: BaseException) -> bool:
    """Write what a failed call measured (``error.measured``) beside its message; False when there was nothing.

    The one place partial results are kept: every command calls it with the path the user asked
    results to go to, and says so only when this returned True.
    """
    measured = getattr(error, "measured", None)
    if not measured:
        return False
    write_json(path, {"error": str(error), "complete": False, **measured})
    return True
