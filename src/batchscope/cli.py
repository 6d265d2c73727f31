"""The `batchscope` command. A thin layer: the group, and every module of ``batchscope.commands``.

Options several commands share and the error handling live in ``batchscope.commands._options``.
"""

from __future__ import annotations

import importlib
import pkgutil

import click

from . import commands
from .commands._options import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="batchscope")
def cli() -> None:
    """Which batch size and learning rate to train with, measured on your model, data and hardware."""


def _register() -> None:
    """Every public module in ``batchscope.commands`` is a command: adding one needs no edit here."""
    for info in pkgutil.iter_modules(commands.__path__):
        if not info.name.startswith("_"):
            cli.add_command(importlib.import_module(f"{commands.__name__}.{info.name}").command)


_register()


def main(argv=None) -> None:
    cli.main(args=argv, prog_name="batchscope")
