"""`find`'s recommendation against batch 32 at the same base rate, trained in the framework itself.

Two workloads, built offline from configs and data already on the machine:

- ``gpt2``: ``transformers.GPT2LMHeadModel`` from a ``GPT2Config`` (2 layers, 2 heads, n_embd 64,
  context 64, dropout 0) under the Hugging Face ``Trainer`` (AdamW, lr 2e-3, constant rate, the
  Trainer's default clipping at 1.0), on the built-in ``text`` task's characters (the Python
  standard library's own source files: windows of 64 characters, vocab 96; 512 validation windows).
- ``cnn``: a 1-D CNN (conv 1-32-64, global average pool, linear to 10) as a ``LightningModule``
  (SGD momentum 0.9, lr 0.01) on MNIST-1D as the ``mnist1d`` generator makes it (the built-in
  task's 10,000 train / 2,500 validation signals).

Per workload:

1. Pilot: batch 32 at the base rate for ``pilot_seconds`` of wall clock, evaluating every
   ``eval_examples`` training examples (1,024 for the GPT-2, 2,048 for the CNN). The target
   (validation loss) is the median of the pilot's last five evaluations (robust to one noisy
   evaluation), so batch 32 reaches it in about the pilot's time.
2. ``find`` of the framework (``batchscope.integrations.hf.find`` on the Trainer at batch 32,
   ``batchscope.integrations.lightning.find`` on the module with the DataModule at batch 32): the
   reference batch is 32 and the reference rate the base rate, so its rate rule starts from the same
   point. Its recommendation (batch, micro-batch x accumulation, lr, warm-up), its predictions and
   its own wall time and examples are recorded.
3. Rounds: each round trains the arms ``batch 32``, ``batch 32 again`` (an A/A control: the same
   run again, so its ratio shows the timing noise of the shared machine) and ``recommendation``
   (find's batch, rate and warm-up, the warm-up as the framework's own linear warm-up), in a freshly
   shuffled order, from the round's seed (model weights and data order; the same for every arm of
   a round), each in the framework until the first evaluation that reaches the target
   (``StopAtTarget``) or ``cap`` x the pilot's wall time. Evaluations come every ``eval_examples``
   training examples at every batch (every ``eval_examples / B`` optimizer steps), so the crossing
   is known to within that many examples at any batch.

Time to target: the framework's training wall time from the start of training to the evaluation
that reached the target, the evaluations' own time taken out (HF: the Trainer's ``eval_runtime``;
Lightning: ``on_validation_start`` to ``on_validation_end``), as ``StopAtTarget`` records it.
Reported per workload: median seconds per arm; per round the ratios recommendation / batch 32 and
batch 32 again / batch 32, their median and min-max over rounds; the ratio with find's own wall time
added to the recommendation's; and find's predicted step time and steps against the measured.

One torch thread (``OMP_NUM_THREADS=1``); not niced, as it measures time; the load average is
recorded with every run. Resumable: every unit (pilot, find, arm-run) is written to the store
``benchmarks/results/frameworks_find_vs_batch32_runs.json`` as it ends, and a rerun skips what is
stored (delete the store, or one workload's entries, to measure again).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/frameworks_find_vs_batch32.py [--rounds 3]
        [--workloads gpt2,cnn] [--pilot-seconds 45]

Results: benchmarks/results/frameworks_find_vs_batch32.md and .json.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from batchscope.serialize import read_json, write_json

RESULTS = Path(__file__).parent / "results"
STORE = RESULTS / "frameworks_find_vs_batch32_runs.json"
ARMS = ("batch 32", "batch 32 again", "recommendation")
BASE_BATCH = 32


@dataclass(frozen=True)
class Sizes:
    """What the workloads and the protocol are made of (the test shrinks these)."""

    gpt_embd: int = 64
    gpt_layers: int = 2
    gpt_heads: int = 2
    context: int = 64
    gpt_lr: float = 2e-3
    gpt_train: Optional[int] = None   # training windows (None: all of the text task's)
    gpt_val: int = 512
    cnn_channels: int = 32
    cnn_lr: float = 0.01
    cnn_train: Optional[int] = None   # training signals (None: all 10,000)
    cnn_val: Optional[int] = None
    pilot_seconds: float = 50.0       # batch 32's wall time in the pilot (evaluations included)
    eval_examples: int = 1024         # training examples between evaluations, at every batch (gpt2)
    cnn_eval_examples: int = 2048     # the same for the CNN (its steps are short, its evaluations not)
    cap: float = 3.0                  # an arm-run stops at cap x the pilot's wall time
    rounds: int = 3
    find: dict = field(default_factory=lambda: {"memory_budget": "1GiB", "max_batch": 1024})


# --- the GPT-2 under the Hugging Face Trainer ----------------------------------------------------

class Windows(Dataset):
    """Character windows as the Trainer's examples: the model shifts ``labels`` itself."""

    def __init__(self, ids: torch.Tensor):
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _silence() -> None:
    import lightning.pytorch  # noqa: F401  (it sets its loggers' levels on import: set them after)
    import transformers  # noqa: F401

    warnings.filterwarnings("ignore")
    for name in ("transformers", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "batchscope",
                 "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)


class GPT2Workload:
    name = "gpt2"
    framework = "Hugging Face Trainer"

    def __init__(self, s: Sizes):
        from batchscope.tasks import load_task
        from batchscope.tasks.text import VOCAB

        task = load_task("text")
        x = task.train_data.tensors[0]
        xv = task.val_data.tensors[0]
        if s.context < x.shape[1]:
            x, xv = x[:, :s.context], xv[:, :s.context]
        g = torch.Generator().manual_seed(0)
        xv = xv[torch.randperm(len(xv), generator=g)[:s.gpt_val]]
        self.train = Windows(x if s.gpt_train is None else x[:s.gpt_train])
        self.val = Windows(xv)
        self.s, self.vocab, self.lr = s, VOCAB, s.gpt_lr
        self.description = (f"GPT2LMHeadModel from GPT2Config ({s.gpt_layers} layers, {s.gpt_heads} heads, n_embd "
                            f"{s.gpt_embd}, context {s.context}, vocab {VOCAB}, dropout 0) under the Hugging Face "
                            f"Trainer, AdamW lr {s.gpt_lr:g} constant, max_grad_norm 1.0; the text task's characters "
                            f"({len(self.train):,} train / {len(self.val):,} val windows)")

    def model(self, seed: int):
        import transformers

        torch.manual_seed(seed)
        cfg = transformers.GPT2Config(vocab_size=self.vocab, n_positions=self.s.context, n_embd=self.s.gpt_embd,
                                      n_layer=self.s.gpt_layers, n_head=self.s.gpt_heads, resid_pdrop=0.0,
                                      embd_pdrop=0.0, attn_pdrop=0.0)
        return transformers.GPT2LMHeadModel(cfg)

    def _trainer(self, out: str, seed: int, micro: int, accumulation: int, lr: float, warmup: int,
                 eval_steps: int, callbacks=()):
        import transformers

        args = transformers.TrainingArguments(
            output_dir=out, per_device_train_batch_size=micro, gradient_accumulation_steps=accumulation,
            per_device_eval_batch_size=256, learning_rate=lr, optim="adamw_torch", weight_decay=0.0,
            lr_scheduler_type="constant_with_warmup" if warmup else "constant", warmup_steps=warmup,
            max_steps=10**6, eval_strategy="steps", eval_steps=eval_steps, logging_strategy="no",
            save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=seed, data_seed=seed,
            prediction_loss_only=True)
        return transformers.Trainer(model=self.model(seed), args=args, train_dataset=self.train,
                                    eval_dataset=self.val, callbacks=list(callbacks))

    def fit(self, seed: int, micro: int, accumulation: int, lr: float, warmup: int, target: float,
            wall_limit: float) -> dict:
        from batchscope.integrations.hf import StopAtTarget

        batch = micro * accumulation
        stop, cpu = StopAtTarget(target), _hf_cpu_clock()
        with tempfile.TemporaryDirectory() as out:
            every = eval_every(self.s.eval_examples, batch)
            trainer = self._trainer(out, seed, micro, accumulation, lr, warmup, every,
                                    [stop, cpu, _hf_wall_limit(wall_limit)])
            trainer.train()
        return outcome(stop, batch, cpu.marks)

    def find(self, target: float, seed: int = 0) -> dict:
        from batchscope.integrations.hf import find

        with tempfile.TemporaryDirectory() as out:
            every = eval_every(self.s.eval_examples, BASE_BATCH)
            trainer = self._trainer(out, seed, BASE_BATCH, 1, self.lr, 0, every)
            t0 = time.perf_counter()
            r = find(trainer, target=target, progress=False, **self.s.find)
            return find_summary(r, time.perf_counter() - t0)


def _hf_cpu_clock():
    import transformers

    class CPUClock(transformers.TrainerCallback):
        """This thread's CPU time since training began at each evaluation, the evaluations' own taken out
        (an evaluation runs between the step's ``on_step_end`` and ``on_evaluate``)."""

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = self.last = time.thread_time()
            self.eval_cpu, self.marks = 0.0, []

        def on_step_end(self, args, state, control, **kw):
            self.last = time.thread_time()

        def on_evaluate(self, args, state, control, **kw):
            now = time.thread_time()
            self.eval_cpu += now - self.last
            self.marks.append(now - self.t0 - self.eval_cpu)
            self.last = now

    return CPUClock()


def _hf_wall_limit(seconds: float):
    import transformers

    class WallLimit(transformers.TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if time.perf_counter() - self.t0 > seconds:
                control.should_training_stop = True

    return WallLimit()


# --- the CNN under Lightning ---------------------------------------------------------------------

def cnn(channels: int) -> nn.Module:
    c = channels
    return nn.Sequential(nn.Unflatten(1, (1, -1)),                                  # (B, 40) -> (B, 1, 40)
                         nn.Conv1d(1, c, 5, padding=2), nn.ReLU(),                   # (B, c, 40)
                         nn.Conv1d(c, 2 * c, 5, stride=2, padding=2), nn.ReLU(),     # (B, 2c, 20)
                         nn.Conv1d(2 * c, 2 * c, 3, padding=1), nn.ReLU(),           # (B, 2c, 20)
                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(2 * c, 10))


def _lightning_classes():
    import lightning.pytorch as pl

    from batchscope.plan.find_file import warmup_scheduler

    class CNN(pl.LightningModule):
        def __init__(self, channels: int, lr: float, warmup: int = 0):
            super().__init__()
            self.lr, self.warmup = lr, warmup
            self.net = cnn(channels)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", nn.functional.cross_entropy(self.net(x), y), batch_size=len(y))

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
            if not self.warmup:
                return opt
            # batchscope's warm-up (step s at lr x (s+1)/warmup), stepped after every optimizer step
            return {"optimizer": opt, "lr_scheduler": {"scheduler": warmup_scheduler(opt, self.lr, self.warmup),
                                                       "interval": "step"}}

    class Signals(pl.LightningDataModule):
        def __init__(self, train, val, batch_size: int, seed: int):
            super().__init__()
            self.train, self.val, self.batch_size, self.seed = train, val, batch_size, seed

        def train_dataloader(self):
            return DataLoader(self.train, batch_size=self.batch_size, shuffle=True, drop_last=True,
                              generator=torch.Generator().manual_seed(self.seed))

        def val_dataloader(self):
            return DataLoader(self.val, batch_size=len(self.val))

    return CNN, Signals


class CNNWorkload:
    name = "cnn"
    framework = "Lightning"

    def __init__(self, s: Sizes):
        from batchscope.tasks import load_task

        task = load_task("mnist1d")
        x, y = task.train_data.tensors
        xv, yv = task.val_data.tensors
        self.train = TensorDataset(x, y) if s.cnn_train is None else Subset(TensorDataset(x, y), range(s.cnn_train))
        self.val = TensorDataset(xv, yv) if s.cnn_val is None else Subset(TensorDataset(xv, yv), range(s.cnn_val))
        self.s, self.lr = s, s.cnn_lr
        self.CNN, self.Signals = _lightning_classes()
        self.description = (f"1-D CNN (conv 1-{s.cnn_channels}-{2 * s.cnn_channels}-{2 * s.cnn_channels}, global "
                            f"average pool, linear to 10) as a LightningModule, SGD momentum 0.9 lr {s.cnn_lr:g}; "
                            f"MNIST-1D from the mnist1d generator ({len(self.train):,} train / {len(self.val):,} val)")

    def module(self, seed: int, lr: float, warmup: int = 0):
        torch.manual_seed(seed)
        return self.CNN(self.s.cnn_channels, lr, warmup)

    def fit(self, seed: int, micro: int, accumulation: int, lr: float, warmup: int, target: float,
            wall_limit: float) -> dict:
        import lightning.pytorch as pl

        from batchscope.integrations.lightning import StopAtTarget

        batch = micro * accumulation
        stop, cpu = StopAtTarget(target), _lightning_cpu_clock()
        with tempfile.TemporaryDirectory() as out:
            trainer = pl.Trainer(max_epochs=10**4, accumulate_grad_batches=accumulation,
                                 val_check_interval=eval_every(self.s.cnn_eval_examples, batch) * accumulation,
                                 check_val_every_n_epoch=None, num_sanity_val_steps=0, callbacks=[
                                     stop, cpu, _lightning_wall_limit(wall_limit)], accelerator="cpu", devices=1,
                                 logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                 enable_model_summary=False, default_root_dir=out)
            trainer.fit(self.module(seed, lr, warmup), datamodule=self.Signals(self.train, self.val, micro, seed))
        return outcome(stop, batch, cpu.marks)

    def find(self, target: float, seed: int = 0) -> dict:
        from batchscope.integrations.lightning import find

        t0 = time.perf_counter()
        r = find(self.module(seed, self.lr), self.Signals(self.train, self.val, BASE_BATCH, seed), target=target,
                 progress=False, **self.s.find)
        return find_summary(r, time.perf_counter() - t0)


def _lightning_cpu_clock():
    import lightning.pytorch as pl

    class CPUClock(pl.Callback):
        """This thread's CPU time since the fit began at each validation, the validations' own taken out."""

        def on_fit_start(self, trainer, pl_module):
            self.t0, self.eval_cpu, self.marks = time.thread_time(), 0.0, []

        def on_validation_start(self, trainer, pl_module):
            self.v0 = time.thread_time()

        def on_validation_end(self, trainer, pl_module):
            now = time.thread_time()
            self.eval_cpu += now - self.v0
            self.marks.append(now - self.t0 - self.eval_cpu)

    return CPUClock()


def _lightning_wall_limit(seconds: float):
    import lightning.pytorch as pl

    class WallLimit(pl.Callback):
        def on_fit_start(self, trainer, pl_module):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if time.perf_counter() - self.t0 > seconds:
                trainer.should_stop = True

    return WallLimit()


WORKLOADS = {"gpt2": GPT2Workload, "cnn": CNNWorkload}


# --- shared --------------------------------------------------------------------------------------

def eval_every(examples: int, batch: int) -> int:
    """Optimizer steps between evaluations: ``examples`` training examples at every batch."""
    return max(1, round(examples / batch))


def outcome(stop, batch: int, cpu_marks=()) -> dict:
    """What one run's StopAtTarget saw: time to target with the evaluations taken out, and the curve;
    ``cpu_marks``: this thread's CPU seconds (evaluations out) at each evaluation, the same evaluations."""
    evals = stop.evaluations
    last = evals[-1] if evals else None
    r = stop.reached
    at = r or last
    cpu = list(cpu_marks) if len(cpu_marks) == len(evals) else [None] * len(evals)
    cpu_at = None if r is None else cpu[evals.index(r)]
    return {"reached": r is not None, "batch": batch,
            "seconds": None if r is None else r.seconds - r.eval_seconds,
            "seconds_with_evals": None if r is None else r.seconds,
            "cpu_seconds": cpu_at,
            "steps": at.step if at else 0, "examples": at.examples if at else 0,
            "train_seconds_run": (at.seconds - at.eval_seconds) if at else 0.0,
            "value": at.value if at else None,
            "curve": [[e.step, e.examples, round(e.seconds - e.eval_seconds, 4), round(e.value, 5),
                       None if c is None else round(c, 4)] for e, c in zip(evals, cpu)]}


def find_summary(r, wall: float) -> dict:
    rec, st = r.recommendation, r.step_time
    pred = rec.predicted
    verify_cost = (rec.verification or {}).get("cost") or {}
    cands = [asdict(c) if hasattr(c, "__dataclass_fields__") else dict(c) for c in rec.candidates]
    at32 = next((c for c in cands if c["batch_size"] == BASE_BATCH), None)
    return {"batch_size": rec.batch_size, "micro_batch": rec.micro_batch, "accumulation": rec.accumulation,
            "lr": rec.lr, "lr_rule": rec.lr_rule, "warmup_steps": rec.warmup_steps,
            "b_crit": rec.b_crit.get("value"), "b_crit_low": rec.b_crit.get("low"),
            "b_crit_high": rec.b_crit.get("high"),
            "predicted": {"steps": pred.get("steps"), "examples": pred.get("examples"),
                          "seconds": pred.get("seconds"),
                          "step_seconds": pred["seconds"] / pred["steps"] if pred.get("steps") else None},
            "predicted_batch32": at32, "candidates": cands,
            "step_time": {k: st.get(k) for k in ("source", "line", "predicted_seconds", "measured_seconds",
                                                 "bare_seconds", "overhead_seconds", "added_seconds")},
            "profile": {"alpha": r.profile.alpha, "beta": r.profile.beta, "max_batch": r.profile.max_batch},
            "wall_seconds": wall, "cost_seconds": dict(r.seconds),
            "measuring_cost": r.measuring.get("cost"),
            "verify_cost": {k: verify_cost.get(k) for k in ("steps", "examples", "seconds") if k in verify_cost},
            "verdict": (rec.verification or {}).get("verdict"), "caveats": list(rec.caveats)}


class Store:
    """The runs so far, one JSON file rewritten atomically after each unit of work."""

    def __init__(self, path: Optional[Path]):
        self.path = path
        self.data = read_json(path) if path is not None and path.exists() else {}

    def get(self, key: str):
        return self.data.get(key)

    def put(self, key: str, value) -> None:
        self.data[key] = value
        if self.path is not None:
            write_json(self.path, self.data)


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def unit(store: Store, key: str, work, say=print):
    got = store.get(key)
    if got is not None:
        return got
    load0, t0 = _load(), time.perf_counter()
    value = work()
    value = {**value, "load_average": [load0, _load()], "unit_wall_seconds": time.perf_counter() - t0}
    store.put(key, value)
    say(f"  {key}: " + ", ".join(f"{k} {value[k]:.4g}" if isinstance(value[k], float) else f"{k} {value[k]}"
                                 for k in ("reached", "batch", "seconds", "steps", "batch_size", "lr",
                                           "warmup_steps", "wall_seconds", "target") if k in value))
    return value


def run_workload(w, s: Sizes, store: Store, say=print) -> dict:
    """Pilot, find, then ``s.rounds`` interleaved rounds of the three arms; every unit stored as it ends."""
    k = w.name
    pilot = unit(store, f"{k}/pilot", lambda: _pilot(w, s), say)
    target = pilot["target"]
    found = unit(store, f"{k}/find", lambda: w.find(target), say)
    limit = s.cap * pilot["wall_seconds_budget"]
    arms = {"batch 32": (BASE_BATCH, 1, w.lr, 0), "batch 32 again": (BASE_BATCH, 1, w.lr, 0),
            "recommendation": (found["micro_batch"], found["accumulation"], found["lr"], found["warmup_steps"])}
    rng = random.Random(f"{k}-order")
    runs = {a: [] for a in ARMS}
    for r in range(s.rounds):
        order = rng.sample(ARMS, len(ARMS))
        for arm in order:
            micro, acc, lr, warm = arms[arm]
            runs[arm].append(unit(store, f"{k}/round{r}/{arm}",
                                  lambda: w.fit(r, micro, acc, lr, warm, target, limit), say))
    return {"workload": k, "framework": w.framework, "description": w.description, "pilot": pilot,
            "target": target, "find": found, "wall_limit_seconds": limit, "runs": runs, **summarize(runs, found)}


def _pilot(w, s: Sizes) -> dict:
    got = w.fit(0, BASE_BATCH, 1, w.lr, 0, 1e-9, s.pilot_seconds)   # a target no run reaches: the budget ends it
    return {**pilot_target(got["curve"]), "wall_seconds_budget": s.pilot_seconds, "steps": got["steps"],
            "train_seconds": got["train_seconds_run"], "curve": got["curve"]}


def pilot_target(curve: list) -> dict:
    """The target from the pilot's evaluations ([step, examples, seconds, loss] each): the median loss of
    the last five, robust to one noisy evaluation (a loss spike, or a lucky low)."""
    last = [c[3] for c in curve[-5:]]
    return {"target": statistics.median(last), "last_values": last}


def summarize(runs: dict, found: dict) -> dict:
    def secs(arm, key="seconds"):
        return [r.get(key) for r in runs[arm]]

    def ratio(a, b, key="seconds"):
        return [None if x is None or y is None else x / y for x, y in zip(secs(a, key), secs(b, key))]

    def stats(values):
        v = [x for x in values if x is not None]
        return {"median": statistics.median(v) if v else None, "min": min(v) if v else None,
                "max": max(v) if v else None, "values": values, "n_missing": len(values) - len(v)}

    def median(values):
        v = [x for x in values if x is not None]
        return statistics.median(v) if v else None

    med = {a: median(secs(a)) for a in ARMS}
    reached = {a: sum(r["reached"] for r in runs[a]) for a in ARMS}
    steps = {a: statistics.median([r["steps"] for r in runs[a]]) for a in ARMS}
    step_s = {a: statistics.median([r["train_seconds_run"] / r["steps"] for r in runs[a] if r["steps"]])
              for a in ARMS}
    cpu_step = {a: median([r["curve"][-1][4] / r["curve"][-1][0] for r in runs[a]
                           if r["curve"] and len(r["curve"][-1]) > 4 and r["curve"][-1][4] is not None])
                for a in ARMS}
    rec32 = stats(ratio("recommendation", "batch 32"))
    aa = stats(ratio("batch 32 again", "batch 32"))
    # CPU time of the training thread: far less moved by other processes than the wall clock (rounds that have it)
    cpu = {a: median(secs(a, "cpu_seconds")) for a in ARMS}
    cpu_rounds = sum(all(runs[a][i].get("cpu_seconds") is not None for a in ARMS) for i in range(len(runs["batch 32"])))
    rec32_cpu = stats([x for x in ratio("recommendation", "batch 32", "cpu_seconds") if x is not None])
    aa_cpu = stats([x for x in ratio("batch 32 again", "batch 32", "cpu_seconds") if x is not None])
    with_find = None if None in (med["recommendation"], med["batch 32"]) else (
        (med["recommendation"] + found["wall_seconds"]) / med["batch 32"])
    return {"median_seconds": med, "reached": reached, "median_steps": steps, "median_step_seconds": step_s,
            "ratio_recommendation_to_batch32": rec32, "ratio_aa": aa, "ratio_with_find": with_find,
            "median_cpu_seconds": cpu, "median_cpu_step_seconds": cpu_step, "cpu_rounds": cpu_rounds,
            "ratio_recommendation_to_batch32_cpu": rec32_cpu,
            "ratio_aa_cpu": aa_cpu,
            "goal_met": rec32["median"] is not None and rec32["n_missing"] == 0 and rec32["median"] <= 1.0}


def markdown(results: list[dict], meta: dict) -> str:
    out = ["# find's recommendation against batch 32, in the frameworks themselves", "",
           f"One torch thread, {os.cpu_count()} CPUs shared with other work, not niced; 1-minute load average "
           f"{meta['load_start'][0]:.2f} at the start, {meta['load_end'][0]:.2f} at the end (every run's own "
           "load is in the JSON). How it was measured: the docstring of "
           "`benchmarks/frameworks_find_vs_batch32.py`. Time to target: the framework's training wall time to "
           "the evaluation that reached the target, evaluations taken out.", "",
           "| workload | framework | target (val loss) | arm | batch | lr | warm-up | reached | median s | "
           "median steps | ms / step |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        f = res["find"]
        for arm in ARMS:
            b, lr, warm = ((f["batch_size"], f["lr"], f["warmup_steps"]) if arm == "recommendation"
                           else (BASE_BATCH, res["base_lr"], 0))
            n = len(res["runs"][arm])
            ms = res["median_seconds"][arm]
            out.append(f"| {res['workload']} | {res['framework']} | {res['target']:.4g} | {arm} | {b} | {lr:.3g} | "
                       f"{warm} | {res['reached'][arm]}/{n} | {'-' if ms is None else f'{ms:.1f}'} | "
                       f"{res['median_steps'][arm]:g} | {res['median_step_seconds'][arm] * 1e3:.1f} |")
    out += ["", "Wall clock (the goal's measure), per round the ratio to batch 32 of the same round, median "
            "(min-max) over rounds; thread CPU time beside it (the same intervals, evaluations out; rounds that "
            "recorded it):", "",
            "| workload | rounds | recommendation / batch 32 | A/A: batch 32 again / batch 32 | with find's own "
            "wall time | find's wall s | CPU time: rec. / batch 32 | CPU time: A/A | goal <= 1.0 (wall) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        r, aa, f = res["ratio_recommendation_to_batch32"], res["ratio_aa"], res["find"]
        wf = "-" if res["ratio_with_find"] is None else f"{res['ratio_with_find']:.2f}"
        n = len(res["runs"]["batch 32"])
        out.append(f"| {res['workload']} | {n} | {_fmt(r)} | {_fmt(aa)} | {wf} | {f['wall_seconds']:.1f} | "
                   f"{_fmt(res['ratio_recommendation_to_batch32_cpu'])} ({res['cpu_rounds']} rounds) | "
                   f"{_fmt(res['ratio_aa_cpu'])} | {'met' if res['goal_met'] else 'not met'} |")
    out += ["", "find's prediction against the runs (the recommendation's step time and steps to the target; "
            "measured: median over rounds):", "",
            "| workload | rec. batch (micro x acc) | B_crit (90%) | predicted ms / step | measured ms / step | "
            "predicted steps | measured steps | predicted s | measured s | batch 32: predicted s, measured s |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        f, p = res["find"], res["find"]["predicted"]
        p32 = f.get("predicted_batch32") or {}
        b32 = f"{p32['seconds']:.1f}, " if p32 else "-, "
        out.append(f"| {res['workload']} | {f['batch_size']} ({f['micro_batch']} x {f['accumulation']}) | "
                   f"{f['b_crit']:.3g} ({f['b_crit_low']:.3g}-{f['b_crit_high']:.3g}) | "
                   f"{p['step_seconds'] * 1e3:.1f} | {res['median_step_seconds']['recommendation'] * 1e3:.1f} | "
                   f"{p['steps']:.0f} | {res['median_steps']['recommendation']:g} | {p['seconds']:.1f} | "
                   f"{_num(res['median_seconds']['recommendation'])} | "
                   f"{b32}{_num(res['median_seconds']['batch 32'])} |")
    out += ["", "Where the time ratio comes from, recommendation over batch 32: steps to the target times time per "
            "step, as find's model predicted them and as measured (medians over rounds; per-step time = training "
            "wall time to the last evaluation / steps):", "",
            "| workload | steps ratio predicted | measured | step-time ratio predicted | measured (wall) | "
            "measured (CPU) | time ratio predicted | measured (ratio of the median seconds) |",
            "|---|---|---|---|---|---|---|---|"]
    for res in results:
        f, p32 = res["find"], res["find"].get("predicted_batch32")
        if not p32:
            continue
        p, st, ms = f["predicted"], res["median_steps"], res["median_step_seconds"]
        sr_p, sr_m = p["steps"] / p32["steps"], st["recommendation"] / st["batch 32"]
        tr_p = p["step_seconds"] / (p32["seconds"] / p32["steps"])
        tr_m = ms["recommendation"] / ms["batch 32"]
        med = res["median_seconds"]
        r, b = med["recommendation"], med["batch 32"]
        both = "-" if None in (r, b) else f"{r / b:.2f}"
        cs = res.get("median_cpu_step_seconds") or {}
        tr_c = "-" if None in (cs.get("recommendation"), cs.get("batch 32")) else (
            f"{cs['recommendation'] / cs['batch 32']:.2f}")
        out.append(f"| {res['workload']} | {sr_p:.2f} | {sr_m:.2f} | {tr_p:.2f} | {tr_m:.2f} | {tr_c} | "
                   f"{sr_p * tr_p:.2f} | {both} |")
    out += [""]
    for res in results:
        f, pilot = res["find"], res["pilot"]
        mc = f["measuring_cost"] or {}
        out += [f"- {res['workload']}: {res['description']}. Target: the median validation loss of the last five "
                f"evaluations of a pilot run at batch 32 for {pilot['wall_seconds_budget']:g} s of wall clock "
                f"({pilot['steps']} steps; last values {', '.join(f'{v:.4g}' for v in pilot['last_values'])}). "
                f"find: {f['wall_seconds']:.1f} s in all (" + ", ".join(
                    f"{k} {v:.1f} s" for k, v in f["cost_seconds"].items()) +
                f"), measuring run {mc.get('steps')} steps / {mc.get('examples'):,} examples; the step time it "
                f"planned with: {f['step_time']['line']}; rate rule: {f['lr_rule']}; branch check: "
                f"{f['verdict'] or 'none'}. Arm-runs capped at {res['wall_limit_seconds']:.0f} s."]
    return "\n".join(out) + "\n"


def _num(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def _fmt(st: dict) -> str:
    if st["median"] is None:
        return "none reached"
    miss = f", {st['n_missing']} not reached" if st["n_missing"] else ""
    return f"{st['median']:.2f} ({st['min']:.2f}-{st['max']:.2f}{miss})"


def run(s: Sizes, names=("gpt2", "cnn"), store_path: Optional[Path] = STORE, say=print) -> list[dict]:
    """The whole benchmark for the named workloads (the test calls this on tiny sizes)."""
    _silence()
    store = Store(store_path)
    store.put("sizes", asdict(s))
    results = []
    for name in names:
        w = WORKLOADS[name](s)
        say(f"{name}: {w.description}")
        res = run_workload(w, s, store, say)
        res["base_lr"] = w.lr
        results.append(res)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="gpt2,cnn")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pilot-seconds", type=float, default=50.0)
    ap.add_argument("--markdown-only", action="store_true",
                    help="write the .md again from the saved .json (and the store's runs), measuring nothing")
    a = ap.parse_args()
    if a.markdown_only:
        saved = read_json(RESULTS / "frameworks_find_vs_batch32.json")
        for res in saved["workloads"]:
            res.update(summarize(res["runs"], res["find"]))
        write_json(RESULTS / "frameworks_find_vs_batch32.json", saved)
        text = markdown(saved["workloads"], saved)
        (RESULTS / "frameworks_find_vs_batch32.md").write_text(text)
        print(text)
        return
    torch.set_num_threads(1)
    s = Sizes(rounds=a.rounds, pilot_seconds=a.pilot_seconds)
    load_start = _load()
    results = run(s, a.workloads.split(","))
    meta = {"load_start": load_start, "load_end": _load(), "threads": 1, "omp_num_threads":
            os.environ.get("OMP_NUM_THREADS"), "sizes": asdict(s)}
    write_json(RESULTS / "frameworks_find_vs_batch32.json", {**meta, "workloads": results})
    text = markdown(results, meta)
    (RESULTS / "frameworks_find_vs_batch32.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
