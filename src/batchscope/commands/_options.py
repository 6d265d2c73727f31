"""What every command shares: the options several repeat and the one way errors end a command.

``cli.py`` imports this package, never the reverse.
"""

from __future__ import annotations

import math
import re
import signal
import threading

import click

from ..errors import BatchscopeError, ConfigError, check_lr
from ..serialize import save_measured

KEEP_KEY = "batchscope.keep_measured_in"


class Finite(click.ParamType):
    """A float option: nan, inf and numbers past the float range (``1e400`` reads as inf) are refused here."""

    name = "float"

    def convert(self, value, param, ctx):
        v = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number (floats end near 1.8e308)", param, ctx)
        return v


class LearningRate(Finite):
    """A learning-rate option: positive and at most :data:`~batchscope.errors.MAX_LR`."""

    def convert(self, value, param, ctx):
        v = super().convert(value, param, ctx)
        try:
            return check_lr("lr", v)
        except ConfigError as e:   # the option is named by click: the library's "The 'lr' parameter" is not repeated
            self.fail(str(e).replace("The 'lr' parameter ", ""), param, ctx)


FINITE = Finite()
LEARNING_RATE = LearningRate()
# torch and numpy take seeds below 2**32 (and no negative ones), whatever click's int would pass on
SEED = click.IntRange(0, 2**32 - 1)


class Group(click.Group):
    """Ends every command the same way.

    A :class:`BatchscopeError` or a bad option value is one ``error:`` line on stderr and exit status 2; what it
    measured before failing is saved (once, atomically) where the command said results go. Ctrl-C is exit
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
            click.echo(f"error: {e.format_message().rstrip('.')}{hint}", err=True)
            ctx.exit(2)
        except BatchscopeError as e:
            click.echo(f"error: {in_flag_terms(str(e), self.get_command(ctx, ctx.invoked_subcommand or ''))}",
                       err=True)
            where = ctx.meta.get(KEEP_KEY)
            try:
                if where and save_measured(where, e):
                    click.echo(f"measurements so far written to {where}", err=True)
            except OSError as w:  # the message above is the error; this says what could not be kept
                click.echo(f"the measurements so far could not be written to {where} ({w})", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


def in_flag_terms(message: str, command: "click.Command | None") -> str:
    """The library names parameters ("The 'max_batch' parameter ...", "give 'measure_fraction' ..."); a
    command-line user typed flags: each parameter of ``command`` that the message names becomes its flag
    ("The --max-batch option ...", "give --budget ...")."""
    for param in getattr(command, "params", ()):
        if isinstance(param, click.Option) and param.name:
            flag = max(param.opts, key=len)
            message = re.sub(rf"The '{param.name}' parameter(?: of [A-Za-z_][\w.]*)?(?= must)", f"The {flag} option",
                             message)
            message = re.sub(rf"\b(give|raise|lower|pass|set) '{param.name}'", rf"\1 {flag}", message)
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
