"""`batchscope flow`: batch sizes on a production line, or a pipeline-parallel training step."""

from __future__ import annotations

from pathlib import Path

import click

from ._options import FINITE, SEED, json_option
from ._outputs import Outputs, check_outputs
from ..errors import ConfigError
from ..report.console import console_for, fmt, make_table
from ..serialize import dumps, write_json


def _floats(name: str, text):
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--{name} takes comma-separated numbers (e.g. 1,2.5,1). Got {text!r} instead.") from None


def _ints(name: str, text):
    values = _floats(name, text)
    if values is None:
        return None
    if any(v != int(v) for v in values):
        raise ConfigError(f"--{name} takes comma-separated integers (e.g. 1,2,1). Got {text!r} instead.")
    return [int(v) for v in values]


def _pm(est) -> str:
    """mean ± half-width (just the mean when the interval has no width)."""
    d = est if isinstance(est, dict) else est.to_dict()
    return fmt(d["mean"]) if d["half_width"] == 0 else f"{d['mean']:.4g} ± {d['half_width']:.2g}"


@click.command("flow")
@click.argument("line_file", required=False, type=click.Path(dir_okay=False))
@click.option("--example", is_flag=True, help="use the built-in example line (a machining cell)")
@click.option("--unit-times", default=None, help="processing time per unit of each station, e.g. 1,2,1")
@click.option("--setups", default=None, help="set-up time per process batch of each station, e.g. 10,30,20")
@click.option("--resources", default=None, help="parallel resources of each station, e.g. 1,2,1")
@click.option("--order", "order_quantity", type=int, default=None, help="units in the order")
@click.option("--process-batch", type=int, default=None, help="units made between two set-ups [default: the order]")
@click.option("--transfer-batch", type=int, default=None, help="units moved together [default: the process batch]")
@click.option("--distribution", default=None,
              help="unit-time distribution for every station: deterministic, exponential, normal, lognormal, "
                   "uniform, gamma")
@click.option("--cv", type=FINITE, default=None, help="coefficient of variation of unit times (std/mean)")
@click.option("--replications", type=int, default=30, show_default=True, help="runs when times are random")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--sweep", is_flag=True, help="also sweep the transfer batch and the process batch")
@click.option("--plots", "plot_dir", type=click.Path(file_okay=False), default=None,
              help="write PNG plots here (implies --sweep)")
@click.option("--pipeline", is_flag=True, help="model a pipeline-parallel (GPipe) training step instead")
@click.option("--stages", type=int, default=4, show_default=True, help="pipeline stages P")
@click.option("--micro-batches", type=int, default=8, show_default=True, help="micro-batches M per mini-batch")
@click.option("--micro-batch-size", type=int, default=1, show_default=True, help="examples per micro-batch")
@click.option("--stage-times", default=None, help="forward time per example of each stage [default: all 1]")
@click.option("--backward-ratio", type=FINITE, default=2.0, show_default=True, help="backward time / forward time")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="also write the JSON document here")
@json_option
def command(line_file, example, unit_times, setups, resources, order_quantity, process_batch, transfer_batch,
            distribution, cv, replications, seed, sweep, plot_dir, pipeline, stages, micro_batches,
            micro_batch_size, stage_times, backward_ratio, out, as_json) -> None:
    """Process batch vs transfer batch on a production line: capacity, bottleneck, lead times, WIP,
    value-added fraction and idle time, from closed forms where they exist and a SimPy simulation.

    Define the line in LINE_FILE (.toml or .json), with flags (--unit-times, --setups, --order, ...),
    or take --example; flags override the file. With --pipeline: the bubble of a GPipe step.
    """
    check_outputs(("--out", out, "file"), ("--plots", plot_dir, "directory"))
    console = console_for(as_json)
    if pipeline:
        doc = _pipeline(console, stages, micro_batches, micro_batch_size, _floats("stage-times", stage_times),
                        backward_ratio, plot_dir)
    else:
        line = _build_line(line_file, example, unit_times, setups, resources, order_quantity, process_batch,
                           transfer_batch, distribution, cv)
        doc = _line(console, line, replications, seed, sweep or plot_dir is not None, plot_dir)
    outputs = Outputs()
    if out:
        outputs.write("--out", out, lambda: write_json(out, doc))
    if as_json:
        click.echo(dumps(doc))
    outputs.finish(as_json)
    failed = doc.get("closed_form") or {}
    if (pipeline and not doc["agrees"]) or (failed.get("exact") and not failed.get("agrees")):
        raise click.ClickException("the simulation disagrees with the closed form (see the table); please report this")


def _build_line(line_file, example, unit_times, setups, resources, order_quantity, process_batch, transfer_batch,
                distribution, cv):
    from ..flow import example_line, load_line, make_line

    sources = [name for name, given in (("LINE_FILE", line_file is not None), ("--example", example),
                                        ("--unit-times", unit_times is not None)) if given]
    if len(sources) != 1:
        raise ConfigError("Define the line one way: a LINE_FILE (.toml/.json), --example, or --unit-times "
                          f"(with --order). Got {' and '.join(sources) or 'none'}.")
    if unit_times is not None:
        if order_quantity is None:
            raise ConfigError("--unit-times needs --order (units in the order).")
        return make_line(_floats("unit-times", unit_times), order_quantity, setups=_floats("setups", setups) or (),
                         resources=_ints("resources", resources) or (), process_batch=process_batch,
                         transfer_batch=transfer_batch, distribution=distribution or "deterministic",
                         cv=cv if cv is not None else 0.0)
    line = example_line() if example else load_line(line_file)
    if setups or resources:
        raise ConfigError("--setups and --resources go with --unit-times; edit the line file to change stations.")
    changes = {k: v for k, v in (("order_quantity", order_quantity), ("process_batch", process_batch),
                                 ("transfer_batch", transfer_batch)) if v is not None}
    if "order_quantity" in changes and "process_batch" not in changes:
        changes["process_batch"] = min(line.process_batch, changes["order_quantity"])
    if changes.get("process_batch") is not None and "transfer_batch" not in changes:
        changes["transfer_batch"] = min(line.transfer_batch, changes["process_batch"])
    if distribution is not None or cv is not None:
        from dataclasses import replace
        changes["stations"] = tuple(replace(s, distribution=distribution or s.distribution,
                                            cv=cv if cv is not None else s.cv) for s in line.stations)
    return line.with_(**changes) if changes else line


def _line(console, line, replications, seed, do_sweep, plot_dir) -> dict:
    from ..flow import agreement, closed_form, simulate, sweep_process, sweep_transfer

    if line.random and replications < 2:
        raise ConfigError(f"one replication has no interval: with random unit times the figures need at least 2 "
                          f"replications to give a 95% interval; pass --replications 2 or more (default 30). "
                          f"Got {replications}.")
    sim = simulate(line, replications, seed)
    closed = closed_form(line)
    agree = agreement(closed, sim) if closed else None
    neck = line.stations[line.bottleneck()]
    f = sim.figures
    # one schema: the simulation's own, plus what this command adds beside it
    doc = {**sim.to_dict(), "bottleneck": neck.name, "bottleneck_capacity": neck.capacity(line.process_batch),
           "closed_form": agree}
    u = line.time_unit
    random_note = "; ".join(f"{s.name}: {s.distribution} cv {fmt(s.cv)}" for s in line.stations if s.random)
    console.print(make_table(
        f"{line.name}: order {line.order_quantity}, process batch {line.process_batch}, "
        f"transfer batch {line.transfer_batch} (times in {u})",
        ["station", "res", "set-up", "unit", f"capacity/{u}", "util", "idle per resource", "WIP here"],
        [(s.name + (" *" if row["bottleneck"] else ""), s.resources, s.setup, s.unit_time, row["capacity"],
          _pm(row["utilization"]), ", ".join(_pm(x) for x in row["idle"]), _pm(row["wip_average"]))
         for s, row in zip(line.stations, sim.stations)],
        caption="* bottleneck (lowest capacity = resources * B / (set-up + B * unit))"
                + (f"; random unit times: {random_note}" if random_note else "")))
    rows = []
    for name, est in f.items():
        cf = agree["figures"].get(name) if agree else None
        rows.append((name.replace("_", " "), _pm(est), None if cf is None else cf["closed_form"],
                     None if cf is None else ("yes" if cf["agrees"] else "NO")))
    interval = (f"{sim.replications} replications, 95% t-intervals" if line.random
                else "deterministic times: one run")
    console.print(make_table(f"the order ({interval})", ["figure", "simulation", "closed form", "agrees"], rows,
                             caption=(f"closed form: {agree['case']}" if agree else
                                      "no closed form for this line (parallel resources, random times with "
                                      "overlapping batches, or ragged batches); simulation only")
                             + f"; Little's law L = lambda W holds to a relative gap of {sim.little_max_gap:.1e}"))
    if do_sweep:
        tsweep = sweep_transfer(line, replications=replications, seed=seed)
        psweep = sweep_process(line, replications=replications, seed=seed)
        doc["sweep"] = {"transfer_batch": tsweep.to_dict(), "process_batch": psweep.to_dict()}
        console.print(make_table(
            "against the transfer batch", ["transfer batch", f"lead time ({u})", f"first unit ({u})", "avg WIP",
                                           "value-added fraction"],
            [(t, _pm(fi["lead_time"]), _pm(fi["first_unit_lead_time"]), _pm(fi["wip_average"]),
              _pm(fi["value_added_fraction"])) for t, fi in zip(tsweep.values, tsweep.figures)]))
        console.print(make_table(
            "against the process batch", ["process batch"] + [f"{n} capacity" for n in psweep.station_names]
            + [f"lead time ({u})"],
            [(q, *caps, _pm(fi["lead_time"])) for q, caps, fi in zip(psweep.values, psweep.capacities,
                                                                       psweep.figures)],
            caption="capacity = resources * B / (set-up + B * unit time): set-up matters less as B grows"))
        if plot_dir:
            from ..report.flow_plots import plot_process_sweep, plot_transfer_sweep
            paths = [plot_transfer_sweep(tsweep, line, Path(plot_dir) / "flow_transfer_batch.png"),
                     plot_process_sweep(psweep, line, Path(plot_dir) / "flow_process_batch.png")]
            doc["plots"] = [str(p) for p in paths]
            console.print("plots: " + ", ".join(doc["plots"]))
    return doc


def _pipeline(console, stages, micro_batches, micro_batch_size, stage_times, backward_ratio, plot_dir) -> dict:
    from ..flow import simulate_pipeline

    result = simulate_pipeline(stages, micro_batches, stage_times=stage_times, micro_batch_size=micro_batch_size,
                               backward_ratio=backward_ratio)
    doc = result.to_dict()
    console.print(make_table(
        f"GPipe step: P={stages} stages, M={micro_batches} micro-batches of {micro_batch_size}",
        ["device", "busy", "idle", "idle fraction"],
        [(i + 1, b, d, d / result.step_time) for i, (b, d) in enumerate(zip(result.device_busy, result.device_idle))],
        caption=f"step time {fmt(result.step_time)}; bubble fraction {result.bubble_fraction:.6f} simulated, "
                f"{result.bubble_fraction_formula:.6f} from "
                + ("(P-1)/(M+P-1)" if result.equal_stages else "the unequal-stage formula")
                + (" - agrees" if result.agrees else " - DISAGREES")))
    if plot_dir:
        from ..report.flow_plots import plot_pipeline
        doc["plots"] = [str(plot_pipeline(result, Path(plot_dir) / "flow_pipeline.png"))]
        console.print("plots: " + doc["plots"][0])
    return doc
