"""`python -m batchscope` is the `batchscope` command."""

from .cli import main

main()
