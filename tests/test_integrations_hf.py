import copy
import math

import pytest

transformers = pytest.importorskip("transformers")
import torch  # noqa: E402

from batchscope.errors import ConfigError  # noqa: E402
from batchscope.integrations.hf import NoiseScaleCallback  # noqa: E402
from batchscope.noise import NoiseScaleMonitor  # noqa: E402

from .helpers import batchscope_calls  # noqa: E402
from .hf_helpers import TokenData, args, tiny_bert  # noqa: E402


def capture_batches(model):
    seen = []

    def hook(module, a, kw):
        if module.training:
            seen.append({k: v.clone() for k, v in kw.items() if isinstance(v, torch.Tensor)})
    return seen, model.register_forward_pre_hook(hook, with_kwargs=True)


def replay(model, batches, accumulation: int, lr: float, clip: float, micro: int, divide: bool, every: int = 1):
    """batchscope's own monitor in a plain loop over the Trainer's micro-batches, in its order.

    ``divide``: whether the Trainer divides each micro-batch loss by the accumulation count; it does
    not when the model takes loss keyword arguments (it then expects the model to normalise).
    """
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    monitor = NoiseScaleMonitor(model, micro_batch=micro, every=every)
    model.train()
    for s in range(len(batches) // accumulation):
        for b in batches[s * accumulation:(s + 1) * accumulation]:
            (model(**b).loss / (accumulation if divide else 1)).backward()
        monitor.update()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad()
    return monitor.history


@pytest.mark.slow
def test_noise_callback_matches_monitor_and_logs(tmp_path):
    model = tiny_bert()
    start = copy.deepcopy(model)
    seen, handle = capture_batches(model)
    cb = NoiseScaleCallback(every=1)
    a = args(tmp_path, max_grad_norm=0.5, dataloader_drop_last=True)
    trainer = transformers.Trainer(model=model, args=a, train_dataset=TokenData(256), callbacks=[cb])
    trainer.train()
    handle.remove()
    assert a.max_grad_norm == 0.5          # clipping handed back after the run
    got = cb.monitor.history
    ref = replay(start, seen, 4, 0.05, 0.5, 8, divide=not trainer.model_accepts_loss_kwargs)
    assert len(got) == len(ref) == 8 and cb.left_out == 0
    # Same weights (clipping included), same micro-batches: equal to round-off.
    for x, y in zip(got, ref):
        assert x.b_simple == pytest.approx(y.b_simple, rel=1e-6)
        assert x.g2 == pytest.approx(y.g2, rel=1e-6)
    logged = [h["noise/b_simple"] for h in trainer.state.log_history if "loss" in h and "noise/b_simple" in h]
    finite = [p.b_simple for p in got if math.isfinite(p.b_simple)]   # inf: signal not yet told from zero
    assert len(finite) >= 2 and logged == pytest.approx(finite, rel=1e-12)


@pytest.mark.slow
def test_default_samples_every_8th_step_and_matches_the_monitor(tmp_path):
    model = tiny_bert()
    start = copy.deepcopy(model)
    seen, handle = capture_batches(model)
    cb = NoiseScaleCallback()
    a = args(tmp_path, max_grad_norm=0.5, dataloader_drop_last=True)
    trainer = transformers.Trainer(model=model, args=a, train_dataset=TokenData(512), callbacks=[cb])
    trainer.train()
    handle.remove()
    got = cb.monitor.history
    ref = replay(start, seen, 4, 0.05, 0.5, 8, divide=not trainer.model_accepts_loss_kwargs, every=8)
    assert [p.step for p in got] == [p.step for p in ref] == [1, 9] and cb.left_out == 0
    for x, y in zip(got, ref):
        assert x.b_simple == pytest.approx(y.b_simple, rel=1e-6)
        assert x.g2 == pytest.approx(y.g2, rel=1e-6)
    model.train()   # no size hook and no gradient hook left after the run
    assert batchscope_calls(lambda: model(**TokenData(8)[:]).loss.backward()) == []


@pytest.mark.slow
def test_smaller_last_batch_is_left_out(tmp_path):
    # 250 examples / 8: 31 full batches and one of 2; accumulation 4: the last step mixes sizes.
    cb = NoiseScaleCallback(every=1)
    trainer = transformers.Trainer(model=tiny_bert(), args=args(tmp_path), train_dataset=TokenData(250),
                                   callbacks=[cb])
    trainer.train()
    assert len(cb.monitor.history) == 7 and cb.left_out == 1


class StepProbe:
    """Independent of the callback: examples per optimizer step (forward pre-hook) and the rate SGD
    really applied, lr = -(dw . g) / |g|^2 from the parameters before and after each step."""

    def __init__(self, model):
        self.examples, self.lrs, self._n, self._before, self.model = [], [], 0, None, model
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, a, kw):
        if module.training and torch.is_grad_enabled():
            self._n += len(kw["input_ids"])

    def attach(self, opt):
        opt.register_step_pre_hook(self._pre)
        opt.register_step_post_hook(self._post)

    def _pre(self, opt, a, kw):
        self._before = [p.detach().clone() for p in self.model.parameters()]

    def _post(self, opt, a, kw):
        ps = list(self.model.parameters())
        dw_g = sum(float(((p.detach() - b) * p.grad).sum()) for p, b in zip(ps, self._before) if p.grad is not None)
        self.lrs.append(-dw_g / sum(float((p.grad ** 2).sum()) for p in ps if p.grad is not None))
        self.examples.append(self._n)
        self._n = 0


class AttachProbe(transformers.TrainerCallback):
    def __init__(self, probe):
        self.probe = probe

    def on_train_begin(self, args, state, control, optimizer=None, **kw):
        self.probe.attach(optimizer.optimizer)

    def on_epoch_begin(self, args, state, control, **kw):
        self.probe._n = 0      # a partial window at an epoch's end never reaches the optimizer


def mean_loss(model, data):
    model.eval()
    with torch.no_grad():
        out = model(input_ids=data.ids, labels=data.labels).loss
    model.train()
    return float(out)


@pytest.mark.slow
def test_adaptive_callback_changes_examples_per_step_and_rate(tmp_path):
    from batchscope.adapt import StepTimeModel, adascale_gain
    from batchscope.integrations.hf import AdaptiveBatchCallback

    model, data = tiny_bert(), TokenData(512)
    before = mean_loss(model, data)
    probe = StepProbe(model)
    cb = AdaptiveBatchCallback(StepTimeModel(0.02, 2e-5), every=4, min_samples=3)
    a = args(tmp_path, gradient_accumulation_steps=2, num_train_epochs=2, learning_rate=0.1, logging_steps=4)
    trainer = transformers.Trainer(model=model, args=a, train_dataset=data, callbacks=[AttachProbe(probe), cb])
    trainer.train()
    plan = cb.plan
    assert probe.examples == [s.examples for s in plan.steps]
    assert probe.examples[0] == 16 and max(probe.examples) >= 64
    assert any(d.changed for d in plan.controller.decisions)
    for s, lr in zip(plan.steps, probe.lrs):
        gain = 1.0 if s.examples == 16 else adascale_gain(s.examples, 16, s.b_crit)
        assert lr == pytest.approx(0.1 * gain, rel=1e-3)     # float32 parameter updates
    assert max(probe.lrs) > 0.11
    assert mean_loss(model, data) < 0.8 * before


def test_task_from_trainer_uses_the_model_s_loss_and_the_trainer_s_settings(tmp_path):
    from batchscope.data import forward, split_batch, take
    from batchscope.integrations.hf import task_from_trainer

    model, data = tiny_bert(), TokenData(64)
    trainer = transformers.Trainer(model=model, args=args(tmp_path, weight_decay=0.01), train_dataset=data,
                                   eval_dataset=TokenData(32, seed=1))
    task = task_from_trainer(trainer, target=0.45)
    assert (task.optimizer, task.lr, task.weight_decay, task.reference_batch) == ("sgd", 0.05, 0.01, 32)
    idx = torch.tensor([0, 5, 9])
    inputs, target = split_batch(take(task.train_data, idx))
    got = float(task.loss_fn(forward(task.make_model(), inputs), target))
    model.eval()
    assert got == pytest.approx(float(model(input_ids=data.ids[idx], labels=data.labels[idx]).loss), rel=1e-6)


@pytest.mark.slow
def test_find_on_a_trainer(tmp_path):
    from batchscope.integrations.hf import find

    trainer = transformers.Trainer(model=tiny_bert(),
                                   args=args(tmp_path, learning_rate=0.1, per_device_train_batch_size=32,
                                             gradient_accumulation_steps=1),
                                   train_dataset=TokenData(1024), eval_dataset=TokenData(256, seed=1))
    r = find(trainer, target=0.45, memory_budget="256MiB", max_batch=128)
    assert r.recommendation.batch_size >= 1 and r.recommendation.b_crit["value"] > 0
    # the Trainer's own steps were timed (on a copy) and their cost beyond the grid is in the plan
    st = r.step_time
    assert st["source"].startswith("the Trainer's own steps") and (st["micro_batch"], st["accumulation"]) == (32, 1)
    assert st["steps"] >= 10 and st["added"] and r.recommendation.evidence["step_overhead"] == st["added_seconds"]
    assert trainer.state.global_step == 0            # the Trainer itself has not trained


def _numbers(est):
    return (est.n_samples, est.g2, est.trace, est.b_simple)


@pytest.mark.slow
def test_noise_callback_survives_checkpoint_and_resume(tmp_path):
    """Two epochs in one go == one epoch, a checkpoint, a new Trainer and callback, one more epoch."""
    data = TokenData(128)

    def run(epochs, out, resume=None):
        cb = NoiseScaleCallback(every=2)
        a = args(tmp_path, output_dir=str(tmp_path / out), num_train_epochs=epochs, save_strategy="epoch",
                 restore_callback_states_from_checkpoint=True, dataloader_drop_last=True)
        trainer = transformers.Trainer(model=tiny_bert(), args=a, train_dataset=data, callbacks=[cb])
        trainer.train(resume_from_checkpoint=resume)
        # On resume the Trainer rebuilds the callback from its saved state: find the live one.
        return next(c for c in trainer.callback_handler.callbacks if isinstance(c, NoiseScaleCallback))

    whole = run(2, "whole")
    run(1, "half")
    resumed = run(2, "half", resume=str(tmp_path / "half" / "checkpoint-4"))
    assert whole.monitor.estimate().n_samples == 4     # steps 1, 3, 5, 7 of 8, across the resume
    assert _numbers(resumed.monitor.estimate()) == pytest.approx(_numbers(whole.monitor.estimate()), rel=1e-6)


@pytest.mark.slow
def test_adaptive_callback_state_survives_checkpoint(tmp_path):
    from batchscope.adapt import StepTimeModel
    from batchscope.integrations.hf import AdaptiveBatchCallback

    def run(epochs, resume=None):
        cb = AdaptiveBatchCallback(StepTimeModel(0.02, 2e-5), every=4, min_samples=3)
        a = args(tmp_path, gradient_accumulation_steps=2, num_train_epochs=epochs, learning_rate=0.1,
                 save_strategy="epoch", restore_callback_states_from_checkpoint=True)
        trainer = transformers.Trainer(model=tiny_bert(), args=a, train_dataset=TokenData(256), callbacks=[cb])
        trainer.train(resume_from_checkpoint=resume)
        return trainer, next(c for c in trainer.callback_handler.callbacks if isinstance(c, AdaptiveBatchCallback))

    first_trainer, first = run(1)
    saved = first.plan.state_dict()
    assert any(d.changed for d in first.plan.controller.decisions)
    ckpt = max((tmp_path / "out").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    _, resumed = run(2, resume=str(ckpt))
    n = len(saved["steps"])
    # The controller's decisions, the rate rule's progress and the record carry over; training goes on
    # from the grown batch, not from the starting one.
    # (repr: nan, the rate rule's estimate before the first, is unequal to itself)
    assert repr(resumed.plan.state_dict()["steps"][:n]) == repr(saved["steps"])
    k = len(first.plan.controller.decisions)
    assert repr(resumed.plan.controller.decisions[:k]) == repr(first.plan.controller.decisions)
    assert resumed.plan.steps[n].examples == first.plan.micro_batch * first.plan.accumulation
    assert resumed.plan.rate.progress > saved["adaptation"]["rate"]["progress"]


def test_adaptive_callback_state_keeps_the_whole_step_time_model_and_refuses_a_broken_one():
    from batchscope.adapt import StepTimeModel
    from batchscope.errors import ConfigError
    from batchscope.integrations.hf import AdaptiveBatchCallback

    model = StepTimeModel(0.02, 2e-5, ((8, 0.021), (64, 0.024)))
    saved = AdaptiveBatchCallback(model, every=4).state()["args"]
    assert saved["step_time"] == {"alpha": 0.02, "beta": 2e-5, "measured": [[8.0, 0.021], [64.0, 0.024]]}
    assert AdaptiveBatchCallback(**saved).step_time == model     # what a resumed Trainer plans with
    with pytest.raises(ConfigError, match=r"'alpha' parameter of StepTimeModel .* Got nan instead"):
        AdaptiveBatchCallback({"alpha": math.nan, "beta": 1e-5})


def replay_in_halves(model, batches, lr: float, clip: float, every: int):
    """The monitor's own-loop recipe on the Trainer's batches, in its order: each as two micro-batches."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    monitor = NoiseScaleMonitor(model, micro_batch=len(batches[0]["labels"]) // 2, every=every)
    model.train()
    for b in batches:
        b = {k: v for k, v in b.items() if k != "num_items_in_batch"}
        h = len(b["labels"]) // 2
        for rows in (slice(0, h), slice(h, 2 * h)):
            (model(**{k: v[rows] for k, v in b.items()}).loss / 2).backward()
        monitor.update()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad()
    return monitor


def test_default_accumulation_measures_as_the_plain_loop(tmp_path, every=1):
    # The Trainer's default (gradient_accumulation_steps=1): 256 examples in batches of 16, 16 steps.
    model = tiny_bert()
    start = copy.deepcopy(model)
    seen, handle = capture_batches(model)   # the Trainer's batches only: the halves bypass forward hooks
    cb = NoiseScaleCallback(every=every)
    a = args(tmp_path, gradient_accumulation_steps=1, per_device_train_batch_size=16, max_grad_norm=0.5,
             dataloader_drop_last=True)
    trainer = transformers.Trainer(model=model, args=a, train_dataset=TokenData(256), callbacks=[cb])
    trainer.train()
    handle.remove()
    ref = replay_in_halves(start, seen, 0.05, 0.5, every)
    got = cb.monitor.history
    assert len(seen) == 16 and [p.step for p in got] == [p.step for p in ref.history] == list(range(1, 17, every))
    for x, y in zip(got, ref.history):
        assert x.b_simple == pytest.approx(y.b_simple, rel=1e-5) and x.g2 == pytest.approx(y.g2, rel=1e-5)
    est, plain = cb.monitor.estimate().b_simple, ref.estimate().b_simple
    assert math.isfinite(est) and 0.5 < est / plain < 2          # the bar; here equal to round-off
    assert a.max_grad_norm == 0.5 and cb.left_out == 0 and cb.monitor.sizes == (8, 16)
    assert [h["noise/b_simple"] for h in trainer.state.log_history if "loss" in h][:1] == [got[0].b_simple]


def test_measuring_in_halves_leaves_training_as_it_was(tmp_path):
    def train(callbacks):
        model = tiny_bert()
        a = args(tmp_path, gradient_accumulation_steps=1, per_device_train_batch_size=16, max_steps=8)
        transformers.Trainer(model=model, args=a, train_dataset=TokenData(256), callbacks=callbacks).train()
        return model.state_dict()

    cb = NoiseScaleCallback(every=2)
    with_cb, without = train([cb]), train([])
    assert len(cb.monitor.history) == 4
    assert all(torch.equal(with_cb[k], without[k]) for k in without)


def fail_at(model, n: int):
    """A forward pre-hook raising at the n-th training forward, as a bug or out-of-memory error would."""
    count = [0]

    def hook(module, a, kw):
        if module.training and torch.is_grad_enabled():
            count[0] += 1
            if count[0] == n:
                raise RuntimeError("boom")
    return model.register_forward_pre_hook(hook, with_kwargs=True)


def test_max_grad_norm_is_yours_after_an_exception(tmp_path, monkeypatch):
    # every=1: every step is measured; the 11th forward is the 3rd micro-batch of step 3.
    model = tiny_bert()
    a = args(tmp_path, max_grad_norm=0.5)
    handle = fail_at(model, 11)
    cb = NoiseScaleCallback(every=1)
    trainer = transformers.Trainer(model=model, args=a, train_dataset=TokenData(256), callbacks=[cb])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    handle.remove()
    assert a.max_grad_norm == 0.5
    # The Trainer calls no callback on an exception: the callback's hooks stay until its next train()
    # begins, which removes them (and a run to the end leaves none).
    cb.on_train_begin(a, trainer.state, trainer.control, model=tiny_bert(), optimizer=None)
    cb.on_train_end(a, trainer.state, trainer.control)
    assert batchscope_calls(lambda: model(**TokenData(8)[:]).loss.backward()) == []
    # An exception in the measurement itself: the finally puts the value back.
    cb = NoiseScaleCallback(every=1)
    trainer = transformers.Trainer(model=tiny_bert(), args=a, train_dataset=TokenData(256), callbacks=[cb])
    monkeypatch.setattr(NoiseScaleMonitor, "update", lambda self, *x, **k: (_ for _ in ()).throw(ValueError("bad")))
    with pytest.raises(ValueError, match="bad"):
        trainer.train()
    assert a.max_grad_norm == 0.5


def test_adaptive_callback_gives_the_arguments_back(tmp_path, caplog):
    from batchscope.adapt import StepTimeModel
    from batchscope.integrations.hf import AdaptiveBatchCallback, restore_arguments

    def run(a, fail=None):
        model = tiny_bert()
        if fail:
            fail_at(model, fail)
        cb = AdaptiveBatchCallback({"alpha": 0.02, "beta": 2e-5}, every=4, min_samples=3, confident=False)
        transformers.Trainer(model=model, args=a, train_dataset=TokenData(512), callbacks=[cb]).train()
        return cb

    # 8 x 4 to start; a near-constant step time: the decision at step 4 (batch 512, as 256 x 2) changes the
    # accumulation
    a = args(tmp_path, gradient_accumulation_steps=4, learning_rate=0.1, max_steps=6)
    cb = run(a)
    assert isinstance(cb.step_time, StepTimeModel) and cb.plan.accumulation == 2
    assert a.gradient_accumulation_steps == 4 and cb._loader.batch_sampler.batch_size == 8
    with pytest.raises(RuntimeError, match="boom"):
        run(a, fail=18)                                # in step 5, after the change
    assert a.gradient_accumulation_steps == 2          # the Trainer calls no callback on an exception ...
    with caplog.at_level("WARNING", logger="batchscope"):
        run(a)                                         # ... so the next train() puts it back first
    assert a.gradient_accumulation_steps == 4 and restore_arguments(a) == {}
    assert [r.getMessage() for r in caplog.records if r.name.startswith("batchscope")] == [
        "restored TrainingArguments gradient_accumulation_steps=4, left changed by a batchscope callback in a "
        "train() that raised"]


def test_stop_at_target_stops_at_the_first_evaluation_that_reaches_it(tmp_path):
    from batchscope.integrations.hf import StopAtTarget

    stop = StopAtTarget(0.6, metric="loss")    # "eval_" is added
    a = args(tmp_path, gradient_accumulation_steps=1, per_device_train_batch_size=16, learning_rate=0.2,
             num_train_epochs=20, eval_strategy="steps", eval_steps=8, logging_steps=8)
    trainer = transformers.Trainer(model=tiny_bert(), args=a, train_dataset=TokenData(256),
                                   eval_dataset=TokenData(128, seed=1), callbacks=[stop])
    trainer.train()
    values = [e.value for e in stop.evaluations]
    r = stop.reached
    assert r is not None and r is stop.evaluations[-1] and r.value <= 0.6 < min(values[:-1] or [1.0])
    assert trainer.state.global_step == r.step == 8 * len(values) < 320 and r.examples == 16 * r.step
    assert 0 < r.eval_seconds < r.seconds
    with pytest.raises(ConfigError, match="eval_strategy='no'"):
        transformers.Trainer(model=tiny_bert(), args=args(tmp_path), train_dataset=TokenData(64),
                             callbacks=[StopAtTarget(0.5)]).train()
