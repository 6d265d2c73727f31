"""Worker processes that Ctrl-C does not reach: the parent alone hears it, says so once and ends them.

A terminal sends SIGINT to every process of the foreground group. A spawned worker that is still
importing torch when it arrives prints its own ``KeyboardInterrupt`` traceback, dozens of lines
for each worker. A process inherits an *ignored* SIGINT across fork and exec (Python keeps it
ignored at start-up), so workers started inside :func:`sigint_ignored_in_children` never see it;
the parent, whose own handler is back as soon as they are started, stops them with
:func:`end_children` (only those it started: a program's other children are left alone).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
from typing import Iterable, Iterator, Optional


@contextlib.contextmanager
def sigint_ignored_in_children(started: Optional[list] = None) -> Iterator[None]:
    """Processes started inside ignore SIGINT for life; this process keeps its handler afterwards.

    SIGINT is blocked meanwhile, so a Ctrl-C pressed while they start waits, and arrives (as a
    KeyboardInterrupt) once the handler is back, instead of being ignored here too. ``started``:
    a list the multiprocessing children started inside are appended to (for :func:`end_children`).
    """
    before = set(multiprocessing.active_children())
    if threading.current_thread() is not threading.main_thread():   # signals belong to the main thread
        previous = None
    else:
        previous = signal.getsignal(signal.SIGINT)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        if started is not None:
            started.extend(p for p in multiprocessing.active_children() if p not in before)
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def end_children(children: Iterable, timeout: float = 5.0) -> None:
    """Terminate the given worker processes (they ignore Ctrl-C) that are still running, then reap them."""
    children = [p for p in children if p.is_alive()]
    for p in children:
        p.terminate()
    for p in children:
        p.join(timeout)
        if p.is_alive():
            p.kill()
            p.join(1.0)
