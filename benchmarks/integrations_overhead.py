"""Cost of the noise-scale callbacks inside Lightning and the Hugging Face Trainer, as same-run ratios.

The model and data are the built-in mnist1d task's (MLP 40-256-256-10, 10,000 signals); each
optimizer step takes 4 micro-batches of 64. Per framework, three arms train for ``--steps``
optimizer steps from the same weights: ``base`` (no callback), ``base again`` (the same, an A/A
control that shows the timing noise) and ``noise`` (the framework's NoiseScaleCallback). One round
runs every arm once in rotating order, so load on the shared machine falls on all arms alike; the
time of an arm is from its first training batch to the end of training (the Trainer's set-up
excluded). Reported per framework: median seconds per optimizer step per arm and the median over
rounds of each arm's ratio to ``base`` in the same round. One torch thread, nice 5.

    PYTHONPATH=src python benchmarks/integrations_overhead.py [--rounds 9] [--steps 150]
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

from batchscope.report.jsonio import write_json
from batchscope.tasks import load_task

MICRO, ACCUMULATION = 64, 4
ARMS = ("base", "base again", "noise")


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


def lightning_fit(task, net, noise: bool, steps: int) -> float:
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
    callbacks = [clock] + ([NoiseScaleCallback()] if noise else [])
    loader = DataLoader(task.train_data, batch_size=MICRO, shuffle=True, drop_last=True)
    trainer = pl.Trainer(max_steps=steps, accumulate_grad_batches=ACCUMULATION, callbacks=callbacks,
                         accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(Module(), loader)
    return clock.seconds / steps


def hf_fit(task, net, noise: bool, steps: int) -> float:
    import transformers

    from batchscope.integrations.hf import NoiseScaleCallback

    x, y = task.train_data.tensors
    clock = HFClock()
    callbacks = [clock] + ([NoiseScaleCallback()] if noise else [])
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
        order = ARMS[r % 3:] + ARMS[:r % 3]
        for arm in order:
            net = task.make_model()
            net.load_state_dict(init)
            times[arm].append(fit(task, net, arm == "noise", steps))
        print(f"{framework} round {r + 1}/{rounds}: " +
              ", ".join(f"{a} {times[a][-1] * 1e3:.2f} ms" for a in ARMS), flush=True)
    ratio = {a: statistics.median(t / b for t, b in zip(times[a], times["base"])) for a in ARMS[1:]}
    return {"seconds_per_step": {a: statistics.median(v) for a, v in times.items()},
            "ratio_to_base": ratio, "rounds": rounds, "steps_per_run": steps,
            "raw_seconds_per_step": times}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--steps", type=int, default=150)
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
    for name, fit in (("lightning", lightning_fit), ("hf", hf_fit)):
        result[name] = measure(name, fit, task, a.rounds, a.steps)
    result["load_average_end"] = os.getloadavg()
    write_json(a.out, result)
    lines = [f"noise callback cost, mnist1d MLP, {MICRO} x {ACCUMULATION} micro-batches, 1 thread "
             f"(load {result['load_average_start'][0]:.1f} at start)"]
    for name in ("lightning", "hf"):
        r = result[name]
        lines.append(f"{name:9s} base {r['seconds_per_step']['base'] * 1e3:.2f} ms/step; "
                     f"A/A {r['ratio_to_base']['base again']:.3f}; noise callback {r['ratio_to_base']['noise']:.3f}")
    text = "\n".join(lines)
    Path(a.out).with_suffix(".txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
