"""`batchscope tasks`: the built-in tasks and their facts."""

from __future__ import annotations

import click

from ._options import json_option
from ..report.console import console_for, make_table
from ..serialize import dumps
from ..tasks import BUILTINS, load_task


@click.command("tasks")
@json_option
def command(as_json: bool) -> None:
    """List the built-in tasks: data, model, parameter count and target."""
    facts = [load_task(name).facts() for name in BUILTINS]
    if as_json:
        click.echo(dumps({"tasks": facts}))
        return
    console = console_for(False)
    console.print(make_table(
        "built-in tasks", ["task", "data", "model", "params", "optimizer (lr, ref batch)", "target"],
        [(f["name"], f["description"], f["model"], f"{f['parameters']:,}",
          f"{f['optimizer']} ({f['lr']:g}, {f['reference_batch']})", f["target"]) for f in facts]))
    console.print("Bring your own: --task path/to/file.py:make_task (a function returning batchscope.Task)")
