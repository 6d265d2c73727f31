"""`batchscope profile`: the memory ceiling and step-time curve of a task on this machine."""

from __future__ import annotations

import click
import torch

from ._outputs import Outputs, check_outputs
from ._options import device_name, device_option, json_option, task_option
from ..errors import ConfigError
from ..hardware import HardwareProfile, format_bytes, profile_hardware
from ..report.console import console_for, make_table, progress_bar
from ..serialize import dumps
from ..tasks import load_task


class _RichProgress:
    """Adapts profile_hardware's progress(stage, done, total, info) to rich bars."""

    def __init__(self, progress):
        self.progress, self.ids = progress, {}

    def __call__(self, stage, done, total, info):
        if stage not in self.ids:
            self.ids[stage] = self.progress.add_task(stage, total=total, info="")
        self.progress.update(self.ids[stage], completed=done, total=total, info=info)


@click.command("profile")
@task_option
@device_option
@click.option("--memory-budget", default=None,
              help="memory one step may use: 512MB, 2GiB, 40% [default: 90% of free GPU memory, 50% of available RAM]")
@click.option("--max-batch", type=int, default=None, help="never probe above this batch size")
@click.option("--amp", is_flag=True, help="automatic mixed precision (CUDA only); batch sizes in multiples of 8")
@click.option("--threads", type=int, default=None, help="torch CPU threads while timing [default: torch's]")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="write the profile JSON here")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="draw step time and memory against B into this PNG (needs matplotlib)")
@json_option
def command(task_spec, device, memory_budget, max_batch, amp, threads, out, plot_path, as_json) -> None:
    """Measure the largest batch that fits and how step time grows with the batch size."""
    check_outputs(("--out", out, "file"), ("--plot", plot_path, "file"))
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be a positive integer. Got {threads} instead.")
        torch.set_num_threads(threads)
    task = load_task(task_spec)
    console = console_for(as_json)
    console.print(f"profiling {task.name} on {device_name(device)}")
    with progress_bar(console) as progress:
        profile = profile_hardware(task, device=device, memory_budget=memory_budget, max_batch=max_batch,
                                   amp=amp, progress=_RichProgress(progress))
    # Save first: a failing plot must not lose the measurement, nor a failing write the printed profile.
    outputs = Outputs()
    if out:
        outputs.write("--out", out, lambda: profile.save(out))
    if plot_path:
        from ..report.hardware_plot import plot_profile

        outputs.write("--plot", plot_path, lambda: plot_profile(profile, plot_path))
    if as_json:
        click.echo(dumps(profile.to_dict()))
    else:
        _print(console, profile, outputs.written.get("--out"), outputs.written.get("--plot"))
    outputs.finish(as_json)


def _print(console, p: HardwareProfile, out, plot_path) -> None:
    rows = [(p.batch, f"{p.seconds * 1e3:.3g}", f"{p.spread * 1e3:.2g}", f"{p.throughput:,.0f}",
             format_bytes(p.peak_bytes)) for p in p.points]
    console.print(make_table(f"{p.task} on {p.device.get('name')} ({p.device.get('type')}"
                             f"{', AMP' if p.amp else ''})",
                             ["batch", "step ms", "IQR ms", "examples/s", "peak memory"], rows))
    facts = [
        ("max batch", f"{p.max_batch:,} (limited by {p.limited_by})"),
        ("memory budget", format_bytes(p.memory_budget)),
        ("memory(B)", "-" if p.m0 is None else
         f"{format_bytes(p.m0)} + {format_bytes(p.m1)}·B  (R² {p.memory_r2:.4f}; {p.memory_method})"),
        ("ceiling search", f"{p.ceiling_steps} probe steps, {p.over_budget_steps} over budget"),
        ("t(B)", f"{p.alpha * 1e3:.3g} ms + {p.beta * 1e6:.3g} µs·B  (R² {p.r2:.3f})"),
        ("knee", ("not reached in the measured range" if p.knee is None else f"B={p.knee} measured")
         + ("" if p.knee_fit is None else f", {p.knee_fit:.0f} from the fit")),
        ("profiling time", f"{p.seconds:.1f} s"),
    ]
    facts += [("note", note) for note in p.notes]
    if out:
        facts.append(("written", out))
    if plot_path:
        facts.append(("plot", plot_path))
    console.print(make_table("hardware profile", ["", "value"], facts,
                             caption="knee: from there on, doubling the batch gains < 10% throughput"))
