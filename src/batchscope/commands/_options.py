"""What every command shares: the options several repeat and the one way errors end a command.

``cli.py`` imports this package, never the reverse.
"""

from __future__ import annotations

import re
import signal
import threading

import click

from ..errors import BatchscopeError
from ..serialize import save_measured

KEEP_KEY = "batchscope.keep_measured_in"


class Group(click.Group):
    """Ends every command the same way.

    A :class:`BatchscopeError` or a bad option value is one ``error:`` line on stderr and exit status 2; what it measured
    before failing is saved (once, atomically) where the command said results go. Ctrl-C is exit
    status 130 with one line and no traceback.
    """

    def invoke(self, ctx: click.Context):
        if threading.current_thread() is threading.main_thread():
            # torch is imported while Ctrl-C still quits at once: a KeyboardInterrupt raised inside
            # its import can be swallowed there (the run then went on training) or abort the process.
            import torch  # noqa: F401

            signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on: KeyboardInterrupt
        try:
            return super().invoke(ctx)
        except click.UsageError as e:  # a bad option value: the same one line as every other bad input
            hint = f"; see `batchscope {e.ctx.command.name} --help`" if e.ctx and e.ctx.command.name else ""
            click.echo(f"error: {e.format_message()}{hint}", err=True)
            ctx.exit(2)
        except BatchscopeError as e:
            click.echo(f"error: {in_flag_terms(str(e), self.get_command(ctx, ctx.invoked_subcommand or ''))}",
                       err=True)
            where = ctx.meta.get(KEEP_KEY)
            if where and save_measured(where, e):
                click.echo(f"measurements so far written to {where}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


def in_flag_terms(message: str, command: "click.Command | None") -> str:
    """The library names parameters ("The 'max_batch' parameter ..."); a command-line user typed flags:
    each parameter of ``command`` that the message names becomes its flag ("The --max-batch option ...")."""
    for param in getattr(command, "params", ()):
        if isinstance(param, click.Option) and param.name:
            flag = max(param.opts, key=len)
            message = re.sub(rf"The '{param.name}' parameter(?: of [A-Za-z_][\w.]*)?(?= must)", f"The {flag} option",
                             message)
    return message


def keep_measured_in(path) -> None:
    """Declare where a failure of the running command saves what it measured (None: nowhere)."""
    click.get_current_context().meta[KEEP_KEY] = None if path is None else str(path)


def task_option(f):
    return click.option("--task", "task_spec", default="mnist1d", show_default=True,
                        help="built-in name, path/to/file.py:make_task or package.module:make_task")(f)


def device_option(f):
    return click.option("--device", default="auto", show_default=True,
                        help="auto (the accelerator when there is one), cpu, cuda or cuda:N")(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True,
                        help="print a JSON document on stdout (people's output goes to stderr)")(f)


def profile_option(f):
    """``--profile FILE``: a hardware profile measured elsewhere (for instance on the GPU machine)."""
    return click.option("--profile", "profile_path", type=click.Path(dir_okay=False), default=None,
                        help="plan for the hardware of a profile written by `batchscope profile --out`")(f)


def device_name(device: str) -> str:
    """The device a ``--device`` value resolves to here, for saying what was measured."""
    from ..train import resolve_device

    d = resolve_device(device)
    if d.type == "cuda":
        import torch

        return f"{d} ({torch.cuda.get_device_name(d)})"
    return str(d)
