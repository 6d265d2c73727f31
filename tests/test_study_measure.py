import math

import pytest
import torch
from torch import nn

from batchscope import TrainConfig, train
from batchscope.study.measure import (CurveRecorder, GradNormProbe, crossing_step, grad_norm_stats, gradient_norms,
                                      layer_cosines, layer_distances, layer_of, snapshot)

from .study_tasks import blobs


def tiny_model() -> nn.Module:
    m = nn.Sequential(nn.Linear(2, 1), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[3.0, 0.0]]))
        m[0].bias.copy_(torch.tensor([4.0]))
        m[1].weight.copy_(torch.tensor([[1.0]]))
    return m


def test_distance_and_cosine_by_hand():
    m = tiny_model()
    w0 = snapshot(m)
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[0.0, 4.0]]))   # layer 0 goes from (3, 0, 4) to (0, 4, 4)
        m[1].weight.copy_(torch.tensor([[-2.0]]))        # layer 1 goes from 1 to -2
    w = snapshot(m)
    d = layer_distances(w, w0)
    # layer 0: |(0,4,4) - (3,0,4)| = |(-3, 4, 0)| = 5; layer 1: |-2 - 1| = 3; total sqrt(25 + 9)
    assert d == pytest.approx({"0": 5.0, "1": 3.0, "total": math.sqrt(34)})
    c = layer_cosines(w, w0)
    # layer 0: (0*3 + 4*0 + 4*4) / (sqrt(32) * 5); layer 1: -2 / 2 = -1; all: (16 - 2) / (sqrt(36) * sqrt(26))
    assert c == pytest.approx({"0": 16 / (math.sqrt(32) * 5), "1": -1.0, "total": 14 / (6 * math.sqrt(26))})
    assert layer_distances(w0, w0)["total"] == 0.0
    assert layer_cosines(w0, w0) == pytest.approx({"0": 1.0, "1": 1.0, "total": 1.0})


def test_layer_names():
    assert layer_of("0.weight") == "0" and layer_of("encoder.attn.bias") == "encoder.attn" and layer_of("w") == "w"


def test_crossing_step_interpolates_between_evaluations():
    pts = [(0, 0.1), (10, 0.5), (20, 0.9), (30, 0.95)]
    assert crossing_step(pts, 0.8, True) == pytest.approx(17.5)
    assert crossing_step(pts, 0.5, True) == 10.0
    assert crossing_step(pts, 0.99, True) is None
    assert crossing_step([(0, 2.0), (4, 1.0)], 1.5, False) == pytest.approx(2.0)   # a loss, from above
    assert crossing_step([(0, 0.9)], 0.8, True) == 0.0


def test_grad_norm_stats():
    st = grad_norm_stats([1.0, 2.0, 3.0, 4.0], step=7, batch_size=16)
    assert (st.n, st.step, st.batch_size, st.mean, st.median) == (4, 7, 16, 2.5, 2.5)
    assert st.std == pytest.approx(math.sqrt(5 / 3))


def test_gradient_norms_match_a_direct_computation():
    task = blobs()
    torch.manual_seed(0)
    model = task.make_model()
    norms = gradient_norms(model, task, 32, 5, seed=3, device=torch.device("cpu"))
    from batchscope.data import batch_indices
    stream = batch_indices(task.n_train, 32, torch.Generator().manual_seed(3))
    x, y = task.train_data.tensors
    for n in norms:
        idx = next(stream)
        model.zero_grad()
        task.loss_fn(model(x[idx]), y[idx]).backward()
        direct = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))
        assert n == pytest.approx(direct, rel=1e-5)
    # E|g_b|^2 = |G|^2 + tr(Sigma)/b: small batches carry the noise on top of the full gradient
    full = gradient_norms(model, task, task.n_train, 1, seed=0, device=torch.device("cpu"))[0]
    small = gradient_norms(model, task, 4, 200, seed=0, device=torch.device("cpu"))
    assert sum(n * n for n in small) / len(small) > full**2


def test_probes_do_not_change_the_run_and_record_what_they_promise():
    task = blobs()
    cfg = TrainConfig(batch_size=32, steps=40, eval_every=10, seed=1)
    plain = train(task, cfg)
    rec, probe = CurveRecorder(train_eval_examples=100), GradNormProbe(20, early_step=4)
    probed = train(task, cfg, [rec, probe])
    assert [p.loss for p in probed.history] == [p.loss for p in plain.history]
    assert [c["step"] for c in rec.curve] == [0, 10, 20, 30, 40]
    assert rec.curve[0]["distance"] == 0.0 and rec.curve[-1]["distance"] > 0
    assert len(rec.step_losses) == 40
    assert set(probe.stats) == {"early", "late"} and probe.stats["early"].step == 4 and probe.stats["late"].step == 40
    assert probe.stats["late"].n == 20
    assert rec.final["gap"] == pytest.approx(rec.final["train_metric"] - rec.final["val_metric"])
    assert rec.distance["total"] == pytest.approx(rec.curve[-1]["distance"])
