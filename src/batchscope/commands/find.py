"""`batchscope find`: the recommendation, with its evidence."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import click

from ._interconnect import cluster_from, interconnect_options
from ..plan.find import EXTEND_STEPS
from ._outputs import Outputs, check_outputs
from ._options import (FINITE, LEARNING_RATE, SEED, device_name, device_option, json_option, keep_measured_in,
                       profile_option, task_option)
from ..plan.recommend import OBJECTIVES
from ..report.console import ProgressCallback, console_for, make_table, progress_bar
from ..serialize import dumps, write_json
from ..tasks import load_task


def adaptive_command(task_spec: str, measuring: dict, max_batch, profile_path, device: str) -> str:
    """The `batchscope train --adaptive` line that starts where find's measuring run started."""
    parts = ["batchscope train", f"--task {task_spec}", "--adaptive", f"--batch-size {measuring['batch_size']}",
             f"--lr {measuring['lr']:.4g}", "--until-target"]
    if max_batch:
        parts.append(f"--max-batch {max_batch}")
    if profile_path:
        parts.append(f"--profile {profile_path}")
    if device != "cpu":
        parts.append(f"--device {device}")
    return " ".join(parts)


def _shell_lines(command: str, width: int = 78) -> str:
    """The command indented, broken before options with ``\\`` so it fits 80 columns and still pastes."""
    words = command.split(" --")
    lines, line = [], "  " + words[0]
    for w in words[1:]:
        if len(line) + len(w) + 5 > width:
            lines.append(line + " \\")
            line = "    --" + w
        else:
            line += " --" + w
    return "\n".join(lines + [line])


def _print_adaptive(console, command: str, task_spec: str, profile_path) -> None:
    console.print("or let the batch follow the noise scale as it grows, from the measuring run's batch and rate:")
    console.print(_shell_lines(command), soft_wrap=True, markup=False)
    if not profile_path:
        console.print(f"  (add --profile FILE, saved by `batchscope profile --task {task_spec} --out FILE`, "
                      "to skip measuring the hardware again)")


NEAR = 2                  # candidates shown either side of the choice (--verbose: all)


@click.command("find")
@task_option
@click.option("--objective", type=click.Choice(list(OBJECTIVES)), default="fastest", show_default=True,
              help="fastest: least time to target (on one device, time is what a run costs; the lowest "
                   "regret over the validation suite, benchmarks/results/suite.md); cheapest: least "
                   "compute; balanced: B near B_crit, whatever a step costs")
@click.option("--budget", "measure_fraction", type=FINITE, default=0.05, show_default=True,
              help="measuring run, as a fraction of the examples a full run to the target needs (it goes on, "
                   f"to {EXTEND_STEPS} steps at most, while that run cannot be projected yet)")
@click.option("--target-epochs", type=FINITE, default=None,
              help="instead of the task's target: the loss your reference setting (--ref-batch, --ref-lr) is "
                   "projected to reach after this many epochs (a power law in the examples fitted on the "
                   "measuring run; optimistic near a loss floor), so no baseline run is needed. Choose the epochs "
                   "you would train for at that setting; batch sizes are then compared by the time they take to "
                   "reach that loss")
@profile_option
@click.option("--max-batch", type=int, default=None, help="never recommend a global batch above this")
@click.option("--devices", type=int, default=1, show_default=True,
              help="data-parallel devices (their all-reduce: the interconnect options, as in `plan`)")
@interconnect_options
@click.option("--ref-batch", type=int, default=None,
              help="batch of your known-good setting, the batch the measuring run trains at (any batch from 8 to a "
                   "quarter of the training set: the noise is measured on its eight micro-batches) [default: the "
                   "task's]")
@click.option("--ref-lr", type=LEARNING_RATE, default=None,
              help="learning rate of your known-good setting, the measuring run's rate: a rate known to work at "
                   "--ref-batch [default: the task's]")
@click.option("--step-overhead", type=FINITE, default=None,
              help="seconds per optimizer step that the profile's grid misses on the hardware planned for (data "
                   "loading, framework, logging) [default: measured on the measuring run's real steps, added only "
                   "when the profile is of this device]")
@click.option("--memory-budget", default=None,
              help="memory for one device: 2GiB, 512MB or 40% [default: 90% of free GPU memory, half the free RAM]")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--amp", is_flag=True, help="profile and measure under mixed precision (CUDA only)")
@device_option
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
              help="write a Markdown report with PNG plots (and find.json) to this directory")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="write the JSON result here")
@click.option("--no-verify", "no_verify", is_flag=True,
              help="skip the branch check (short runs forked from the measuring run's end that test the choice "
                   "against B/2, 2B, lr/2 and 2 lr); the SGD stability bound still caps the rate")
@click.option("--verbose", "-v", is_flag=True, help="print every candidate, the schedule's table and the calibration")
@json_option
def command(task_spec, objective, measure_fraction, target_epochs, profile_path, max_batch, devices, link, per_node,
            network, bandwidth, latency, net_bandwidth, net_latency, gamma, ref_batch, ref_lr, step_overhead,
            memory_budget, seed, amp, device, report_dir, out, no_verify, verbose, as_json) -> None:
    """Recommend a batch size, learning rate and growth schedule for a task, with the evidence."""
    from ..hardware import HardwareProfile
    from ..plan.find import find
    from ..plan.sizing import check_grid

    check_outputs(("--out", out, "file"), ("--report", report_dir, "directory"))
    task = load_task(task_spec)
    if (max_batch is None or max_batch > 0) and devices > 0:   # other values: find's own message
        check_grid(task, [devices], None, max_batch)   # the data set or --max-batch leaves no batch for them
    console = console_for(as_json)
    profile = HardwareProfile.load(profile_path) if profile_path else None  # checked against the task by find
    here = device_name(device)
    if profile is None:
        console.print(f"[1/2] profiling the hardware for {task.name} on {here} ...")
    else:
        planned_for = profile.device.get("name") or profile.device.get("type")
        console.print(f"planning for the hardware in {profile_path} ({planned_for}); the noise scale is "
                      f"measured here, on {here}")
    # what was measured before a failure goes where the user asked results to go
    keep_measured_in(out or (report_dir and str(Path(report_dir) / "find-partial.json")))
    with progress_bar(console) as progress:
        result = find(task, device=device, objective=objective, measure_fraction=measure_fraction, profile=profile,
                      max_batch=max_batch, devices=devices, ref_batch=ref_batch, ref_lr=ref_lr,
                      memory_budget=memory_budget, seed=seed, amp=amp, gamma=gamma, target_epochs=target_epochs,
                      step_overhead=step_overhead,
                      cluster=cluster_from(link, per_node, network, bandwidth, latency, net_bandwidth, net_latency),
                      callbacks=[ProgressCallback(progress, "[2/2] measuring noise scale")], verify=not no_verify)
    outputs = Outputs()
    state = save_state(result, out, report_dir, outputs)
    doc = result.to_dict()
    doc["task_spec"] = task_spec
    doc["adaptive_command"] = adaptive_command(task_spec, result.measuring, max_batch, profile_path, device)
    if out:
        outputs.write("--out", out, lambda: write_json(out, located(doc, state, Path(out).parent)))
    if report_dir:
        from ..report.find_report import write_find_report

        if state:
            result.checkpoint = located(doc, state, Path(report_dir))["checkpoint"]
        path = outputs.write("--report", report_dir, lambda: write_find_report(result, task, report_dir))
        if path:
            console.print(f"report: {path}")
    if as_json:
        click.echo(dumps({k: doc[k] for k in doc if k not in ("noise_steps",)}))
    else:
        _print(console, task, result, verbose)
        if state and (out or report_dir):
            saved = out or str(Path(report_dir) / "find.json")
            console.print(f"the measuring run's state is saved in {state}; continue it at the recommendation "
                          f"(its steps and examples count):\n  batchscope train --task {task_spec} --from-find {saved}",
                          soft_wrap=True, markup=False)
        _print_adaptive(console, doc["adaptive_command"], task_spec, profile_path)
    outputs.finish(as_json)


def save_state(result, out, report_dir, outputs: Outputs) -> Optional[Path]:
    """The measuring run's state beside the result (``<out>.ckpt``, else ``find.ckpt`` in the report
    directory), for `train --from-find`; None when neither was asked for or the write failed."""
    from ..plan.find import checkpoint_path

    if not (out or report_dir) or result.live is None:
        return None
    path = checkpoint_path(out) if out else Path(report_dir) / "find.ckpt"
    if report_dir and not out:
        Path(report_dir).mkdir(parents=True, exist_ok=True)
    saved = outputs.write("--out" if out else "--report", path, lambda: result.save_checkpoint(path))
    return path if saved else None


def located(doc: dict, state: Optional[Path], where: Path) -> dict:
    """``doc`` naming the saved state by its path relative to ``where`` (the directory of the JSON written)."""
    if not state:
        return doc
    return {**doc, "checkpoint": {**doc["checkpoint"], "path": os.path.relpath(state, where)}}


def near_the_choice(candidates: list, chosen: int, near: int = NEAR) -> list:
    """The candidates within ``near`` places of the chosen batch (the rows a decision turns on)."""
    at = next(i for i, c in enumerate(candidates) if c["batch_size"] == chosen)
    return candidates[max(0, at - near): at + near + 1]


def schedule_line(schedule: list, chosen: int) -> str:
    """The growth schedule in one sentence: the stages, then where it ends and why it stops there."""
    stages = [f"B={s['batch_size']} (lr {s['lr']:.3g}) from loss {s['from_loss']:.3g}" for s in schedule]
    end = (f"{chosen} is the recommendation; beyond it, `train --adaptive` measures as it goes"
           if schedule and schedule[-1]["batch_size"] == chosen else "")
    return "growth schedule (batch as the training loss falls): " + ", then ".join(stages) + (f"; {end}" if end else "")


def budget_words(b: Optional[dict], cost: dict) -> str:
    """What measuring and branching cost against the budget (a result saved before the budget: the multiple
    of the measuring run's examples)."""
    if not b:
        return f"{cost['share_of_measuring']['examples']:.2g}x the measuring run's examples"
    over = ("; the branches at their floor: the predicted run is extrapolated" if b.get("extrapolated")
            else "" if b["within"] else ", over it" + (": the branches are at their floor" if b["floor"] else ""))
    return (f"measuring + branches {b['measuring_share']:.1%} + {b['branches_share']:.1%} of the predicted run's "
            f"examples, budget {b['budget']:.0%}{over}")


def _print_branches(console, v: dict) -> None:
    """The branch check: one row per branch, what was ruled out and why, the verdict and the cost."""
    if not v.get("enabled"):
        console.print("branch check: off (--no-verify); the recommendation is the model's prediction, unchecked")
        return
    c = v["cost"]
    title = (f"branch check: {c['branches']} branches x {v['examples_per_branch']:,} examples from step "
             f"{v['from_step']} ({budget_words(v.get('budget'), c)}; {c['seconds']:.2g} s here); loss at "
             f"{(v['common_seconds'] or 0) * 1e3:.3g} ms of the profile's time")
    def g3(x):
        return None if x is None else float(f"{x:.3g}")

    rows = [(("> " if b["status"] in ("winner", "kept") else "") + b["label"], b["batch"], g3(b["lr"]), b["steps"],
             g3(b["loss"]), g3(b["se"]), g3(b["eval_loss"]), b["status"].split(":")[0]) for b in v["branches"]]
    console.print(make_table(title, ["branch", "batch", "lr", "steps", "loss at t", "+-", "eval loss", "status"],
                             rows))
    for b in v["branches"]:
        if b["status"].startswith("ruled out"):
            console.print(f"{b['label']} (B={b['batch']}, lr {b['lr']:.4g}) {b['status']}")
    console.print(f"branch check: {v['verdict']}")


def _print(console, task, result, verbose: bool = False) -> None:
    from ..plan.find import micro_batch_limit_reason
    from ..plan.verify import stability_words

    r, m = result.recommendation, result.measuring
    p, bc = result.profile, r.b_crit
    rows = [
        ("batch size", f"{r.batch_size}  (micro-batch {r.micro_batch} x accumulation {r.accumulation}"
                       f" x {r.devices} device{'s' if r.devices > 1 else ''})"),
        ("learning rate", f"{r.lr:.4g}  ({r.lr_rule}), warm-up {r.warmup_steps} steps"),
        ("predicted to target", f"{r.predicted['steps']:,.0f} steps, {r.predicted['examples']:,.0f} examples, "
                                f"{r.predicted['seconds']:.1f} s"),
        ("target", f"{m['target']['stated']} (train loss {m['target']['train_loss']:.3g} there)"),
        ("B_crit", f"{bc['value']:.0f}  ({bc['level']:.0%}: {bc['low']:.0f}-{bc['high']:.0f}) = {bc['factor']:.2f} x "
                   f"B_simple {bc['b_simple']:.3g} measured"),
        *real_step_rows(result.step_time),
        ("micro-batch limit", f"{p.max_batch:,} ({micro_batch_limit_reason(p)})"),
        ("measuring run", f"{m['steps']} steps at B={m['batch_size']} on {m.get('device')} = "
                          f"{m['fraction_of_projected_run']:.1%} of the projected run ({m['stopped_because']})"
                          f"{cost_words(m)}"),
    ]
    stability = stability_words(r)
    if stability:
        rows.append(("rate stability", stability))
    if verbose or not result.step_time:
        rows.insert(6, ("step time", f"{p.alpha * 1e3:.3g} ms + {p.beta * 1e6:.3g} us x B on {p.device.get('type')} "
                                     "(the profile's grid)"))
    if verbose:
        bs = r.b_simple_at_target
        rows.append(("B_simple at the target", f"{bs['value']:.3g}  ({bs['low']:.3g}-{bs['high']:.3g}) at training "
                                               f"loss {bs['loss']:.3g}, from the growth law (extrapolated "
                                               f"{bs['extrapolation']:.1f}x)"))
    console.print(make_table(f"{task.name}: recommendation ({r.objective})", ["", "value"], rows))
    shown = r.candidates if verbose else near_the_choice(r.candidates, r.batch_size)
    title = "candidates" if verbose else f"candidates near the choice (--verbose: all {len(r.candidates)})"
    console.print(make_table(title, ["batch", "micro x acc", "steps", "examples", "seconds", "time / fastest",
                                     "compute / E_min"],
                             [(("> " if c["batch_size"] == r.batch_size else "") + str(c["batch_size"]),
                               f"{c['micro_batch']} x {c['accumulation']}", round(c["steps"]), round(c["examples"]),
                               c["seconds"], c["relative_time"], c["relative_compute"]) for c in shown]))
    console.print(schedule_line(r.schedule, r.batch_size))
    _print_branches(console, r.verification)
    if verbose:
        console.print(f"calibration: {bc['calibration']}")
        for c in r.constraints:
            console.print(f"constraint: {c}")
    for c in r.caveats:
        console.print(f"caveat: {c}")


def real_step_rows(st: dict) -> list[tuple[str, str]]:
    """The grid against the real steps at the measuring layout, and what the model adds (one row)."""
    if not st:
        return []
    label, _, value = st["line"].partition(": ")
    if not st.get("added") and st.get("overhead_seconds"):
        value += " (the profile is of another device; see --step-overhead)"
    return [(label, value)]


def cost_words(m: dict) -> str:
    """What measuring cost, the timed steps after it included, in steps, examples and seconds."""
    cost, timed = m.get("cost"), m.get("timed_steps")
    if not cost:
        return ""
    return (f"; cost with {timed['steps']} timed steps: {cost['steps']:,} steps, {cost['examples']:,} examples, "
            f"{cost['seconds']:.2f} s")
