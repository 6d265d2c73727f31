"""`batchscope train`: one training run with a progress bar and a summary."""

from __future__ import annotations

import click

from ..errors import ConfigError
from ..report.console import ProgressCallback, console_for, make_table, progress_bar
from ..serialize import dumps, write_json
from ..tasks import OPTIMIZERS, load_task
from ..train import SCHEDULES, TrainConfig, train
from ._outputs import Outputs, check_outputs
from ._options import LEARNING_RATE, SEED, device_name, device_option, json_option, keep_measured_in, task_option


def _adaptive_config(adaptive: bool, max_batch, min_batch, profile_path, plot):
    if not adaptive:
        given = [name for name, v in (("--max-batch", max_batch), ("--min-batch", min_batch),
                                      ("--profile", profile_path), ("--plot", plot)) if v]
        if given:
            raise ConfigError(f"{', '.join(given)} only apply to adaptive runs; add --adaptive")
        return None
    from ..adapt import AdaptiveConfig  # only adaptive runs need the hardware, noise and plan layers

    return AdaptiveConfig(profile=profile_path, max_batch=max_batch, min_batch=min_batch)


def _number(value, fmt: str = ".4g") -> str:
    """A figure of the result JSON, which writes an unbounded end as the string "inf"."""
    try:
        return format(float(value), fmt)
    except (TypeError, ValueError):
        return str(value)


def _adaptive_rows(a: dict) -> list[tuple]:
    """What the batch did: each change with the critical batch behind it, and the measuring cadence."""
    moves = [d for d in a["decisions"] if d["changed"]]
    path = " -> ".join([str(moves[0]["previous"])] + [f"{d['batch_size']} (step {d['step']:,}, B_crit "
                                                      f"{_number(d['b_crit'], '.0f')})" for d in moves]
                       ) if moves else "unchanged"
    est, k = a["final_estimate"], a["noise_factor"]
    b_crit = _number(k * float(est["b_simple"])) if est["b_simple"] is not None else "n/a"
    c = a.get("checks", {})
    bounds = [d["checks"]["bound"] for d in moves if d.get("checks", {}).get("bound", {}).get("checked")]
    capped = sum(b["capped"] for b in bounds)
    guard = (f"moves of at most {c['max_move']}x, {c['dwell']} steps apart; {len(bounds)} rate rise(s) checked "
             f"against {c['stability_fraction']:g} x the SGD bound 2(1+mu)/lambda_max, {capped} capped"
             + (f" (ceiling {_number(c['rate_ceiling'])})" if bounds else "")
             + f"; {len(c['rollbacks'])} roll-back(s)") if c else None
    rows = [("batch size", path),
            ("final B_simple [interval]", f"{_number(est['b_simple'])} [{_number(est['low'])}, {_number(est['high'])}]"
                                          f"; B_crit = {k:g} x B_simple = {b_crit}"),
            ("noise measured", f"first {a['min_samples']} steps, then every {a['measure_every']}; a decision after "
                               f"each; {a['nonfinite_estimates']} non-finite estimate(s) held")]
    return rows + ([("checks", guard)] if guard else [])


def rollback_lines(a: dict) -> list[str]:
    """One line per roll-back of an adaptive run: when, why, and where it went back to."""
    return [f"rolled back at step {r['step']:,} ({r['trigger']}): {r['why']}; batch {r['from_batch']} -> "
            f"{r['to_batch']} from the state kept at step {r['kept_step']:,} ({r['lost_steps']} steps lost); batch "
            f"{r['barred']} and beyond barred until step {_number(r['barred_until'], '.0f')}"
            for r in a.get("checks", {}).get("rollbacks", [])]


FROM_FIND_SETS = ("batch_size", "micro_batch", "lr", "warmup_steps", "resume_from", "adaptive")


def _from_find(path: str, task_spec: str) -> dict:
    """The recommendation and saved measuring run of a find result; the options it sets may not be given too."""
    from click.core import ParameterSource

    from ..plan.find_file import continuation

    ctx = click.get_current_context()
    given = [max(p.opts, key=len) for p in ctx.command.params
             if p.name in FROM_FIND_SETS and ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE]
    if given:
        raise ConfigError(f"--from-find sets the batch, micro-batch, rate and warm-up from the recommendation and "
                          f"continues its measuring run; drop {', '.join(given)} (or train without --from-find)")
    found = continuation(path)
    if ctx.get_parameter_source("task_spec") == ParameterSource.COMMANDLINE or not found["task_spec"]:
        found["task_spec"] = task_spec
    return found


def tensorboard_callbacks(log_dir: str, batch_size: int, micro_batch) -> list:
    try:
        from ..integrations.tensorboard import run_callbacks
    except ImportError as e:  # the extra is not installed: one line naming it
        raise ConfigError(f"--log-dir: {e}") from None
    return run_callbacks(log_dir, batch_size, micro_batch)


def training_options(f):
    """The options that describe one run; shared by the commands that train."""
    opts = [
        click.option("--batch-size", "-b", type=int, default=64, show_default=True,
                     help="examples per optimizer step (B)"),
        click.option("--lr", type=LEARNING_RATE, default=None, help="learning rate [default: the task's]"),
        click.option("--optimizer", type=click.Choice(list(OPTIMIZERS)), default=None,
                     help="[default: the task's]"),
        click.option("--micro-batch", type=int, default=None,
                     help="micro-batch size m; B/m micro-batches per step with gradient accumulation"),
        click.option("--warmup", "warmup_steps", type=int, default=0, show_default=True, help="linear warm-up steps"),
        click.option("--schedule", type=click.Choice(list(SCHEDULES)), default="constant", show_default=True),
        click.option("--seed", type=SEED, default=0, show_default=True),
        click.option("--amp", is_flag=True, help="automatic mixed precision (CUDA only)"),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@click.command("train")
@task_option
@training_options
@click.option("--steps", type=int, default=None, help="optimizer steps (default 500 unless --epochs or --until-target)")
@click.option("--epochs", type=float, default=None, help="passes over the training set")
@click.option("--until-target", is_flag=True, help="stop when the task's target is reached")
@click.option("--eval-every", type=int, default=None, help="steps between evaluations")
@device_option
@click.option("--adaptive", is_flag=True,
              help="let the batch follow the measured noise scale during the run (starts at --batch-size)")
@click.option("--max-batch", type=int, default=None, help="with --adaptive: the largest global batch")
@click.option("--min-batch", type=int, default=None,
              help="with --adaptive: the smallest global batch [default: a quarter of --batch-size]")
@click.option("--profile", "profile_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="with --adaptive: a hardware profile from `batchscope profile --out` (default: measure one)")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="with --adaptive: draw batch size and B_crit over training (PNG)")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="also write the result JSON here")
@click.option("--log-dir", type=click.Path(file_okay=False), default=None,
              help="write TensorBoard scalars here: loss, batch, lr, metric; B_simple with --micro-batch")
@click.option("--checkpoint", type=click.Path(), default=None,
              help="write the run's whole state here every --checkpoint-every steps (resume with --resume-from)")
@click.option("--checkpoint-every", type=int, default=None, help="steps between checkpoints [default: 100]")
@click.option("--resume-from", type=click.Path(), default=None,
              help="continue the run a --checkpoint (or find --out) wrote; with the settings that wrote it it "
                   "resumes, with another batch or rate it continues the run at them (data order, counters and "
                   "history go on; warm-up and schedule count from there)")
@click.option("--from-find", "from_find", type=click.Path(exists=True, dir_okay=False), default=None,
              help="continue the measuring run saved by `batchscope find --out FILE` at its recommended batch, "
                   "micro-batch, rate and warm-up: the run's steps and examples go on from the measuring run's, "
                   "and --steps / --epochs count the whole run")
@json_option
def command(task_spec, batch_size, lr, optimizer, micro_batch, warmup_steps, schedule, seed, amp,
            steps, epochs, until_target, eval_every, device, adaptive, max_batch, min_batch, profile_path, plot, out,
            log_dir, checkpoint, checkpoint_every, resume_from, from_find, as_json) -> None:
    """Train a task once and report loss, metric and time to target."""
    check_outputs(("--out", out, "file"), ("--plot", plot, "file"), ("--log-dir", log_dir, "directory"),
                  ("--checkpoint", checkpoint, "file"))
    found = _from_find(from_find, task_spec) if from_find else None
    if found:
        task_spec, batch_size, micro_batch = found["task_spec"], found["batch_size"], found["micro_batch"]
        lr, warmup_steps, resume_from = found["lr"], found["warmup_steps"], found["checkpoint"]
    task = load_task(task_spec)
    if steps is None and epochs is None and not until_target:
        steps = 500
    acfg = _adaptive_config(adaptive, max_batch, min_batch, profile_path, plot)
    cfg = TrainConfig(batch_size=batch_size, lr=lr, optimizer=optimizer, micro_batch=micro_batch, steps=steps,
                      epochs=epochs, until_target=until_target, warmup_steps=warmup_steps, schedule=schedule,
                      eval_every=eval_every, seed=seed, device=device, amp=amp, adaptive=acfg,
                      checkpoint=checkpoint, checkpoint_every=checkpoint_every or (100 if checkpoint else None),
                      resume=resume_from)
    console = console_for(as_json)
    keep_measured_in(out)  # a diverged run keeps the history measured before the loss blew up
    console.print(f"training {task.name} on {device_name(device)}")
    if found:
        saved = found["saved"]
        console.print(f"continuing find's measuring run from step {saved['step']:,} ({saved['examples']:,} examples "
                      f"at B={saved['batch_size']}, lr {saved['lr']:.4g}) at the recommendation: B={batch_size}, "
                      f"lr {lr:.4g}, warm-up {warmup_steps} steps")
    extra = tensorboard_callbacks(log_dir, batch_size, micro_batch) if log_dir else []
    with progress_bar(console) as progress:
        result = train(task, cfg, [ProgressCallback(progress, f"{task.name} B={batch_size}"), *extra])
    for line in rollback_lines(result.adaptive or {}):   # on stderr with --json
        console.print(line, markup=False)
    doc = result.to_dict()
    outputs = Outputs()
    if plot:
        from ..report.adaptive_plot import plot_adaptive

        drawn = outputs.write("--plot", plot, lambda: plot_adaptive(result.adaptive, plot,
                                                                   f"{task.name}: adaptive batch from {batch_size}"))
        if drawn:
            doc["plot"] = str(drawn)
    if out:
        outputs.write("--out", out, lambda: write_json(out, doc))
    if as_json:
        click.echo(dumps(doc))
    else:
        _print_run(console, task, result, batch_size, adaptive)
    outputs.finish(as_json)


def _print_run(console, task, result, batch_size: int, adaptive: bool) -> None:
    last = result.final
    rows = [
        ("steps / examples", f"{result.steps:,} / {result.examples:,}"),
        ("training time", f"{result.seconds:.1f} s ({result.examples / max(result.seconds, 1e-9):,.0f} examples/s)"),
        ("final train loss", last.loss),
        (f"final {task.target.split} loss", last.eval_loss),
    ]
    if last.metric is not None:
        rows.append((f"final {task.target.split} {task.metric_name}", last.metric))
    if result.reached_target:
        rows.append(("target " + result.target,
                     f"reached at step {result.target_step:,.0f} ({result.target_examples:,.0f} examples, "
                     f"{result.target_seconds:.1f} s)"))
    else:
        rows.append(("target " + result.target, "not reached"))
    if result.adaptive:
        rows += _adaptive_rows(result.adaptive)
    console.print(make_table(f"{task.name}: B={batch_size}{' (adaptive)' if adaptive else ''}, "
                             f"lr={result.config['lr']:g}, "
                             f"{result.config['optimizer']}", ["", "value"], rows,
                             caption=f"stopped: {result.stopped_because}"))
