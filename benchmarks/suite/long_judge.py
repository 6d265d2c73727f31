"""The long tier judged under three clocks: fixed batches now, schedules (arms) as they are added.

Reads benchmarks/suite/long_ground_truth.json (long_tier.py) and, per task and clock (clocks.py:
this machine's timing pass A, the GPU-shaped stand-in, 8 devices over NVLink 4), charges every
run's steps on the clock:

- the best fixed batch: the swept batch with the least time to target (steps: geometric mean of
  two seeds at that batch's best rate; batch and rate chosen with hindsight, per clock);
- batch 32, and the largest batch swept (the largest that fits under every clock here);
- every further arm: a function (task, seed, clock) -> the run's path [(steps, batch), ...] to
  the target, or None when it did not get there, raising :class:`NotRun` when it has no run there
  (shown as '-', left out of the summary); its time is the geometric mean over the seeds of
  sum(steps x t(batch)). An arm that needs the clock as a hardware profile gets it from
  :func:`clock_profile` (`find --profile`, `train --adaptive --profile` take the same file). An arm
  may carry ``details(task, seeds, clock) -> dict``, kept beside its time (find's measuring cost).
  By default the arms are the anchors' stored runs (long_anchors.py: adaptive, find, find incl.
  its measuring run, batch warm-up, Seesaw), each where it has runs; per clock the summary also
  counts the tasks on which adaptive is ahead of Seesaw and of the warm-up, and states find's
  measuring cost against the best fixed run's examples.

Under this machine's clock the A/A control (timing pass B) says how far the ratios move with the
machine's state. Writes benchmarks/results/suite_long.{json,md} and each task's clocks as hardware
profiles under benchmarks/suite/long_profiles/ (<task>.<clock>.json).

    PYTHONPATH=src python benchmarks/suite/long_judge.py
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).parent))

import clocks as C  # noqa: E402
from common import geomean, read_json, write_json  # noqa: E402
from tasks import LONG  # noqa: E402

from batchscope.plan.devices import gradient_bytes  # noqa: E402

HERE = Path(__file__).parent
RESULTS = HERE.parent / "results"
STORE = HERE / "long_ground_truth.json"
PROFILES = HERE / "long_profiles"
ANCHOR_RUNS = HERE / "long_anchor_runs.json"
SEEDS = (0, 1)
LONG_RUN = 2000          # steps: the long tier asks at least this many of the best fixed run

Arm = Callable[[object, int, C.Clock], Optional[C.Path]]


class NotRun(LookupError):
    """An arm has no stored run for this task, clock or seed: shown as '-', not as 'not reached'."""


def fixed_arm(entry: dict, batch: int) -> Arm:
    """The ground truth's run at ``batch`` (its best rate), seed by seed: no training, a lookup."""
    row = entry["best_per_batch"][str(batch)]

    def arm(task, seed: int, clock: C.Clock) -> Optional[C.Path]:
        steps = row["steps"][seed] if seed < len(row["steps"]) else None
        return None if steps is None else C.fixed_path(steps, batch)
    return arm


def arm_seconds(arm: Arm, task, clock: C.Clock, seeds=SEEDS) -> dict:
    """Time to target of ``arm`` under ``clock``: the geometric mean over seeds (inf if a seed missed;
    None, with ``not_run`` saying why, where the arm has no run for a seed)."""
    try:
        paths = [arm(task, s, clock) for s in seeds]
    except NotRun as e:
        return {"seconds": None, "steps": None, "reached": None, "not_run": str(e)}
    if any(p is None for p in paths):
        return {"seconds": math.inf, "steps": None, "reached": sum(p is not None for p in paths)}
    return {"seconds": geomean([C.path_seconds(clock, p) for p in paths]),
            "steps": geomean([C.path_steps(p) for p in paths]), "reached": len(paths),
            "examples": geomean([C.path_examples(p) for p in paths])}


def best_fixed(entry: dict, clock: C.Clock, seeds=None) -> int:
    """The swept batch with the least time to target under ``clock`` (geometric mean over ``seeds``)."""
    seeds = seeds_of(entry) if seeds is None else seeds
    times = {int(b): arm_seconds(fixed_arm(entry, int(b)), None, clock, seeds)["seconds"]
             for b in entry["best_per_batch"]}
    return min(sorted(times), key=lambda b: times[b])


def seeds_of(entry: dict) -> tuple[int, ...]:
    """The seeds the ground truth ran at every batch (two in the tier; one in a test's sweep)."""
    return tuple(range(min(len(v["steps"]) for v in entry["best_per_batch"].values())))


def task_clocks(task, entry: dict) -> dict[str, C.Clock]:
    """The three clocks of one task; 'cpu_control' is this machine's timing pass B (the A/A control)."""
    to_int = lambda d: {int(b): s for b, s in d.items()}  # noqa: E731
    return {"cpu": C.measured(to_int(entry["step_seconds"]), "this machine, pass A"),
            **C.stated(gradient_bytes(task.make_model())),
            "cpu_control": C.measured(to_int(entry["step_seconds_control"]), "this machine, pass B")}


def clock_profile(task, clock: C.Clock, batches) -> "C.HardwareProfile":
    """``clock`` as the hardware profile of ``task`` over ``batches`` (powers of two from 1 for the stated
    clocks, so the profile is exact there; the measured batches for this machine's)."""
    if clock.name == "gpu":
        grid = [2 ** i for i in range(int(math.log2(max(batches))) + 1)]
    elif clock.name.startswith("dp"):
        grid = [b for b in (2 ** i for i in range(int(math.log2(max(batches))) + 1)) if b >= C.DP_DEVICES]
    else:
        grid = sorted(batches)
    return C.profile(clock, task.name, task.parameter_count(), grid,
                     {"name": task.optimizer, "lr": task.lr, "momentum": task.momentum,
                      "weight_decay": task.weight_decay})


def save_profile(prof: "C.HardwareProfile", path: Path) -> None:
    """Write ``prof`` to ``path`` unless the file there already says the same (all but its date)."""
    same = lambda d: {k: v for k, v in d.items() if k != "created"}  # noqa: E731
    if not path.exists() or same(C.HardwareProfile.load(path).to_dict()) != same(prof.to_dict()):
        prof.save(path)


def judge_clock(task, entry: dict, clock: C.Clock, arms: dict[str, Arm]) -> dict:
    """Fixed batches and every arm under one clock, each as time and ratio to the best fixed batch."""
    batches = sorted(int(b) for b in entry["best_per_batch"])
    seeds = seeds_of(entry)
    fixed = {b: arm_seconds(fixed_arm(entry, b), task, clock, seeds) for b in batches}
    best = best_fixed(entry, clock, seeds)
    t_best = fixed[best]["seconds"]
    out = {"clock": clock.name, "description": clock.description,
           "step_seconds": {str(b): clock.step_seconds(b) for b in batches},
           "fixed": {str(b): {**v, "ratio": v["seconds"] / t_best} for b, v in fixed.items()},
           "best": {"batch": best, "lr": entry["best_per_batch"][str(best)]["lr"], **fixed[best]},
           "batch_32": {"batch": 32, **fixed[32], "ratio": fixed[32]["seconds"] / t_best} if 32 in fixed else None,
           "largest": {"batch": batches[-1], **fixed[batches[-1]], "ratio": fixed[batches[-1]]["seconds"] / t_best},
           "arms": {}}
    for name, arm in arms.items():
        got = arm_seconds(arm, task, clock, seeds)
        out["arms"][name] = {**got, "ratio": None if got["seconds"] is None else got["seconds"] / t_best}
        if got["seconds"] is not None and hasattr(arm, "details"):
            try:
                out["arms"][name]["details"] = arm.details(task, seeds, clock)
            except NotRun:
                pass
    return out


def judge_task(name: str, entry: dict, registry=LONG, arms: Optional[dict] = None,
               profiles: Optional[Path] = PROFILES) -> dict:
    task = registry[name]()
    cl = task_clocks(task, entry)
    s = entry["summary"]
    out = {"task": name, "kind": entry.get("kind", ""), "optimizer": entry["optimizer"], "model": entry["model"],
           "target": entry["target"], "n_train": entry["n_train"], "parameters": entry["parameters"],
           "b_crit": {"value": s["b_crit"], "low": s.get("b_crit_low"), "high": s.get("b_crit_high"),
                      "at_edge": s.get("b_crit_at_edge")},
           "runs": len(entry["runs"]), "wall_seconds": entry.get("wall_seconds"),
           "cpu_seconds": entry.get("cpu_seconds"), "train_seconds": entry.get("train_seconds"),
           "clocks": {k: judge_clock(task, entry, c, arms or {}) for k, c in cl.items()}}
    if profiles is not None:
        profiles.mkdir(parents=True, exist_ok=True)
        batches = [int(b) for b in entry["best_per_batch"]]
        out["profiles"] = {}
        for k in ("cpu", "gpu", "dp8"):
            path = profiles / f"{name}.{k}.json"
            save_profile(clock_profile(task, cl[k], batches), path)
            out["profiles"][k] = str(path.relative_to(HERE.parent.parent) if path.is_relative_to(HERE.parent.parent)
                                     else path)
    return out


CLOCK_TITLES = {"cpu": "this machine's clock", "gpu": "the GPU-shaped clock", "dp8": "8 devices over NVLink 4"}


def summary(results: list[dict]) -> dict:
    """Per clock over the tasks: how long the best fixed runs are, and batch 32 / largest / arms against it
    (median and worst of the ratio over the tasks where the arm has runs; ``arms`` names them in order)."""
    out = {}
    for k in CLOCK_TITLES:
        rows = [r["clocks"][k] for r in results]
        s = {"tasks": len(rows), "best_batches": [x["best"]["batch"] for x in rows],
             "long_runs": sum(x["best"]["steps"] >= LONG_RUN for x in rows),
             "best_steps_min": min(x["best"]["steps"] for x in rows), "arms": list(rows[0]["arms"])}
        for anchor in ("batch_32", "largest"):
            ratios = [x[anchor]["ratio"] for x in rows if x[anchor]]
            if ratios:
                s[anchor] = {"median": statistics.median(ratios), "worst": max(ratios), "tasks": len(ratios)}
        for arm in s["arms"]:
            ratios = [x["arms"][arm]["ratio"] for x in rows if x["arms"][arm]["ratio"] is not None]
            s[arm] = ({"median": statistics.median(ratios), "worst": max(ratios), "tasks": len(ratios)} if ratios
                      else {"median": None, "worst": None, "tasks": 0})
        s["adaptive_ahead"] = {other: ahead(rows, "adaptive", other) for other in ("seesaw", "warmup")
                               if "adaptive" in s["arms"] and other in s["arms"]}
        s["find_measuring"] = measuring_cost(results, k) if "find (incl. measuring)" in s["arms"] else []
        out[k] = s
    return out


def ahead(rows: list[dict], arm: str, other: str) -> dict:
    """On how many tasks (of those where both have runs) ``arm`` reached the target in less time than ``other``."""
    both = [x["arms"] for x in rows if x["arms"][arm]["ratio"] is not None and x["arms"][other]["ratio"] is not None]
    return {"ahead": sum(a[arm]["seconds"] < a[other]["seconds"] for a in both), "of": len(both)}


def measuring_cost(results: list[dict], k: str) -> list[dict]:
    """find's measuring run per task under clock ``k``: steps, examples, this machine's seconds, and its
    examples as a share of the best fixed run's."""
    out = []
    for r in results:
        c = r["clocks"][k]
        d = c["arms"]["find (incl. measuring)"].get("details")
        if d:
            best = c["best"]["examples"]
            out.append({"task": r["task"], **d, "share_of_best_examples": d["measuring_examples"] / best})
    return out


def _secs(x: float) -> str:
    return "not reached" if not math.isfinite(x) else f"{x:.3g}s" if x >= 0.1 else f"{x * 1e3:.3g}ms"


def _arm_cell(a: dict) -> str:
    if a["ratio"] is None:
        return "-"
    return f"{_secs(a['seconds'])}, {a['ratio']:.2f}" if math.isfinite(a["ratio"]) else _secs(a["seconds"])


def _clock_table(results: list[dict], k: str) -> list[str]:
    arms = list(results[0]["clocks"][k]["arms"])
    head = ["task", "t(32), t(largest)", "best fixed: B (lr)", "steps", "time", "batch 32: steps, time", "32 / best",
            "largest: B, steps, time", "largest / best"] + [f"{a}: time, / best" for a in arms]
    if k == "cpu":
        head.append("A/A (pass B): best B, 32 / best, largest / best")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        c = r["clocks"][k]
        b32, big, best = c["batch_32"], c["largest"], c["best"]
        t = c["step_seconds"]
        cells = [r["task"], f"{_secs(t['32']) if '32' in t else '-'}, {_secs(t[str(big['batch'])])}",
                 f"{best['batch']} ({best['lr']:.3g})", f"{best['steps']:.0f}", _secs(best["seconds"]),
                 f"{b32['steps']:.0f}, {_secs(b32['seconds'])}" if b32 else "-", f"{b32['ratio']:.2f}" if b32 else "-",
                 f"{big['batch']}, {big['steps']:.0f}, {_secs(big['seconds'])}", f"{big['ratio']:.2f}"]
        cells += [_arm_cell(c["arms"][a]) for a in arms]
        if k == "cpu":
            cc = r["clocks"]["cpu_control"]
            cells.append(f"{cc['best']['batch']}, {cc['batch_32']['ratio']:.2f}, {cc['largest']['ratio']:.2f}"
                         if cc["batch_32"] else f"{cc['best']['batch']}, -, {cc['largest']['ratio']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _ground_truth_table(results: list[dict]) -> list[str]:
    lines = ["| task | model | data | optimizer | target | runs | B_crit [95%] | CPU min | wall min |",
             "|---|---|---|---|---|---:|---|---:|---:|"]
    for r in results:
        b = r["b_crit"]
        edge = " (at the edge)" if b["at_edge"] else ""
        fitted = f"{b['value']:.0f} [{b['low']:.0f}-{b['high']:.0f}]{edge}" if b["value"] else "fewer than 3 batches"
        cpu = f"{r['cpu_seconds'] / 60:.1f}" if r.get("cpu_seconds") else "-"
        wall = f"{r['wall_seconds'] / 60:.1f}" if r.get("wall_seconds") else "-"
        lines.append(f"| {r['task']} | {r['model']} | {r['n_train']:,} train | {r['optimizer']} | {r['target']} | "
                     f"{r['runs']} | {fitted} | {cpu} | {wall} |")
    return lines


def _ratio(x: float) -> str:
    return f"{x:.2f}" if math.isfinite(x) else "not reached"


def _summary_lines(g: dict) -> list[str]:
    """One clock's summary as bullets: ratios to the best fixed run, adaptive against the schedules, find's
    measuring cost."""
    lines = []
    for name in [x for x in ("batch_32", "largest", *g["arms"]) if x in g]:
        v = g[name]
        where = "" if v["tasks"] == g["tasks"] else f" ({v['tasks']} of {g['tasks']} tasks run)"
        lines.append(f"- {name.replace('_', ' ')} / best fixed: " + (
            f"median {_ratio(v['median'])}, worst {_ratio(v['worst'])}{where}" if v["tasks"] else "not run"))
    for other, v in g.get("adaptive_ahead", {}).items():
        lines.append(f"- adaptive ahead of {other} on {v['ahead']} of {v['of']} tasks (where both have runs)"
                     if v["of"] else f"- adaptive against {other}: no task with runs of both")
    for m in g.get("find_measuring", []):
        lines.append(f"- find's measuring run on {m['task']}: {m['measuring_steps']:.0f} steps at batch "
                     f"{m['measuring_batch']}, {m['measuring_examples']:,.0f} examples "
                     f"({m['share_of_best_examples']:.1%} of the best fixed run's), "
                     f"{m['measuring_seconds']:.3g}s on this machine (geometric means over the seeds)")
    return lines


def markdown(results: list[dict], s: dict, meta: dict) -> str:
    lines = ["# The long tier under three clocks", "",
             "Steps to the target are trained for real on this CPU; each step is charged on a clock. Fixed "
             "batches: the ground truth's steps (geometric mean of two seeds at the batch's best rate; "
             "benchmarks/suite/long_ground_truth.json). The best fixed batch is chosen with hindsight under "
             "each clock; 'largest' is the largest batch swept, the largest that fits under these clocks.", "",
             "## Ground truth", "", *_ground_truth_table(results), "",
             f"Whole tier: {meta['cpu_minutes']:.0f} CPU minutes of one torch thread ({meta['wall_minutes']:.0f} "
             f"min wall, nice'd on a shared {meta['cores']}-core machine)."
             + (f" Not yet swept: {', '.join(meta['missing'])}." if meta["missing"] else ""), "",
             "Each clock is also a hardware profile, benchmarks/suite/long_profiles/<task>.<clock>.json (clock: cpu, "
             "gpu, dp8), to give `find` and adaptive training the clock being judged, e.g. `batchscope find --task "
             f"benchmarks/suite/tasks.py:{results[0]['task']} --profile "
             f"benchmarks/suite/long_profiles/{results[0]['task']}.gpu.json`."]
    for k, title in CLOCK_TITLES.items():
        c = results[0]["clocks"][k]
        g = s[k]
        lines += ["", f"## Under {title}", "", f"Clock: {c['description']}.", "", *_clock_table(results, k), "",
                  f"Best fixed batch: {', '.join(map(str, g['best_batches']))}; its run takes {LONG_RUN:,} steps or "
                  f"more on {g['long_runs']}/{g['tasks']} tasks (fewest {g['best_steps_min']:.0f})."]
        lines += _summary_lines(g)
    return "\n".join(lines) + "\n"


def read_runs(paths) -> dict:
    """The stored runs of several files as one: a later file's run replaces an earlier one's under its key."""
    runs: dict = {}
    for path in paths:
        runs.update(read_json(path))
    return runs


def main(argv=None, registry=LONG, store_path: Path = STORE, out_dir: Path = RESULTS,
         profiles: Optional[Path] = PROFILES, arms: Optional[dict] = None, runs_path: Path = ANCHOR_RUNS) -> int:
    """``arms`` None: the anchors' arms from their stored runs in ``runs_path`` (long_anchors.py)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=None, help="comma-separated (default: every task with a ground truth)")
    ap.add_argument("--runs", type=Path, action="append", default=None,
                    help=f"the anchors' runs (default: {runs_path.name}); given again, a later file's runs replace "
                         "an earlier one's under the same key (a rerun of some arms over a full set)")
    ap.add_argument("--name", default="suite_long", help="results file stem under benchmarks/results")
    args = ap.parse_args(argv)
    store = read_json(store_path)
    if arms is None:
        import long_anchors   # here, not at the top: long_anchors builds on this module

        missing = [str(p) for p in args.runs or [] if not p.exists()]
        if missing:
            print(f"error: no runs file {', '.join(missing)} (long_anchors.py --store PATH writes one)",
                  file=sys.stderr)
            return 2
        arms = long_anchors.stored_arms(read_runs(args.runs or [runs_path]), store)
    names = args.tasks.split(",") if args.tasks else [n for n in registry if "summary" in store.get(n, {})]
    results = [judge_task(n, store[n], registry, arms, profiles) for n in names if "summary" in store.get(n, {})]
    if not results:
        print("no task of the long tier has a ground truth yet: run long_tier.py", flush=True)
        return 1
    import os

    done = [store[r["task"]] for r in results]
    meta = {"cpu_minutes": sum(e.get("cpu_seconds") or 0 for e in done) / 60,
            "wall_minutes": sum(e.get("wall_seconds") or 0 for e in done) / 60, "cores": os.cpu_count(),
            "tasks": [r["task"] for r in results],
            "missing": [n for n in registry if n not in {r["task"] for r in results}]}
    s = summary(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / f"{args.name}.json", {"summary": s, "meta": meta, "tasks": results})
    (out_dir / f"{args.name}.md").write_text(markdown(results, s, meta))
    print(markdown(results, s, meta))
    return 0


if __name__ == "__main__":
    import long_judge   # the module long_anchors imports: one NotRun class (run as a script this is another)

    sys.exit(long_judge.main())
