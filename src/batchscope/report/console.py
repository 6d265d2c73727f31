"""Console output: tables and progress go to stderr when stdout carries JSON.

Output has to read in an 80-column terminal and in a CI log as well as in a wide terminal: a table
too wide for the console is drawn without borders, and if that is still too wide each row becomes
one wrapped line of "column: value" pairs, so no header or number is ever cut. When the output is
not a terminal, progress is plain lines (a few per task) instead of a redrawn bar.
"""

from __future__ import annotations

import textwrap
import time
from typing import Iterable, Optional, Sequence

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text

from ..train import Callback, HistoryPoint, TrainContext, total_steps


def console_for(json_mode: bool) -> Console:
    """People's output: stdout normally, stderr when stdout is reserved for JSON."""
    return Console(stderr=json_mode, highlight=False)


class FittedTable:
    """A table that fits the console: boxed, else borderless, else one wrapped line per row."""

    def __init__(self, title: str, columns: Sequence[str], rows: list[list[str]], caption: Optional[str]):
        self.title, self.columns, self.rows, self.caption = title, list(columns), rows, caption

    def _table(self, boxed: bool) -> Table:
        table = Table(title=self.title, caption=self.caption, title_justify="left", caption_justify="left",
                      box=box.HEAVY_HEAD if boxed else None, pad_edge=boxed, show_edge=boxed)
        for i, c in enumerate(self.columns):
            table.add_column(c, justify="left" if i == 0 else "right", no_wrap=not boxed)
        for row in self.rows:
            table.add_row(*row)
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for boxed in (True, False):
            table = self._table(boxed)
            if console.measure(table, options=options.update(width=10**4)).maximum <= options.max_width:
                yield table
                return
        width = max(20, options.max_width)
        yield Text(self.title, style="italic")
        for row in self.rows:
            if len(row) == 2 and not self.columns[0]:  # a key-value table
                line = f"{row[0]}: {row[1]}"
            else:
                pairs = [row[0]] + [f"{c}: {v}" if c else v for c, v in zip(self.columns[1:], row[1:])]
                line = "; ".join(p for p in pairs if p)
            for part in textwrap.wrap(line, width, initial_indent="- ", subsequent_indent="    ",
                                      break_long_words=True, break_on_hyphens=False):
                yield Text(part)
        if self.caption:
            for part in textwrap.wrap(self.caption, width):
                yield Text(part, style="dim")


def make_table(title: str, columns: Sequence[str], rows: Iterable[Sequence], caption: Optional[str] = None):
    return FittedTable(title, columns, [[fmt(v) for v in row] for row in rows], caption)


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v == 0 or 1e-3 <= abs(v) < 1e5:
            return f"{v:.4g}"
        return f"{v:.3e}"
    return str(v)


def progress_bar(console: Console):
    """A redrawn bar in a terminal; plain lines (start, every 25%, end) anywhere else."""
    if not console.is_terminal:
        return LineProgress(console)
    return Progress(TextColumn("{task.description}", table_column=Column(overflow="ellipsis", no_wrap=True, ratio=1)),
                    BarColumn(bar_width=16), MofNCompleteColumn(table_column=Column(no_wrap=True)),
                    TextColumn("{task.fields[info]}", table_column=Column(overflow="ellipsis", no_wrap=True, ratio=2)),
                    TimeElapsedColumn(table_column=Column(no_wrap=True)), console=console, transient=False)


class LineProgress:
    """The part of rich's Progress API the commands use, printing whole lines (for logs and pipes)."""

    STEPS = 4   # lines per task besides the first and the last

    def __init__(self, console: Console):
        self.console, self.tasks, self.t0 = console, {}, time.perf_counter()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        for tid, t in self.tasks.items():
            if t["printed"] != (t["completed"], t["info"]):
                self._line(tid)

    def add_task(self, description: str, total=None, completed: int = 0, info: str = "", **_) -> int:
        tid = len(self.tasks)
        self.tasks[tid] = {"description": description, "total": total, "completed": completed, "info": info,
                           "printed": None, "next": 0.0}
        return tid

    def update(self, tid: int, completed=None, total=None, info=None, **_) -> None:
        t = self.tasks[tid]
        for k, v in (("completed", completed), ("total", total), ("info", info)):
            if v is not None:
                t[k] = v
        done = t["completed"] / t["total"] if t["total"] else 0.0
        if t["printed"] is None or done >= t["next"] or (t["total"] and t["completed"] >= t["total"]):
            self._line(tid)
            t["next"] = (int(done * self.STEPS) + 1) / self.STEPS

    def _line(self, tid: int) -> None:
        t = self.tasks[tid]
        total = "?" if t["total"] is None else t["total"]
        info = f"  {t['info']}" if t["info"] else ""
        self.console.print(f"{t['description']}: {t['completed']}/{total}{info}  "
                           f"({time.perf_counter() - self.t0:.0f} s)", soft_wrap=True, highlight=False)
        t["printed"] = (t["completed"], t["info"])


class ProgressCallback(Callback):
    """A progress bar over optimizer steps showing the latest loss and metric."""

    def __init__(self, progress: Progress, description: str = "train"):
        self.progress = progress
        self.description = description
        self.task_id = None

    def on_train_begin(self, ctx: TrainContext) -> None:
        total = total_steps(ctx.task, ctx.config, ctx.batch_size)
        self.task_id = self.progress.add_task(self.description, total=total, info="")

    def on_step_end(self, ctx: TrainContext, loss: float) -> None:
        self.progress.update(self.task_id, completed=ctx.step)

    def on_evaluate(self, ctx: TrainContext, point: HistoryPoint) -> None:
        info = f"B={ctx.batch_size}  loss {point.loss:.3f}" if ctx.config.adaptive else f"loss {point.loss:.3f}"
        if point.metric is not None:
            info += f"  {ctx.task.metric_name or 'metric'} {point.metric:.3f}"
        elif point.eval_loss is not None:
            info += f"  {ctx.task.target.split} loss {point.eval_loss:.3f}"
        self.progress.update(self.task_id, info=info)

    def on_train_end(self, ctx: TrainContext, result) -> None:
        self.progress.update(self.task_id, completed=ctx.step, total=ctx.step)
