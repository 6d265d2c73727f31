"""Cost of the noise-scale callbacks inside Lightning and the Hugging Face Trainer, as same-run ratios;
and the Lightning adaptive-batch callback against ``batchscope train --adaptive``, time to target.

The model and data are the built-in mnist1d task's (MLP 40-256-256-10, 10,000 signals); each
optimizer step takes 4 micro-batches of 64. Per framework, six arms train for ``--steps``
optimizer steps from the same weights: ``base`` (no callback), ``base again`` (the same, an A/A
control that shows the timing noise), ``empty callback`` (a callback that does nothing: what the
framework's dispatch of its hooks to one more callback costs), ``noise every step``
(``NoiseScaleCallback(every=1)``), ``noise every 4`` and ``noise default`` (``NoiseScaleCallback()``:
every 8th step measured, nothing of it running on the steps between). One round runs every arm once
in a freshly shuffled order, so load on the shared machine and the position in the round fall on
all arms alike; an arm's time runs from the start of its ``WARMUP + 1``-th optimizer step to the end
of training (set-up and first steps excluded), as thread CPU time (primary: the work itself, little
moved by other processes) and wall clock. Reported per framework: median seconds per optimizer step
per arm, and per arm the median over rounds of its ratio to ``base`` in the same round with a 90%
bootstrap interval (rounds resampled).

Where an idle step's time goes (``--part profile``): cProfile over ``--steps`` x 3 optimizer steps of
each framework with ``NoiseScaleCallback(every=10**6)`` (step 1 measured, every other step idle);
reported: the batchscope functions (and the gradient hooks) by cumulative time per step, with their
calls per step. Profiling inflates Python time, so read these as where the time goes, not as costs.

Time to target (``--part adaptive``): the built-in ``dots`` task (target val accuracy >= 0.955),
one hardware profile measured first and given to both, per seed: batchscope's own adaptive run
(``train(task, TrainConfig(batch_size=32, until_target=True, adaptive=AdaptiveConfig(profile)))``),
Lightning with ``AdaptiveBatchCallback`` (micro-batch 16 x 2 to start), and Lightning at the fixed
starting batch (same micro-batches, no callback). Lightning runs evaluate every 5 optimizer steps;
time is training time to the evaluation that reached the target, evaluations excluded, as in
batchscope's loop. Reported: medians over seeds and the ratios.

    PYTHONPATH=src python benchmarks/integrations_overhead.py [--part all|overhead|profile|adaptive]
        [--rounds 30] [--steps 100]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from batchscope.serialize import write_json
from batchscope.tasks import load_task

MICRO, ACCUMULATION = 64, 4
WARMUP = 5    # optimizer steps before the clock starts
ARMS = ("base", "base again", "empty callback", "noise every step", "noise every 4", "noise default")
MONITOR = {"empty callback": "empty", "noise every step": {"every": 1}, "noise every 4": {"every": 4},
           "noise default": {}}   # NoiseScaleCallback arguments per arm ("empty": a callback doing nothing)


class DictData(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


class LossModel(nn.Module):
    """The task's MLP with the loss inside, as a Trainer model: forward(x, labels) -> {'loss', 'logits'}."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, labels=None):
        logits = self.net(x)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


def lightning_module(task, net):
    """``net`` as a LightningModule with the task's loss and optimizer (mnist1d: cross-entropy, SGD momentum 0.9)."""
    import lightning.pytorch as pl

    from batchscope.train import make_optimizer

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = net

        def training_step(self, batch, batch_idx):
            x, y = batch
            return task.loss_fn(self.net(x), y)

        def configure_optimizers(self):
            return make_optimizer(task.optimizer, self.parameters(), task.lr, task.momentum, task.weight_decay)

    return Module()


def lightning_fit(task, net, noise, steps: int, extra=()) -> float:
    import lightning.pytorch as pl

    from batchscope.integrations.lightning import NoiseScaleCallback

    clock = Clock()
    callbacks = [clock, *extra] + ([] if noise is None else [pl.Callback()] if noise == "empty" else
                                   [NoiseScaleCallback(**noise)])
    loader = DataLoader(task.train_data, batch_size=MICRO, shuffle=True, drop_last=True)
    trainer = pl.Trainer(max_steps=steps, accumulate_grad_batches=ACCUMULATION, callbacks=callbacks,
                         accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(lightning_module(task, net), loader)
    return {k: v / (steps - WARMUP) for k, v in clock.seconds.items()}


def hf_fit(task, net, noise, steps: int, extra=()) -> float:
    import transformers

    from batchscope.integrations.hf import NoiseScaleCallback

    x, y = task.train_data.tensors
    clock = HFClock()
    callbacks = [clock, *extra] + ([] if noise is None else [transformers.TrainerCallback()] if noise == "empty"
                                   else [NoiseScaleCallback(**noise)])
    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(
            output_dir=out, per_device_train_batch_size=MICRO, gradient_accumulation_steps=ACCUMULATION,
            max_steps=steps, learning_rate=task.lr, optim="sgd", lr_scheduler_type="constant", report_to=[],
            save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=10**9, dataloader_drop_last=True,
            max_grad_norm=0.0)
        trainer = transformers.Trainer(model=LossModel(net), args=args, train_dataset=DictData(x, y),
                                       callbacks=callbacks)
        trainer.train()
    return {k: v / (steps - WARMUP) for k, v in clock.seconds.items()}


def _now() -> tuple[float, float]:
    # Wall clock, and the CPU time of this thread: with one torch thread, no loader workers and CPU
    # autograd running on the calling thread, all of a step's work is on it, and other processes on
    # a shared machine change it far less than they change the wall clock.
    return time.perf_counter(), time.thread_time()


def _since(t0: tuple[float, float]) -> dict:
    wall, cpu = _now()
    return {"wall": wall - t0[0], "cpu": cpu - t0[1]}


def _clock_classes():
    import lightning.pytorch as pl
    import transformers

    class Clock(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if not hasattr(self, "t0") and trainer.global_step == WARMUP:
                self.t0 = _now()

        def on_train_end(self, trainer, pl_module):
            self.seconds = _since(self.t0)

    class HFClock(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if not hasattr(self, "t0") and state.global_step == WARMUP:
                self.t0 = _now()

        def on_train_end(self, args, state, control, **kw):
            self.seconds = _since(self.t0)

    return Clock, HFClock


def bootstrap_median(values: list[float], level: float = 0.9, draws: int = 4000, seed: int = 0) -> tuple:
    """Percentile bootstrap interval of the median (rounds resampled with replacement)."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    lo = meds[int((1 - level) / 2 * draws)]
    hi = meds[int((1 + level) / 2 * draws) - 1]
    return lo, hi


def measure(framework: str, fit, task, rounds: int, steps: int) -> dict:
    torch.manual_seed(0)
    init = task.make_model().state_dict()
    runs = {a: [] for a in ARMS}
    rng = random.Random(1)
    for r in range(rounds):
        order = rng.sample(ARMS, len(ARMS))
        for arm in order:
            net = task.make_model()
            net.load_state_dict(init)
            runs[arm].append(fit(task, net, MONITOR.get(arm), steps))
        print(f"{framework} round {r + 1}/{rounds}: " +
              ", ".join(f"{a} {runs[a][-1]['cpu'] * 1e3:.2f} ms" for a in ARMS), flush=True)
    out = {"rounds": rounds, "steps_per_run": steps, "timed_steps_per_run": steps - WARMUP}
    for clock, suffix in (("cpu", ""), ("wall", "_wall")):
        times = {a: [run[clock] for run in v] for a, v in runs.items()}
        ratios = {a: [t / b for t, b in zip(times[a], times["base"])] for a in ARMS[1:]}
        out.update({f"seconds_per_step{suffix}": {a: statistics.median(v) for a, v in times.items()},
                    f"ratio_to_base{suffix}": {a: statistics.median(v) for a, v in ratios.items()},
                    f"ratio_interval_90{suffix}": {a: bootstrap_median(v) for a, v in ratios.items()},
                    f"raw_seconds_per_step{suffix}": times})
    return out


def idle_profile(framework: str, fit, task, steps: int) -> list[dict]:
    import cProfile
    import pstats

    fit(task, task.make_model(), {"every": 10**6}, 2 * WARMUP)    # imports and first-call costs out
    prof = cProfile.Profile()
    prof.enable()
    fit(task, task.make_model(), {"every": 10**6}, steps)
    prof.disable()
    rows = []
    for (path, line, fn), (_, calls, own, cum, _) in pstats.Stats(prof).stats.items():
        if "batchscope" in path:
            rows.append({"function": f"{path.split('batchscope/')[-1]}:{line}({fn})", "calls_per_step": calls / steps,
                         "cumulative_ms_per_step": cum * 1e3 / steps, "own_ms_per_step": own * 1e3 / steps})
    rows.sort(key=lambda r: -r["cumulative_ms_per_step"])
    return rows[:8]


def lightning_to_target(task, profile, seed: int, adaptive: bool) -> dict:
    import lightning.pytorch as pl

    from batchscope.integrations.lightning import AdaptiveBatchCallback
    from batchscope.train import evaluate

    torch.manual_seed(seed)
    net = task.make_model()

    class ToTarget(pl.Callback):
        """Evaluates every 5 optimizer steps; stops at the target; keeps training time (evaluations out)."""

        def __init__(self):
            self.seconds, self.steps, self.examples, self.reached = 0.0, 0, 0, False
            self._t0 = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if self._t0 is None:
                self._t0 = time.perf_counter()
            self.examples += len(batch[0])

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == self.steps or trainer.global_step % 5:
                return
            self.steps = trainer.global_step
            self.seconds += time.perf_counter() - self._t0
            loss, metric = evaluate(net, task, "val")
            net.train()
            if task.target.reached(loss, metric):
                self.reached = True
                trainer.should_stop = True
            self._t0 = time.perf_counter()

    stop = ToTarget()
    callbacks = [stop] + ([AdaptiveBatchCallback(profile, every=10)] if adaptive else [])
    loader = DataLoader(task.train_data, batch_size=16, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    trainer = pl.Trainer(max_epochs=30, accumulate_grad_batches=2, callbacks=callbacks, accelerator="cpu",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(lightning_module(task, net), loader)
    return {"seconds": stop.seconds, "steps": stop.steps, "examples": stop.examples, "reached": stop.reached}


def adaptive_to_target(seeds: int) -> dict:
    from batchscope import TrainConfig, train
    from batchscope.adapt import AdaptiveConfig
    from batchscope.hardware import profile_hardware

    task = load_task("dots")
    profile = profile_hardware(task, memory_budget="512MiB")
    rows = []
    for seed in range(seeds):
        r = train(task, TrainConfig(batch_size=32, until_target=True, epochs=30, seed=seed,
                                    adaptive=AdaptiveConfig(profile=profile)))
        row = {"seed": seed, "batchscope_adaptive": {"seconds": r.target_seconds, "steps": r.target_step,
                                                     "examples": r.target_examples, "reached": r.reached_target},
               "lightning_adaptive": lightning_to_target(task, profile, seed, adaptive=True),
               "lightning_fixed": lightning_to_target(task, profile, seed, adaptive=False)}
        rows.append(row)
        print(f"seed {seed}: " + ", ".join(f"{k} {v['seconds']:.2f} s ({v['steps']} steps)"
                                           for k, v in row.items() if k != "seed"), flush=True)
    arms = ("batchscope_adaptive", "lightning_adaptive", "lightning_fixed")
    med = {a: statistics.median(r[a]["seconds"] for r in rows if r[a]["reached"]) for a in arms}
    return {"task": "dots", "target": task.target.describe(task.metric_name), "profile": profile.to_dict(),
            "median_seconds": med, "runs": rows,
            "ratio_lightning_adaptive_to_batchscope_adaptive": med["lightning_adaptive"] / med["batchscope_adaptive"],
            "ratio_lightning_adaptive_to_lightning_fixed": med["lightning_adaptive"] / med["lightning_fixed"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--part", choices=("all", "overhead", "profile", "adaptive"), default="all")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "integrations_overhead.json"))
    a = ap.parse_args()
    os.nice(5)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    global Clock, HFClock
    Clock, HFClock = _clock_classes()
    task = load_task("mnist1d")
    result = {"task": "mnist1d", "micro_batch": MICRO, "accumulation": ACCUMULATION, "threads": 1,
              "load_average_start": os.getloadavg()}
    if a.part in ("all", "overhead"):
        for name, fit in (("lightning", lightning_fit), ("hf", hf_fit)):
            result[name] = measure(name, fit, task, a.rounds, a.steps)
    if a.part in ("all", "profile"):
        result["idle_profile"] = {name: idle_profile(name, fit, task, 3 * a.steps)
                                  for name, fit in (("lightning", lightning_fit), ("hf", hf_fit))}
    if a.part in ("all", "adaptive"):
        result["adaptive_to_target"] = adaptive_to_target(a.seeds)
    result["load_average_end"] = os.getloadavg()
    if a.part != "all" and Path(a.out).exists():   # one part re-run: keep the other part's results
        import json

        kept = {k: v for k, v in json.loads(Path(a.out).read_text()).items() if k != "interleaved"}  # retired part
        result = {**kept, **result}
    write_json(a.out, result)
    text = summary(result)
    Path(a.out).with_suffix(".txt").write_text(text + "\n")
    print(text)


def summary(result: dict) -> str:
    lines = []
    if "lightning" in result:
        r0 = result["lightning"]
        lines.append(f"noise callback cost, mnist1d MLP, {MICRO} x {ACCUMULATION} micro-batches, 1 thread, "
                     f"{r0['rounds']} rounds in shuffled order, {r0.get('timed_steps_per_run', r0['steps_per_run'])} "
                     f"timed steps per run (load {result['load_average_start'][0]:.1f} at start); median ratio "
                     "to no callback in the same round [90% bootstrap interval]:")
        for clock, suffix in (("thread CPU time", ""), ("wall clock", "_wall")):
            for name in ("lightning", "hf"):
                r = result[name]
                if f"ratio_to_base{suffix}" not in r:
                    continue
                ci = r[f"ratio_interval_90{suffix}"]
                base_ms = r[f"seconds_per_step{suffix}"]["base"] * 1e3
                lines.append(f"  {clock:15s} {name:9s} base {base_ms:.2f} ms/step; "
                             + "; ".join(f"{arm} {r[f'ratio_to_base{suffix}'][arm]:.3f} "
                                         f"[{ci[arm][0]:.3f}, {ci[arm][1]:.3f}]" for arm in ARMS[1:]))
    if "idle_profile" in result:
        lines.append("idle steps under cProfile (NoiseScaleCallback(every=10**6)), batchscope functions, ms per step "
                     "cumulative (calls per step):")
        for name, rows in result["idle_profile"].items():
            lines.append(f"  {name:9s} " + ("; ".join(f"{r['function']} {r['cumulative_ms_per_step']:.3f} "
                                                     f"({r['calls_per_step']:.0f})" for r in rows[:4]) or "none"))
    if "adaptive_to_target" in result:
        ad = result["adaptive_to_target"]
        m, n = ad["median_seconds"], len(ad["runs"])
        lines.append(f"time to target, dots ({ad['target']}), median of {n} seeds: batchscope --adaptive "
                     f"{m['batchscope_adaptive']:.2f} s, Lightning + AdaptiveBatchCallback "
                     f"{m['lightning_adaptive']:.2f} s "
                     f"(ratio {ad['ratio_lightning_adaptive_to_batchscope_adaptive']:.2f}), Lightning fixed batch 32 "
                     f"{m['lightning_fixed']:.2f} s "
                     f"(adaptive/fixed {ad['ratio_lightning_adaptive_to_lightning_fixed']:.2f})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
