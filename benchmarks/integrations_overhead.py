"""Cost of the noise-scale callbacks inside Lightning and the Hugging Face Trainer, as same-run ratios;
and the Lightning adaptive-batch callback against ``batchscope train --adaptive``, time to target.

The model and data are the built-in mnist1d task's (MLP 40-256-256-10, 10,000 signals); each
optimizer step takes 4 micro-batches of 64. Per framework, three arms train for ``--steps``
optimizer steps from the same weights: ``base`` (no callback), ``base again`` (the same, an A/A
control that shows the timing noise), ``noise`` (the framework's NoiseScaleCallback, measuring every
step) and ``noise every 4`` (``NoiseScaleCallback(every=4)``: hooks idle on three steps of four). One round
runs every arm once in rotating order, so load on the shared machine falls on all arms alike; the
time of an arm is from its first training batch to the end of training (the Trainer's set-up
excluded). Reported per framework: median seconds per optimizer step per arm and the median over
rounds of each arm's ratio to ``base`` in the same round. Finer (``--part interleaved``): within one
run with ``NoiseScaleCallback(every=2)`` measured and idle steps alternate, so their median ratio is
the cost of measuring a step, free of drifts in the machine's load; a run without the callback,
split the same way, is its A/A control. One torch thread, nice 5.

Time to target (``--part adaptive``): the built-in ``dots`` task (target val accuracy >= 0.955),
one hardware profile measured first and given to both, per seed: batchscope's own adaptive run
(``train(task, TrainConfig(batch_size=32, until_target=True, adaptive=AdaptiveConfig(profile)))``),
Lightning with ``AdaptiveBatchCallback`` (micro-batch 16 x 2 to start), and Lightning at the fixed
starting batch (same micro-batches, no callback). Lightning runs evaluate every 5 optimizer steps;
time is training time to the evaluation that reached the target, evaluations excluded, as in
batchscope's loop. Reported: medians over seeds and the ratios.

    PYTHONPATH=src python benchmarks/integrations_overhead.py [--part all|overhead|adaptive] [--rounds 9]
"""

from __future__ import annotations

import argparse
import os
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
ARMS = ("base", "base again", "noise", "noise every 4")
MONITOR = {"noise": {}, "noise every 4": {"every": 4}}   # NoiseScaleCallback keyword arguments per arm


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


def lightning_fit(task, net, noise, steps: int, extra=()) -> float:
    import lightning.pytorch as pl

    from batchscope.integrations.lightning import NoiseScaleCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = net

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=task.lr, momentum=0.9)

    clock = Clock()
    callbacks = [clock, *extra] + ([NoiseScaleCallback(**noise)] if noise is not None else [])
    loader = DataLoader(task.train_data, batch_size=MICRO, shuffle=True, drop_last=True)
    trainer = pl.Trainer(max_steps=steps, accumulate_grad_batches=ACCUMULATION, callbacks=callbacks,
                         accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(Module(), loader)
    return clock.seconds / steps


def hf_fit(task, net, noise, steps: int, extra=()) -> float:
    import transformers

    from batchscope.integrations.hf import NoiseScaleCallback

    x, y = task.train_data.tensors
    clock = HFClock()
    callbacks = [clock, *extra] + ([NoiseScaleCallback(**noise)] if noise is not None else [])
    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(
            output_dir=out, per_device_train_batch_size=MICRO, gradient_accumulation_steps=ACCUMULATION,
            max_steps=steps, learning_rate=task.lr, optim="sgd", lr_scheduler_type="constant", report_to=[],
            save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=10**9, dataloader_drop_last=True,
            max_grad_norm=0.0)
        trainer = transformers.Trainer(model=LossModel(net), args=args, train_dataset=DictData(x, y),
                                       callbacks=callbacks)
        trainer.train()
    return clock.seconds / steps


class StepTimes:
    """Seconds between consecutive optimizer steps (the whole window: micro-batches, callbacks, step)."""

    def __init__(self):
        self.seconds, self._last = [], None

    def attach(self, optimizer):
        optimizer.register_step_post_hook(self._post)

    def _post(self, opt, args, kwargs):
        now = time.perf_counter()
        if self._last is not None:
            self.seconds.append(now - self._last)
        self._last = now


def interleaved(framework: str, task, fits: int, steps: int) -> dict:
    """Within one run, measured and idle steps alternate (``NoiseScaleCallback(every=2)``); the A/A run
    has no callback and splits its steps the same way. Ratio: median measured / median idle step."""
    import lightning.pytorch as pl
    import transformers

    class LAttach(pl.Callback):
        def __init__(self, timer):
            self.timer = timer

        def on_train_start(self, trainer, pl_module):
            self.timer.attach(trainer.optimizers[0])

    class HAttach(transformers.TrainerCallback):
        def __init__(self, timer):
            self.timer = timer

        def on_train_begin(self, args, state, control, optimizer=None, **kw):
            self.timer.attach(optimizer.optimizer)

    fit = lightning_fit if framework == "lightning" else hf_fit
    attach = LAttach if framework == "lightning" else HAttach
    out = {"noise every 2": [], "no callback (A/A)": []}
    torch.manual_seed(0)
    init = task.make_model().state_dict()
    for i in range(fits):
        for arm in out:
            net = task.make_model()
            net.load_state_dict(init)
            timer = StepTimes()
            fit(task, net, {"every": 2} if arm == "noise every 2" else None, steps, extra=[attach(timer)])
            t = timer.seconds      # t[j] is step j+2 (1-based); the monitor measures steps 1, 3, 5, ...
            measured, idle = t[1::2], t[0::2]
            out[arm].append(statistics.median(measured) / statistics.median(idle))
        print(f"{framework} interleaved fit {i + 1}/{fits}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in out.items()),
              flush=True)
    return {arm: {"median_ratio": statistics.median(v), "ratios": v} for arm, v in out.items()}


def _clock_classes():
    import lightning.pytorch as pl
    import transformers

    class Clock(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if not hasattr(self, "t0"):
                self.t0 = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            self.seconds = time.perf_counter() - self.t0

    class HFClock(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if not hasattr(self, "t0"):
                self.t0 = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            self.seconds = time.perf_counter() - self.t0

    return Clock, HFClock


def measure(framework: str, fit, task, rounds: int, steps: int) -> dict:
    torch.manual_seed(0)
    init = task.make_model().state_dict()
    times = {a: [] for a in ARMS}
    for r in range(rounds):
        order = ARMS[r % len(ARMS):] + ARMS[:r % len(ARMS)]
        for arm in order:
            net = task.make_model()
            net.load_state_dict(init)
            times[arm].append(fit(task, net, MONITOR.get(arm), steps))
        print(f"{framework} round {r + 1}/{rounds}: " +
              ", ".join(f"{a} {times[a][-1] * 1e3:.2f} ms" for a in ARMS), flush=True)
    ratio = {a: statistics.median(t / b for t, b in zip(times[a], times["base"])) for a in ARMS[1:]}
    return {"seconds_per_step": {a: statistics.median(v) for a, v in times.items()},
            "ratio_to_base": ratio, "rounds": rounds, "steps_per_run": steps,
            "raw_seconds_per_step": times}


def lightning_to_target(task, profile, seed: int, adaptive: bool) -> dict:
    import lightning.pytorch as pl

    from batchscope.integrations.lightning import AdaptiveBatchCallback
    from batchscope.train import evaluate, make_optimizer

    torch.manual_seed(seed)
    net = task.make_model()

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = net

        def training_step(self, batch, batch_idx):
            x, y = batch
            return task.loss_fn(self.net(x), y)

        def configure_optimizers(self):
            return make_optimizer(task.optimizer, self.parameters(), task.lr, task.momentum, task.weight_decay)

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
    trainer.fit(Module(), loader)
    return {"seconds": stop.seconds, "steps": stop.steps, "examples": stop.examples, "reached": stop.reached}


def adaptive_to_target(seeds: int) -> dict:
    from batchscope import TrainConfig, train
    from batchscope.adapt.loop import AdaptiveConfig
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
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--part", choices=("all", "overhead", "interleaved", "adaptive"), default="all")
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
    if a.part in ("all", "interleaved"):
        result["interleaved"] = {name: interleaved(name, task, 3, 2 * a.steps) for name in ("lightning", "hf")}
    if a.part in ("all", "adaptive"):
        result["adaptive_to_target"] = adaptive_to_target(a.seeds)
    result["load_average_end"] = os.getloadavg()
    if a.part != "all" and Path(a.out).exists():   # one part re-run: keep the other part's results
        import json

        result = {**json.loads(Path(a.out).read_text()), **result}
    write_json(a.out, result)
    text = summary(result)
    Path(a.out).with_suffix(".txt").write_text(text + "\n")
    print(text)


def summary(result: dict) -> str:
    lines = []
    if "lightning" in result:
        lines.append(f"noise callback cost, mnist1d MLP, {MICRO} x {ACCUMULATION} micro-batches, 1 thread, "
                     f"{result['lightning']['rounds']} rounds of {result['lightning']['steps_per_run']} steps "
                     f"(load {result['load_average_start'][0]:.1f} at start); ratio to no callback:")
        for name in ("lightning", "hf"):
            r = result[name]
            lines.append(f"  {name:9s} base {r['seconds_per_step']['base'] * 1e3:.2f} ms/step; "
                         + "; ".join(f"{arm} {r['ratio_to_base'][arm]:.3f}" for arm in ARMS[1:]
                                     if arm in r["ratio_to_base"]))
    if "interleaved" in result:
        lines.append("measured step / idle step within one run (NoiseScaleCallback(every=2)), median of 3 runs:")
        for name, r in result["interleaved"].items():
            lines.append(f"  {name:9s} " + "; ".join(f"{arm} {v['median_ratio']:.3f}" for arm, v in r.items()))
    if "adaptive_to_target" in result:
        ad = result["adaptive_to_target"]
        m, n = ad["median_seconds"], len(ad["runs"])
        lines.append(f"time to target, dots ({ad['target']}), median of {n} seeds: batchscope --adaptive "
                     f"{m['batchscope_adaptive']:.2f} s, Lightning + AdaptiveBatchCallback {m['lightning_adaptive']:.2f} s "
                     f"(ratio {ad['ratio_lightning_adaptive_to_batchscope_adaptive']:.2f}), Lightning fixed batch 32 "
                     f"{m['lightning_fixed']:.2f} s (adaptive/fixed {ad['ratio_lightning_adaptive_to_lightning_fixed']:.2f})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
