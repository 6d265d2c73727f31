import copy
import csv
import json
import math

import pytest

pl = pytest.importorskip("lightning.pytorch")
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from batchscope.errors import ConfigError  # noqa: E402
from batchscope.integrations.lightning import NoiseScaleCallback  # noqa: E402
from batchscope.noise import NoiseScaleMonitor  # noqa: E402

from .helpers import batchscope_calls  # noqa: E402
from .lightning_helpers import TinyClassifier, TinyData, make_data, trainer  # noqa: E402


def reference_history(module: TinyClassifier, micro: int, accumulation: int, n: int = 512, every: int = 1) -> list:
    """batchscope's own monitor in a plain loop over the same micro-batches, in the same order."""
    model = copy.deepcopy(module)
    opt = torch.optim.SGD(model.parameters(), lr=model.hparams.lr)
    monitor = NoiseScaleMonitor(model, micro_batch=micro, every=every)
    batches = list(DataLoader(make_data(n), batch_size=micro, shuffle=False))
    for s in range(len(batches) // accumulation):
        total = 0.0
        for x, y in batches[s * accumulation:(s + 1) * accumulation]:
            loss = nn.functional.cross_entropy(model(x), y) / accumulation
            loss.backward()
            total += float(loss)
        monitor.update(total)
        opt.step()
        opt.zero_grad()
    return monitor.history


@pytest.mark.slow
def test_noise_callback_matches_monitor_on_identical_micro_batches(tmp_path):
    # 512 examples, micro-batch 8, 4 per step: 16 optimizer steps, every window full and equal.
    pl.seed_everything(0)
    module = TinyClassifier()
    ref = reference_history(module, micro=8, accumulation=4)
    cb = NoiseScaleCallback(every=1)
    t = trainer(tmp_path, [cb], accumulate_grad_batches=4)
    t.fit(module, datamodule=TinyData(batch_size=8))
    got = cb.monitor.history
    assert len(got) == len(ref) == 16 and cb.left_out == 0
    # Same weights, same micro-batches, same operations: equal to float64 round-off.
    for a, b in zip(got, ref):
        assert a.b_simple == pytest.approx(b.b_simple, rel=1e-9)
        assert a.g2 == pytest.approx(b.g2, rel=1e-9) and a.trace == pytest.approx(b.trace, rel=1e-9)
        assert a.loss == pytest.approx(b.loss, rel=1e-6)
    # ... and it went through the Trainer's logger, once per optimizer step.
    rows = list(csv.DictReader(open(t.logger.log_dir + "/metrics.csv")))
    logged = [float(r["noise/b_simple"]) for r in rows if r.get("noise/b_simple")]
    assert logged == pytest.approx([p.b_simple for p in got], rel=1e-6)
    assert any(r.get("noise/b_simple_low") for r in rows)


@pytest.mark.slow
def test_default_samples_every_8th_step_matches_the_monitor_and_logs_every_step(tmp_path):
    # The default measures steps 1, 9, 17 of 24; no gradient hook runs on the steps between.
    pl.seed_everything(0)
    module = TinyClassifier()
    ref = reference_history(module, micro=8, accumulation=4, n=768, every=8)
    cb = NoiseScaleCallback()
    t = trainer(tmp_path, [cb], accumulate_grad_batches=4, log_every_n_steps=4)   # logs at 4, 8, .., 24
    t.fit(module, datamodule=TinyData(batch_size=8, n=768))
    got = cb.monitor.history
    assert [p.step for p in got] == [p.step for p in ref] == [1, 9, 17] and cb.left_out == 0
    for a, b in zip(got, ref):
        assert a.b_simple == pytest.approx(b.b_simple, rel=1e-9)
        assert a.g2 == pytest.approx(b.g2, rel=1e-9) and a.trace == pytest.approx(b.trace, rel=1e-9)
    x, y = make_data(8)[:]      # step 25 would be idle: no hooks left on the model
    assert batchscope_calls(lambda: nn.functional.cross_entropy(module(x), y).backward()) == []
    # The steps the logger writes (none of them measured) carry the latest estimate.
    assert t.callback_metrics["noise/b_simple"].item() == pytest.approx(got[-1].b_simple, rel=1e-6)


@pytest.mark.slow
def test_short_last_window_and_smaller_last_batch_are_left_out(tmp_path):
    # 500 examples / micro-batch 8: 63 batches, the last of 4; accumulate 4: 15 full windows and a
    # final window of 3 batches whose loss Lightning still divides by 4.
    cb = NoiseScaleCallback(every=1)
    t = trainer(tmp_path, [cb], accumulate_grad_batches=4)
    t.fit(TinyClassifier(), datamodule=TinyData(batch_size=8, n=500))
    assert len(cb.monitor.history) == 15 and cb.left_out == 1
    assert all(math.isfinite(p.b_simple) for p in cb.monitor.history)


def test_missing_extra_names_it(monkeypatch):
    import sys

    import batchscope.integrations.requires as requires

    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    with pytest.raises(ImportError, match=r"^batchscope.integrations.lightning needs lightning: "
                                          r"pip install 'batchscope\[lightning\]'$"):
        requires.require("lightning.pytorch", "lightning", "batchscope.integrations.lightning")


class StepProbe(pl.Callback):
    """Measures, independently of the callback under test, each optimizer step's examples and the rate
    plain SGD really applied: lr = -(dw . g) / |g|^2 from the parameters before and after the step."""

    def __init__(self):
        self.examples, self.lrs, self.losses, self._n, self._before = [], [], [], 0, None

    def on_train_start(self, trainer, pl_module):
        opt = trainer.optimizers[0]
        opt.register_step_pre_hook(self._pre)
        opt.register_step_post_hook(self._post)

    def _params(self, opt):
        return [p for g in opt.param_groups for p in g["params"]]

    def _pre(self, opt, args, kwargs):
        self._before = [p.detach().clone() for p in self._params(opt)]

    def _post(self, opt, args, kwargs):
        ps = self._params(opt)
        dw_g = sum(float(((p.detach() - b) * p.grad).sum()) for p, b in zip(ps, self._before))
        g2 = sum(float((p.grad ** 2).sum()) for p in ps)
        self.lrs.append(-dw_g / g2)
        self.examples.append(self._n)
        self._n = 0

    def on_train_epoch_start(self, trainer, pl_module):
        self._n = 0   # a window left open at an epoch's end never reaches the optimizer

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._n += len(batch[0])   # counted as the batches arrive, not from the callback's plan

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]) * trainer.accumulate_grad_batches)


def adaptive_run(tmp_path, epochs=3, **kw):
    from batchscope.adapt import StepTimeModel
    from batchscope.integrations.lightning import AdaptiveBatchCallback

    pl.seed_everything(0)
    # A step costs 20 ms fixed + 20 us per example: larger batches are cheap, so the controller grows them.
    cb = AdaptiveBatchCallback(StepTimeModel(0.02, 2e-5), every=4, min_samples=3, **kw)
    probe = StepProbe()
    t = trainer(tmp_path, [probe, cb], accumulate_grad_batches=2, max_epochs=epochs)
    return t, cb, probe


@pytest.mark.slow
def test_adaptive_callback_changes_examples_per_step_and_rate(tmp_path):
    from batchscope.adapt import adascale_gain

    t, cb, probe = adaptive_run(tmp_path)
    t.fit(TinyClassifier(lr=0.1), datamodule=TinyData(batch_size=8, n=1024))
    plan = cb.plan
    # The examples each optimizer step really took (counted by the probe) are the plan's, and they grew.
    assert probe.examples == [s.examples for s in plan.steps]
    assert probe.examples[0] == 16 and max(probe.examples) >= 64
    changed = [d for d in plan.controller.decisions if d.changed]
    assert changed and all(d.batch_size > d.previous for d in changed)
    # The rate of every step is the optimizer's 0.1 times the AdaScale gain the rule gives for that batch.
    for s, lr in zip(plan.steps, probe.lrs):
        gain = 1.0 if s.examples == 16 else adascale_gain(s.examples, 16, s.b_crit)
        assert lr == pytest.approx(0.1 * gain, rel=1e-4)   # float32 parameter updates
    assert max(probe.lrs) > 0.1
    assert t.optimizers[0].param_groups[0]["lr"] == 0.1        # restored after each step
    # ... and it still trains: the last epoch's loss is well below the first's.
    n = len(probe.losses) // 3
    first, last = sum(probe.losses[:n]) / n, sum(probe.losses[-n:]) / n
    assert last < 0.8 * first


def test_task_from_lightning_runs_the_module_s_own_loss_and_optimizer():
    from batchscope.data import forward, split_batch, take
    from batchscope.integrations.lightning import task_from_lightning

    module, dm = TinyClassifier(lr=0.2), TinyData(batch_size=32, n=256)
    task = task_from_lightning(module, dm, target=0.42)
    assert (task.optimizer, task.lr, task.momentum, task.reference_batch) == ("sgd", 0.2, 0.0, 32)
    assert task.n_train == 256 and task.n_val == 64 and task.target.split == "val"
    idx = torch.tensor([3, 1, 4, 1, 5])
    inputs, target = split_batch(take(task.train_data, idx))
    got = task.loss_fn(forward(task.make_model(), inputs), target)
    x, y = dm.train[idx]
    assert float(got) == pytest.approx(float(nn.functional.cross_entropy(module(x), y)), rel=1e-6)


def test_task_from_lightning_refuses_an_optimizer_without_a_rate_rule():
    from batchscope.errors import ConfigError
    from batchscope.integrations.lightning import task_from_lightning

    class RMS(TinyClassifier):
        def configure_optimizers(self):
            return {"optimizer": torch.optim.RMSprop(self.parameters(), lr=0.01)}

    with pytest.raises(ConfigError, match="find works with SGD, Adam or AdamW .* got RMSprop"):
        task_from_lightning(RMS(), TinyData(), target=0.4)


@pytest.mark.slow
def test_find_on_a_lightning_module():
    from batchscope.integrations.lightning import find

    torch.manual_seed(0)
    r = find(TinyClassifier(lr=0.2), TinyData(batch_size=32, n=2048), target=0.42, memory_budget="256MiB",
             max_batch=128)
    rec = r.recommendation
    assert rec.batch_size in [c["batch_size"] if isinstance(c, dict) else c.batch_size for c in rec.candidates]
    assert rec.b_crit["value"] > 0 and rec.lr > 0
    # where the result is read, it says the target loss is training_step's on the validation data
    assert any(c.startswith("the target val loss <= 0.42: its loss is your training_step's loss on the validation "
                            "data") and "not the val_loss your validation_step logs" in c for c in rec.caveats)
    # Lightning's own steps were timed (a copy of the module under a plain Trainer) and planned with
    st = r.step_time
    assert st["source"].startswith("a Lightning Trainer's own steps") and (st["micro_batch"], st["accumulation"]) == (
        32, 1)
    assert st["steps"] >= 10 and st["added"] and rec.evidence["step_overhead"] == st["added_seconds"]


def _records(rows):
    # nan (no estimate yet) compares unequal to itself; compare it as None
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in vars(r).items()} for r in rows]


def _estimate_numbers(est):
    return (est.n_samples, est.g2, est.trace, est.b_simple)


@pytest.mark.slow
def test_callbacks_survive_checkpoint_and_resume(tmp_path):
    """Two epochs in one go == one epoch, a checkpoint, a new Trainer and new callbacks, one more epoch."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(epochs, ckpt=None, save=False):
        pl.seed_everything(0)
        t, cb, _ = adaptive_run(tmp_path / f"run{epochs}{bool(ckpt)}", epochs=epochs)
        if save:
            t.callbacks.append(ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last"))
        t.fit(TinyClassifier(lr=0.1), datamodule=TinyData(batch_size=8, n=512), ckpt_path=ckpt)
        return t, cb

    _, whole = run(2)
    run(1, save=True)
    t, resumed = run(2, ckpt=str(tmp_path / "ckpt" / "last.ckpt"))
    assert _records(resumed.plan.steps) == _records(whole.plan.steps)
    assert _records(resumed.plan.controller.decisions) == _records(whole.plan.controller.decisions)
    assert any(d.changed for d in whole.plan.controller.decisions)
    assert (resumed.plan.micro_batch, resumed.plan.accumulation) == (whole.plan.micro_batch, whole.plan.accumulation)
    assert _estimate_numbers(resumed.monitor.estimate()) == pytest.approx(_estimate_numbers(whole.monitor.estimate()),
                                                                          rel=1e-9)


def plain_loop_in_halves(module: TinyClassifier, batch: int, n: int, every: int) -> NoiseScaleMonitor:
    """The monitor's own-loop recipe: each batch of ``batch`` run as two micro-batches of batch/2."""
    model = copy.deepcopy(module)
    opt = torch.optim.SGD(model.parameters(), lr=model.hparams.lr)
    monitor = NoiseScaleMonitor(model, micro_batch=batch // 2, every=every)
    h = batch // 2
    for x, y in DataLoader(make_data(n), batch_size=batch, shuffle=False):
        total = 0.0
        for xs, ys in ((x[:h], y[:h]), (x[h:], y[h:])):
            loss = nn.functional.cross_entropy(model(xs), ys) / 2
            loss.backward()
            total += float(loss.detach())
        monitor.update(total)
        opt.step()
        opt.zero_grad()
    return monitor


@pytest.mark.parametrize("every", [1, 8])
def test_default_accumulation_measures_as_the_plain_loop(tmp_path, every):
    # Lightning's default (accumulate_grad_batches=1): 256 examples in batches of 16, 16 steps. Each
    # measured step's batch runs again as two halves; the plain loop accumulates the same two halves.
    pl.seed_everything(0)
    module = TinyClassifier()
    ref = plain_loop_in_halves(module, batch=16, n=256, every=every)
    cb = NoiseScaleCallback(every=every)
    t = trainer(tmp_path, [cb])
    t.fit(module, datamodule=TinyData(batch_size=16, n=256))
    got = cb.monitor.history
    assert [p.step for p in got] == [p.step for p in ref.history] == list(range(1, 17, every)) and cb.left_out == 0
    for a, b in zip(got, ref.history):
        assert a.b_simple == pytest.approx(b.b_simple, rel=1e-5) and a.g2 == pytest.approx(b.g2, rel=1e-5)
    est, plain = cb.monitor.estimate().b_simple, ref.estimate().b_simple
    assert math.isfinite(est) and 0.5 < est / plain < 2          # the bar; here equal to round-off
    assert cb.monitor.sizes == (8, 16)
    rows = list(csv.DictReader(open(t.logger.log_dir + "/metrics.csv")))
    assert len([r for r in rows if r.get("noise/b_simple")]) == 16   # logged at every step from the first


def test_measuring_in_halves_leaves_training_as_it_was(tmp_path):
    # Dropout draws random numbers and BatchNorm keeps running statistics: both are put back, and the
    # step's own gradient with them, so the weights after the fit are the same bit for bit.
    class Noisy(TinyClassifier):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Dropout(0.3), nn.Tanh(), nn.Linear(16, 3))

    def fit(callbacks):
        pl.seed_everything(0)
        m = Noisy()
        trainer(tmp_path, callbacks).fit(m, datamodule=TinyData(batch_size=16, n=256))
        return m.state_dict()

    cb = NoiseScaleCallback(every=2)
    with_cb, without = fit([cb]), fit([])
    assert len(cb.monitor.history) == 8
    assert all(torch.equal(with_cb[k], without[k]) for k in without)


def test_an_unsplittable_batch_says_no_estimate_yet_and_at_the_end(tmp_path, caplog):
    cb = NoiseScaleCallback(every=1)
    with caplog.at_level("WARNING", logger="batchscope"):
        trainer(tmp_path, [cb], max_steps=6).fit(TinyClassifier(), datamodule=TinyData(batch_size=1, n=64))
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("batchscope")]
    assert cb.left_out == 6 and not cb.monitor.history
    assert len(lines) == 2
    assert lines[0].startswith("noise scale: no estimate yet at step 1 (1 steps left out; the last was left out "
                               "because a batch of 1 cannot be split into two halves)")
    assert lines[1].startswith("noise scale: the fit ended without an estimate (6 optimizer steps, 6 left out")


class FailsAt(TinyClassifier):
    """Raises in training_step at the given batch, as a user's bug or an out-of-memory error would."""

    def __init__(self, at: int, **kw):
        super().__init__(**kw)
        self.at, self.seen = at, 0

    def training_step(self, batch, batch_idx):
        self.seen += 1
        if self.seen == self.at:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


def test_adaptive_callback_gives_the_trainer_back_after_an_exception_and_at_the_end(tmp_path):
    from batchscope.adapt import StepTimeModel
    from batchscope.integrations.lightning import AdaptiveBatchCallback

    pl.seed_everything(0)
    for at, raises in ((12, True), (10**9, False)):
        cb = AdaptiveBatchCallback(StepTimeModel(0.02, 2e-5), every=4, min_samples=3)
        t = trainer(tmp_path, [cb], accumulate_grad_batches=2, max_epochs=2)
        module, data = FailsAt(at, lr=0.1), TinyData(batch_size=8, n=512)
        if raises:
            with pytest.raises(RuntimeError, match="boom"):
                t.fit(module, datamodule=data)
        else:
            t.fit(module, datamodule=data)
        assert any(d.changed for d in cb.plan.controller.decisions)       # it did change them during the fit
        assert t.accumulate_grad_batches == 2 and t.train_dataloader.batch_sampler.batch_size == 8
        assert t.optimizers[0].param_groups[0]["lr"] == 0.1
        # no gradient hook on the model, no step hook on the optimizer
        x, y = make_data(8)[:]
        assert batchscope_calls(lambda: nn.functional.cross_entropy(module(x), y).backward()) == []
        assert batchscope_calls(t.optimizers[0].step) == []


def test_adaptive_callback_takes_a_profile_or_a_find_result_by_path(tmp_path):
    from batchscope.hardware import HardwareProfile
    from batchscope.integrations.lightning import AdaptiveBatchCallback, task_from_lightning
    from tests.helpers import fake_profile

    task = task_from_lightning(TinyClassifier(), TinyData(), target=0.5)
    profile = fake_profile(task, alpha=0.02, beta=2e-5)
    path = profile.save(tmp_path / "profile.json")
    assert isinstance(AdaptiveBatchCallback(str(path)).step_time, HardwareProfile)
    assert AdaptiveBatchCallback(path).step_time.alpha == 0.02
    doc = {"schema": "batchscope.find/1", "batch_size": 32, "lr": 0.1, "measuring": {}, "profile": profile.to_dict()}
    (tmp_path / "find.json").write_text(json.dumps(doc))
    assert AdaptiveBatchCallback(tmp_path / "find.json").step_time.beta == 2e-5
    # ... and refuses a profile of another model when training starts
    other = fake_profile(task, parameters=7)
    with pytest.raises(ConfigError, match=r"measured for 'TinyClassifier' \(7 parameters\), not for this "
                                          r"TinyClassifier \(195 parameters\)"):
        trainer(tmp_path, [AdaptiveBatchCallback(other)], accumulate_grad_batches=2, max_steps=1).fit(
            TinyClassifier(), datamodule=TinyData())


def test_stop_at_target_stops_at_the_first_validation_that_reaches_it(tmp_path):
    from batchscope.integrations.lightning import StopAtTarget

    pl.seed_everything(0)
    stop = StopAtTarget(0.42, monitor="val_loss")    # val_loss per epoch: 0.748, 0.592, 0.495, 0.435, 0.397
    t = trainer(tmp_path, [stop], max_epochs=30, limit_val_batches=1.0)
    t.fit(TinyClassifier(lr=0.2), datamodule=TinyData(batch_size=32, n=256))
    values = [e.value for e in stop.evaluations]
    r = stop.reached
    assert len(values) == 5 and r is stop.evaluations[-1] and r.value <= 0.42 < values[-2]
    assert t.current_epoch == 5 and t.global_step == 40 and (r.step, r.examples) == (40, 1280)   # 5 of 30 epochs
    assert 0 < r.eval_seconds < r.seconds
    assert stop.describe().startswith("target val_loss <= 0.42 reached at step 40 (1,280 examples, ")
