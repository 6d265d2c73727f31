import pytest
import torch

from batchscope import Callback, ConfigError, DivergedError, TrainConfig, train
from batchscope.train import StepClock, lr_factor


class GradCapture(Callback):
    def __init__(self):
        self.grads = []

    def on_before_step(self, ctx):
        self.grads.append(torch.cat([p.grad.flatten().clone() for p in ctx.model.parameters()]))


def test_same_seed_same_history(tiny_task):
    cfg = TrainConfig(batch_size=32, steps=40, eval_every=10, seed=3)
    a, b = train(tiny_task, cfg), train(tiny_task, cfg)
    assert [(p.step, p.loss, p.eval_loss) for p in a.history] == [(p.step, p.loss, p.eval_loss) for p in b.history]
    c = train(tiny_task, TrainConfig(batch_size=32, steps=40, eval_every=10, seed=4))
    assert [p.loss for p in c.history] != [p.loss for p in a.history]


def test_accumulation_gives_the_gradient_of_the_whole_batch():
    from batchscope.tasks import mnist1d

    task = mnist1d.make_task()
    grads = {}
    for m in (64, 16):
        cap = GradCapture()
        train(task, TrainConfig(batch_size=64, micro_batch=m, steps=3, eval_every=3, eval_examples=64), [cap])
        grads[m] = cap.grads
    for g_full, g_acc in zip(grads[64], grads[16]):
        assert torch.allclose(g_full, g_acc, rtol=1e-4, atol=1e-6)
    assert grads[64][0].abs().sum() > 0


def test_until_target_stops_at_the_target(tiny_task):
    r = train(tiny_task, TrainConfig(batch_size=16, until_target=True, eval_every=5, lr=0.05))
    assert r.reached_target and r.stopped_because == "target reached"
    assert r.final.eval_loss <= tiny_task.target.value
    # steps to target: interpolated between the last evaluation above the target and the first at it
    p0, p1, v = r.history[-2], r.history[-1], tiny_task.target.value
    expected = p0.step + (v - p0.eval_loss) / (p1.eval_loss - p0.eval_loss) * (p1.step - p0.step)
    assert p0.step < r.target_step <= p1.step == r.steps and r.target_step == pytest.approx(expected)
    assert r.target_examples == pytest.approx(16 * r.target_step) and r.target_interpolated
    assert p0.seconds < r.target_seconds <= p1.seconds


def test_history_counts_examples_and_time(tiny_task):
    r = train(tiny_task, TrainConfig(batch_size=32, steps=20, eval_every=5))
    assert [p.step for p in r.history] == [0, 5, 10, 15, 20]
    assert [p.examples for p in r.history] == [0, 160, 320, 480, 640]
    secs = [p.seconds for p in r.history]
    assert secs == sorted(secs) and secs[-1] > 0


def test_warmup_and_schedules():
    assert [lr_factor(s, 100, 4, "constant") for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor(4, 104, 4, "cosine") == pytest.approx(1.0)
    assert lr_factor(54, 104, 4, "cosine") == pytest.approx(0.5)
    assert lr_factor(54, 104, 4, "linear") == pytest.approx(0.5)
    assert lr_factor(500, None, 4, "cosine") == 1.0  # no known end: no decay


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0, steps=1), "The 'batch_size' parameter must be a positive integer. Got 0 instead."),
    (dict(batch_size=10_000, steps=1), "batch size 10000 is larger than the training set"),
    (dict(batch_size=32, micro_batch=5, steps=1), "micro-batch 5 does not divide batch size 32"),
    (dict(batch_size=32), "say how long to train"),
    (dict(batch_size=32, steps=1, lr=-1.0), "The 'lr' parameter must be a positive finite number"),
    (dict(batch_size=32, steps=1, optimizer="lion"), "The 'optimizer' parameter must be one of sgd, adam, adamw"),
])
def test_bad_config_is_refused(tiny_task, kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        train(tiny_task, TrainConfig(**kwargs))


def test_nan_loss_raises_with_history(tiny_task):
    with pytest.raises(DivergedError,
                       match=r"the training loss (became|grew from) .* at step \d+ .*lower the learning rate") as e:
        train(tiny_task, TrainConfig(batch_size=32, steps=200, lr=1e6, eval_every=1))
    assert len(e.value.history) >= 1 and e.value.history[0].step == 0


def test_steps_to_target_do_not_depend_on_the_cap(tiny_task):
    """A generous cap (epochs=400) must not set the resolution of steps to target (issue 11, item 9):
    evaluating every total/25 steps would put the first evaluation at step 512, past the target."""
    cfg = dict(batch_size=16, lr=0.0005, epochs=400, until_target=True)
    capped = train(tiny_task, TrainConfig(**cfg))
    exact = train(tiny_task, TrainConfig(**cfg, eval_every=1))   # same seed, same trajectory
    assert capped.config["total_steps"] == 400 * (512 // 16) == 12_800
    assert 100 < exact.target_step < 300 and exact.steps == int(exact.target_step) + 1
    assert capped.target_step == pytest.approx(exact.target_step, rel=0.01) and capped.target_interpolated
    assert capped.steps <= 1.05 * exact.steps and len(capped.history) < 0.7 * len(exact.history)


def test_step_clock_times_every_step_and_adds_up_to_the_training_time(tiny_task):
    clock = StepClock()
    r = train(tiny_task, TrainConfig(batch_size=32, steps=40, eval_every=10), [clock])
    assert len(clock.times) == r.steps == 40
    assert all(t > 0 for t in clock.times)
    assert sum(clock.times) == pytest.approx(r.seconds, rel=1e-9)
