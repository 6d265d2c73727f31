"""`batchscope noise`: train, measure the gradient noise scale along the way, print the trajectory."""

from __future__ import annotations

import math

import click

from ._outputs import Outputs, check_outputs
from ._options import (FINITE, LEARNING_RATE, SEED, device_name, device_option, json_option, keep_measured_in,
                       task_option)
from ..errors import DivergedError
from ..noise.stats import NoisePoint
from ..report.console import ProgressCallback, console_for, make_table, progress_bar
from ..serialize import dumps, write_json
from ..tasks import OPTIMIZERS, load_task

ROWS = 12


def _trajectory_rows(history, n: int = ROWS):
    if not history:
        return []
    picks = sorted({round(i * (len(history) - 1) / max(1, n - 1)) for i in range(n)})
    return [(p.step, p.loss, p.g2, p.trace, p.b_simple, p.low, p.high) for p in (history[i] for i in picks)]


def _print_trajectory(console, title, history, caption=None):
    console.print(make_table(title, ["step", "loss", "|G|²", "tr(Σ)", "B_simple", "low", "high"],
                             _trajectory_rows(history), caption=caption))


@click.command("noise")
@task_option
@click.option("--batch-size", "-b", type=int, default=128, show_default=True, help="examples per optimizer step (B)")
@click.option("--micro-batch", type=int, default=None,
              help="micro-batch m (the small batch of the estimate) [default: B/8 rounded to a divisor]")
@click.option("--steps", type=int, default=300, show_default=True, help="optimizer steps to train and measure")
@click.option("--method", type=click.Choice(["microbatch", "exact"]), default="microbatch", show_default=True,
              help="micro-batch norms during accumulation (free) or exact per-example gradients (torch.func)")
@click.option("--lr", type=LEARNING_RATE, default=None, help="learning rate [default: the task's]")
@click.option("--optimizer", type=click.Choice(list(OPTIMIZERS)), default=None, help="[default: the task's]")
@click.option("--preconditioned", is_flag=True,
              help="measure the gradient divided by Adam's sqrt(v)+eps (the direction Adam steps in)")
@click.option("--decay", type=FINITE, default=0.95, show_default=True, help="EMA decay of |G|² and tr(Σ)")
@click.option("--level", type=FINITE, default=0.9, show_default=True, help="coverage of the interval for B_simple")
@click.option("--per-layer", is_flag=True, help="also report B_simple per parameter tensor")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--amp", is_flag=True, help="automatic mixed precision (CUDA only)")
@device_option
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="draw B_simple against training loss (PNG)")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="also write the result JSON here")
@json_option
def command(task_spec, batch_size, micro_batch, steps, method, lr, optimizer, preconditioned, decay, level,
            per_layer, seed, amp, device, plot, out, as_json) -> None:
    """Measure the gradient noise scale B_simple = tr(Σ)/|G|² while training.

    B_simple is the batch size at which gradient noise and signal are equal (McCandlish et al.
    2018): batches well below it waste steps, batches well above it waste examples.
    """
    from ..noise import measure_noise

    check_outputs(("--out", out, "file"), ("--plot", plot, "file"))
    task = load_task(task_spec)
    console = console_for(as_json)
    keep_measured_in(out)
    console.print(f"measuring {task.name} on {device_name(device)}")
    try:
        with progress_bar(console) as progress:
            result = measure_noise(task, batch_size, micro_batch, steps, method=method, lr=lr, seed=seed,
                                   device=device, optimizer=optimizer, preconditioned=preconditioned, decay=decay,
                                   level=level, per_layer=per_layer, amp=amp,
                                   callbacks=[ProgressCallback(progress, f"{task.name} B={batch_size} noise")])
    except DivergedError as e:
        noise = (e.measured or {}).get("noise") or {}
        if noise.get("history"):  # on stderr for people; --out gets it from the error handler
            _print_trajectory(console_for(True), f"{task.name}: measured before the run diverged",
                              [NoisePoint.from_dict(p) for p in noise["history"]])
        raise
    doc = result.to_dict()
    outputs = Outputs()
    if out:
        outputs.write("--out", out, lambda: write_json(out, doc))
    if plot:
        from ..report.noise_plot import plot_trajectory

        outputs.write("--plot", plot, lambda: plot_trajectory(result.history, plot, f"{task.name}: B={batch_size}, "
                                                              f"{result.estimate.method}", level))
    if as_json:
        click.echo(dumps(doc))
    else:
        _print_result(console, task, result, batch_size, outputs.written.get("--plot"))
    outputs.finish(as_json)


def _print_result(console, task, result, batch_size: int, plot) -> None:
    est = result.estimate
    cfg = result.train.config if result.train else {}
    _print_trajectory(console, f"{task.name}: gradient noise scale, B={batch_size} (small batch "
                      f"{est.batch_small}), {cfg.get('optimizer')} lr={cfg.get('lr', 0):g}", result.history,
                      caption="smoothed (EMA) values at each step; low/high: the interval for B_simple")
    if est.layers:
        console.print(make_table("per parameter tensor", ["parameter", "|G|²", "tr(Σ)", "B_simple"],
                                 [(k, v["g2"], v["trace"], v["b_simple"]) for k, v in est.layers.items()]))
    hi = "unbounded" if math.isinf(est.high) else f"{est.high:.4g}"
    console.print(f"B_simple = {est.b_simple:.4g}  ({est.level:.0%} interval {est.low:.4g} .. {hi}; "
                  f"{est.n_samples} steps, effective {est.n_effective:.0f}; {est.skipped} skipped as non-finite; "
                  f"method {est.method}{', Adam-preconditioned' if est.preconditioned else ''})")
    first, last = result.history[0], result.history[-1]
    console.print(f"B_simple went from {first.b_simple:.4g} at loss {first.loss:.3g} to {last.b_simple:.4g} "
                  f"at loss {last.loss:.3g}.")
    if plot:
        console.print(f"plot written to {plot}")
