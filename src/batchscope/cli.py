"""The `batchscope` command. A thin layer: parse options, call the library, print results.

Each command lives in ``batchscope.commands.<name>``; this module holds the group, the error
handling every command shares, and the options several commands repeat.
"""

from __future__ import annotations

import sys

import click

from .errors import BatchscopeError


class _Group(click.Group):
    """Turns every BatchscopeError into one line on stderr and exit status 2 (no traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BatchscopeError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted; results measured so far were kept where the command saves them", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="batchscope")
def cli() -> None:
    """Which batch size and learning rate to train with, measured on your model, data and hardware."""


def task_option(f):
    return click.option("--task", "task_spec", default="mnist1d", show_default=True,
                        help="built-in name, path/to/file.py:make_task or package.module:make_task")(f)


def device_option(f):
    return click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto")(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True,
                        help="print a JSON document on stdout (people's output goes to stderr)")(f)


def _register() -> None:
    from .commands import noise, report, study, tasks, train

    for module in (tasks, train, noise, study, report):
        cli.add_command(module.command)


_register()


def main(argv=None) -> None:
    cli.main(args=argv, prog_name="batchscope")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
