"""Console output: tables and progress go to stderr when stdout carries JSON."""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..train import Callback, HistoryPoint, TrainContext, total_steps


def console_for(json_mode: bool) -> Console:
    """People's output: stdout normally, stderr when stdout is reserved for JSON."""
    return Console(stderr=json_mode, highlight=False, soft_wrap=True)


def make_table(title: str, columns: Sequence[str], rows: Iterable[Sequence], caption: Optional[str] = None) -> Table:
    table = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[fmt(v) for v in row])
    return table


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


def progress_bar(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


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
        info = f"loss {point.loss:.3f}"
        if point.metric is not None:
            info += f"  {ctx.task.metric_name or 'metric'} {point.metric:.3f}"
        elif point.eval_loss is not None:
            info += f"  {ctx.task.target.split} loss {point.eval_loss:.3f}"
        self.progress.update(self.task_id, info=info)

    def on_train_end(self, ctx: TrainContext, result) -> None:
        self.progress.update(self.task_id, completed=ctx.step, total=ctx.step)
