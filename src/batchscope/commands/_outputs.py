"""Where a command's results go: checked before the work starts, and never lost to a failed write after it.

A path under a regular file, in a directory this process may not write, or onto a device cannot
take the result; :func:`check_outputs` says so before anything is measured. A write can still fail
after the work (a full disk, a file removed meanwhile, a plotting library missing): :class:`Outputs`
keeps going, the command prints its result (and its ``--json`` on stdout) all the same, and
:meth:`Outputs.finish` ends with one ``error:`` line naming what was not written where (exit 2).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, TypeVar

from ..errors import BatchscopeError, ConfigError

T = TypeVar("T")


class OutputError(BatchscopeError):
    """The work was done and its result printed, but a file the user asked for could not be written."""


def _unwritable(path: Path, kind: str) -> Optional[str]:
    """Why ``path`` (a ``kind``: "file" or "directory") cannot be written here, or None when it can."""
    if path.exists():
        if kind == "file" and path.is_dir():
            return "it is a directory"
        if kind == "file" and not path.is_file():
            return "it is not a regular file (a device, pipe or socket)"
        if kind == "directory" and not path.is_dir():
            return "it is a file, not a directory"
        target = path.parent if kind == "file" else path  # an atomic write creates its temporary file there
    else:
        target = path.parent
        while not target.exists() and target != target.parent:
            target = target.parent
        if not target.is_dir():
            return f"{target} is a file, not a directory"
    if not os.access(target, os.W_OK | os.X_OK):
        return f"this process may not create files in {target} (permission denied or a read-only file system)"
    return None


def check_outputs(*outputs: "tuple[str, Optional[str], str]") -> None:
    """Refuse, before any work, an output path that cannot be written; nothing is created.

    Each output is ``(label, path or None, "file" | "directory")``, the label as the user typed it
    (``--out``, ``--log-dir``).
    """
    for label, path, kind in outputs:
        if path is None:
            continue
        why = _unwritable(Path(path).expanduser().absolute(), kind)
        if why:
            raise ConfigError(f"{label} {path} cannot be written: {why}; choose another path (nothing was run)")


class Outputs:
    """The files a command writes after its work; a failed one is remembered, not raised, until :meth:`finish`."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.written: dict[str, str] = {}

    def write(self, option: str, path, write: Callable[[], T]) -> Optional[T]:
        """``write()``; on failure (an OSError, or a batchscope error such as a missing plotting library) None."""
        try:
            got = write()
        except (OSError, BatchscopeError) as e:
            why = f"{type(e).__name__}: {e}" if isinstance(e, OSError) else str(e)
            self.failed.append(f"{option} {path} ({why})")
            return None
        self.written[option] = str(path)
        return got

    def problem(self, as_json: bool = False) -> Optional[str]:
        """What could not be written where, in one sentence; None when every write succeeded."""
        if not self.failed:
            return None
        shown = "the JSON result is on stdout" if as_json else "the result is printed above"
        return f"could not write {'; nor '.join(self.failed)}; {shown}"

    def finish(self, as_json: bool = False) -> None:
        """One error (exit 2) naming every output that could not be written, after the result was printed."""
        if self.failed:
            raise OutputError(self.problem(as_json))
