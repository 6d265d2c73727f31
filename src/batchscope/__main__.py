"""`python -m batchscope` and the `batchscope` console script.

Ctrl-C at any moment, even while torch is still importing (seconds), ends with one line and exit
status 130, never a traceback: the heavy imports happen inside the ``try``.
"""

from __future__ import annotations

import sys


def run(argv=None) -> None:
    try:
        from .cli import main

        main(argv)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    run()
