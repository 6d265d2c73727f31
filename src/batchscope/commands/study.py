"""`batchscope study`: the batch-size experiments, saved run by run, resumable."""

from __future__ import annotations

import math
import os
from pathlib import Path

import click

from ._options import FINITE, device_option, json_option, task_option
from ._outputs import Outputs, check_outputs
from ..errors import ConfigError, check_lr
from ..report.console import console_for, make_table
from ..serialize import dumps
from ..study.plan import DEFAULT_BATCH_SIZES, LR_RULES, StudyPlan
from ..study.runner import RunRecord, run_study
from ..study.store import StudyError


def _numbers(kind, name):
    def parse(ctx, param, value):
        if value is None:
            return None
        try:
            got = tuple(kind(v) for v in value.split(",") if v.strip())
        except ValueError:
            raise click.BadParameter(f"expected comma-separated numbers like 1,2,4; got {value!r}", param_hint=name)
        if not all(math.isfinite(v) for v in got):   # 1e400 reads as inf
            raise click.BadParameter(f"expected finite numbers; got {value!r}", param_hint=name)
        return got
    return parse


def _lrs(ctx, param, values):
    out = {}
    for v in values:
        name, sep, num = v.rpartition("=")
        try:
            rate = check_lr("lr", float(num))
        except ValueError as e:   # not a number, or not a usable rate (ConfigError is a ValueError)
            why = (str(e) if isinstance(e, ConfigError)
                   else f"expected OPTIMIZER=RATE or RATE, like adam=0.001; got {v!r}")
            raise click.BadParameter(why, param_hint="--lr")
        out[name.strip().lower() if sep else "*"] = rate
    return out


@click.command("study")
@task_option
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None,
              help="study directory (study.db, lock, report); required unless --resume")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), default=None,
              help="continue the study in this directory with its stored plan (grid options are "
                   "ignored): run only what is missing")
@click.option("--batch-sizes", callback=_numbers(int, "--batch-sizes"), default=",".join(map(str, DEFAULT_BATCH_SIZES)),
              show_default=True)
@click.option("--epochs", type=FINITE, default=None, help="budget: passes over the training set (default 10)")
@click.option("--steps", type=int, default=None, help="budget: optimizer steps, the same for every batch size")
@click.option("--optimizers", default="sgd,adam", show_default=True, help="comma-separated: sgd, adam, adamw")
@click.option("--lr", "lrs", multiple=True, callback=_lrs,
              help="lr at the reference batch: RATE for all, or OPTIMIZER=RATE (repeat) [default: task's / adam 1e-3]")
@click.option("--lr-rules", default="none,linear,sqrt", show_default=True,
              help=f"how lr follows B: {', '.join(LR_RULES)}")
@click.option("--reference-batch", type=int, default=None, help="B_ref of the lr rules [default: smallest batch size]")
@click.option("--lr-grid", callback=_numbers(float, "--lr-grid"), default="1", show_default=True,
              help="multipliers on each rule's lr, e.g. 0.5,1,2")
@click.option("--warmup-epochs", callback=_numbers(float, "--warmup-epochs"), default="0", show_default=True,
              help="gradual linear warm-up lengths to compare, e.g. 0,2")
@click.option("--seeds", callback=_numbers(int, "--seeds"), default="0", show_default=True, help="e.g. 0,1,2")
@click.option("--target", type=FINITE, default=None, help="target value for steps-to-target [default: the task's]")
@click.option("--grad-norm-batches", type=int, default=1000, show_default=True,
              help="N fresh batches per gradient-norm checkpoint (0 skips it)")
@click.option("--noise-steps", type=int, default=500, show_default=True,
              help="steps of the B_simple measurement set beside B_crit (0 skips it)")
@click.option("--evals", "evals_per_run", type=int, default=50, show_default=True, help="evaluations per run")
@click.option("--workers", type=int, default=1, show_default=True, help="parallel worker processes")
@click.option("--devices", "devices_text", default=None,
              help="one worker per device: cuda:0,cuda:1,... | auto | cpu (instead of --workers)")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="run each run as a Ray task: on the cluster at ADDRESS, or a local Ray without one")
@click.option("--adaptive", is_flag=True, default=False,
              help="add one run per optimizer and seed whose batch follows the gradient noise scale")
@click.option("--profile", "profile_path", type=click.Path(dir_okay=False), default=None,
              help="hardware profile for the adaptive runs (`batchscope profile --out`) [default: measured once]")
@click.option("--report/--no-report", "make_report", default=True, show_default=True,
              help="write report.md, report.html and plots into the directory at the end")
@device_option
@json_option
def command(task_spec, directory, resume_dir, batch_sizes, epochs, steps, optimizers, lrs, lr_rules, reference_batch,
            lr_grid, warmup_epochs, seeds, target, grad_norm_batches, noise_steps, evals_per_run, workers, devices_text,
            ray_address, adaptive, profile_path, make_report, device, as_json) -> None:
    """Sweep batch sizes (with lr rules, warm-up, optimizers, seeds) and save every run as it finishes."""
    from ..report.console import progress_bar

    if bool(directory) == bool(resume_dir):
        raise ConfigError("give exactly one of --dir DIR (a new study) or --resume DIR (continue one)")
    check_outputs(("--dir", directory, "directory"), ("--resume", resume_dir if resume_dir and
                                                      Path(resume_dir).is_dir() else None, "directory"))
    console = console_for(as_json)
    devices = _placement(workers, devices_text, ray_address)
    plan = None if resume_dir else _plan(task_spec, batch_sizes, epochs, steps, optimizers, lrs, lr_rules,
                                         reference_batch, lr_grid, warmup_epochs, seeds, target, grad_norm_batches,
                                         noise_steps, evals_per_run, device, adaptive, profile_path)
    where = directory or resume_dir
    failures: list[str] = []                 # the reason of each run that failed twice, for the last line
    with progress_bar(console) as progress:
        bar = {}

        def on_start(total: int, done: int) -> None:
            bar["id"] = progress.add_task(f"study {where}", total=total, completed=done, info="")
            bar["done"] = done

        def on_run(record: RunRecord, done: int, total: int) -> None:
            acc = record.final.get("val_metric")
            info = f"{record.key}: {record.status}" + (f", val {acc:.3f}" if acc is not None else "")
            progress.update(bar["id"], completed=done, info=info)
            bar["done"] = done
            if record.status == "failed":
                failures.append(f"{record.key}: {record.message}")

        def on_noise() -> None:
            progress.update(bar["id"], info="measuring B_simple")

        try:
            summary = run_study(where, plan, resume=bool(resume_dir), workers=workers, devices=devices,
                                ray=ray_address, on_run=on_run, on_start=on_start, on_noise=on_noise)
        except KeyboardInterrupt:
            saved = bar.get("done", 0)
            if saved:  # only say so when runs were actually saved
                click.echo(f"{saved} finished run(s) are saved in {where}; continue with "
                           f"`batchscope study --resume {where}`", err=True)
            raise
    outputs, files = Outputs(), None
    if make_report:
        from ..report.study_report import write_report

        files = outputs.write("the report into", where, lambda: write_report(where))
    doc = {"summary": summary, "report": files.markdown if files else None}
    if as_json:
        click.echo(dumps(doc))
    else:
        _print_summary(console, where, summary, files)
    if failures:  # the study ran but measured nothing for these: the reason, once, and an exit status to match
        also = outputs.problem(as_json)
        raise StudyError(f"{len(failures)} of {summary.total} runs failed twice and were not measured; the first: "
                         f"{failures[0]}; fix the cause, then `batchscope study --resume {where}` runs them again "
                         f"(the reasons are saved in {where}/study.db)" + (f"; also {also}" if also else ""))
    outputs.finish(as_json)


def _print_summary(console, where, summary, files) -> None:
    rows = [("runs in the study", summary.total), ("already done before", summary.done_before),
            ("run now", summary.ran), ("diverged", summary.diverged), ("failed (twice)", summary.failed),
            ("time", f"{summary.seconds / 60:.1f} min")]
    if files:
        rows.append(("report", str(files.markdown)))
    console.print(make_table(f"study {where}", ["", "value"], rows))


def _placement(workers: int, devices_text, ray_address):
    """Where the runs run: N local workers, one per device, or Ray; checked before anything starts."""
    from ..study.placement import resolve_devices
    from ..study.ray_runs import check_reachable, import_ray

    devices = resolve_devices(devices_text)
    if sum((workers > 1, devices is not None, ray_address is not None)) > 1:
        raise ConfigError("give one of --workers N, --devices LIST or --ray: they are three ways to run the runs")
    if ray_address is not None:
        import_ray()  # a missing extra, or a cluster that is not there, is one line before anything starts
        check_reachable(ray_address or os.environ.get("RAY_ADDRESS", ""))
    return devices


def _plan(task_spec, batch_sizes, epochs, steps, optimizers, lrs, lr_rules, reference_batch, lr_grid, warmup_epochs,
          seeds, target, grad_norm_batches, noise_steps, evals_per_run, device, adaptive=False,
          profile_path=None) -> StudyPlan:
    """The StudyPlan the options describe (a new study)."""
    if epochs is not None and steps is not None:
        raise ConfigError("give a budget in --epochs or in --steps, not both")
    profile = None
    if profile_path is not None:
        if not adaptive:
            raise ConfigError("--profile is the hardware profile of the adaptive runs; "
                              "add --adaptive or drop --profile")
        from ..hardware import HardwareProfile

        profile = HardwareProfile.load(profile_path).to_dict()
    opts = tuple(o.strip() for o in optimizers.split(",") if o.strip())
    given = dict(lrs)
    common = given.pop("*", None)
    if common is not None:
        given = {**{o: common for o in opts}, **given}
    return StudyPlan(task=task_spec, batch_sizes=batch_sizes, budget="steps" if steps is not None else "epochs",
                     epochs=epochs if epochs is not None else 10.0, steps=steps, optimizers=opts, lrs=given,
                     lr_rules=tuple(r.strip() for r in lr_rules.split(",") if r.strip()),
                     reference_batch=reference_batch, lr_grid=lr_grid, warmup_epochs=warmup_epochs, seeds=seeds,
                     target=target, grad_norm_batches=grad_norm_batches, noise_steps=noise_steps,
                     evals_per_run=evals_per_run, device=device, adaptive=adaptive, profile=profile)
