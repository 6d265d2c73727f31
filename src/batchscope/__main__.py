"""`python -m batchscope` and the `batchscope` console script.

Ctrl-C at any moment ends with one line and exit status 130, never a traceback. Until a command
starts running, nothing has been written, so an interrupt quits at once: raising KeyboardInterrupt
inside torch's import can escape through its C++ layer and abort the process instead. From then on
the command's own handler (``commands._options.Group``) turns it into the same line.
"""

from __future__ import annotations

import os
import signal
import sys


def _quit_now(signum, frame) -> None:
    os.write(2, b"interrupted\n")
    os._exit(130)


def run(argv=None) -> None:
    signal.signal(signal.SIGINT, _quit_now)  # Group.invoke puts Python's handler back
    try:
        from .cli import main

        main(argv)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    run()
