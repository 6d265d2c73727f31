"""`batchscope plan`: how many devices, at which global batch, to reach the target soonest or cheapest."""

from __future__ import annotations

import textwrap

import click

from ._interconnect import cluster_from, interconnect_options
from ._outputs import Outputs, check_outputs
from ._options import FINITE, SEED, device_option, json_option, task_option
from ..errors import ConfigError
from ..report.console import console_for
from ..serialize import dumps, write_json
from ..tasks import load_task


def _ints(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v <= 0 for v in values):
        raise ConfigError(f"--{name} must be comma-separated positive integers like 1,2,4,8. Got {text!r} instead.")
    return values


def _measure_comm(console, ranks):
    from ..plan.distributed import measure_allreduce

    console.print("measuring all-reduce on this machine (torch.distributed) ...")
    fit = measure_allreduce(ranks)
    console.print(f"measured: {fit.link.describe()} on {fit.ranks} ranks (R^2 {fit.r2:.3f}); used within a node")
    if fit.r2 < 0.9:
        console.print("caveat: the all-reduce times scatter about the fit (R^2 below 0.9): other work on this "
                      "machine was probably competing; measure again when it is quiet")
    return fit


def _measured(task, find_path, profile_path, device, seed, console):
    from ..plan.sizing import measured_from_find, measured_from_result, read_find_result

    if find_path:
        return measured_from_find(read_find_result(find_path), task, find_path)
    from ..hardware import HardwareProfile
    from ..plan.find import find

    console.print(f"no --find result: measuring the noise scale and the hardware for {task.name} now (find) ...")
    profile = HardwareProfile.load(profile_path) if profile_path else None
    return measured_from_result(find(task, device=device, profile=profile, seed=seed))


def _links_note(link: str, per_node: int, network: str, fit, profile) -> str:
    """Which interconnect the table assumes, and whether it was chosen, measured or left at the default."""
    ctx = click.get_current_context()
    default = {name: ctx.get_parameter_source(name) == click.core.ParameterSource.DEFAULT
               for name in ("link", "network", "bandwidth", "latency")}
    link_default = default["link"] and default["bandwidth"] and default["latency"]
    inside = ("measured here" if fit is not None else
              f"{link} ({'assumed by default' if link_default else 'as given'})")
    between = ("none (one node)" if network == "none" else
               f"{network} ({'assumed by default' if default['network'] else 'as given'})")
    note = f"links: within nodes of {per_node}, {inside}; between nodes, {between}"
    if fit is None and default["link"] and default["network"]:
        note += (f"; the profile is of a {profile.device.get('type', 'device')}: set --link/--network to the "
                 "cluster you plan for, or --measure-comm")
    return note


@click.command("plan")
@task_option
@click.option("--find", "find_path", type=click.Path(dir_okay=False), default=None,
              help="a `batchscope find --out` result: its noise scale and hardware profile [default: run find now]")
@click.option("--profile", "profile_path", type=click.Path(dir_okay=False), default=None,
              help="hardware profile to use when find runs now")
@click.option("--devices", "devices_text", default="1,2,4,8,16,32,64", show_default=True, help="device counts")
@click.option("--batches", "batches_text", default=None, help="global batches [default: powers of two x devices]")
@interconnect_options
@click.option("--measure-comm", is_flag=True, help="time all-reduce on the devices at hand and use the fit in a node")
@click.option("--comm-ranks", type=int, default=None, help="processes for --measure-comm [default: GPUs, or 2 on CPU]")
@click.option("--grad-dtype", type=click.Choice(["model", "bfloat16", "float16"]), default="model", show_default=True,
              help="dtype of the all-reduced gradients (bf16/fp16: a DDP compression hook)")
@click.option("--device-memory", default=None, help="memory of one target device, e.g. 80GB [default: the profile's]")
@click.option("--price", type=FINITE, default=None, help="price of one device-hour")
@click.option("--knee", "knee_fraction", type=FINITE, default=0.25, show_default=True,
              help="knee: doubling the devices saves at most this fraction of the time")
@click.option("--max-batch", type=int, default=None, help="largest global batch to consider")
@click.option("--seed", type=SEED, default=0, show_default=True)
@device_option
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="write a PNG: time and cost")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="write the JSON result here")
@json_option
def command(task_spec, find_path, profile_path, devices_text, batches_text, link, per_node, network, bandwidth,
            latency, net_bandwidth, net_latency, gamma, measure_comm, comm_ranks, grad_dtype,
            device_memory, price, knee_fraction, max_batch, seed, device, plot_path, out, as_json) -> None:
    """Predict time to target and device-hours over device counts and global batches; fastest, cheapest, knee."""
    import torch

    from ..hardware.units import parse_bytes
    from ..plan.sizing import check_grid, plan_devices
    from ..report.plan_report import frontier_lines, plan_table, plot_plan

    check_outputs(("--out", out, "file"), ("--plot", plot_path, "file"))
    console = console_for(as_json)
    devices = _ints(devices_text, "devices")
    batches = _ints(batches_text, "batches") if batches_text else None
    memory = parse_bytes(device_memory, name="device_memory") if device_memory else None
    task = load_task(task_spec)
    check_grid(task, devices, batches, max_batch)   # the data set or --max-batch rules these out before measuring
    if comm_ranks is not None and not measure_comm:
        raise ConfigError(f"--comm-ranks {comm_ranks} sets the processes of --measure-comm; add --measure-comm "
                          "or drop --comm-ranks")
    options = (link, per_node, network, bandwidth, latency, net_bandwidth, net_latency)
    cluster = cluster_from(*options)          # checked before anything is measured
    fit = _measure_comm(console, comm_ranks) if measure_comm else None
    if fit is not None:                       # printed as soon as measured: an error later loses nothing
        cluster = cluster_from(*options, measured=fit.link)
    measured = _measured(task, find_path, profile_path, device, seed, console)
    dtype = None if grad_dtype == "model" else getattr(torch, grad_dtype)
    dp = plan_devices(task, measured, cluster, devices=devices, batches=batches, gamma=gamma, price=price,
                      knee_fraction=knee_fraction, device_memory=memory, grad_dtype=dtype, max_batch=max_batch)
    doc = dp.to_dict()
    if fit is not None:
        doc["comm_measurement"] = {"bandwidth": fit.link.bandwidth, "latency": fit.link.latency, "ranks": fit.ranks,
                                   "r2": fit.r2, "points": fit.points}
    outputs = Outputs()
    if out:
        outputs.write("--out", out, lambda: write_json(out, doc))
    if plot_path:
        drawn = outputs.write("--plot", plot_path,
                              lambda: plot_plan(dp, plot_path, f"{task.name}: time and cost against the device count"))
        if drawn:
            console.print(f"plot: {drawn}")
    if as_json:
        click.echo(dumps(doc))
    else:
        console.print(plan_table(dp, task.name, _links_note(link, per_node, network, fit, measured.profile)))
        for line in frontier_lines(dp) + [f"assumes: {a}" for a in dp.assumptions] + dp.plan.notes:
            console.print(textwrap.fill(line, 80, subsequent_indent="    ", break_on_hyphens=False))
    outputs.finish(as_json)
