"""The framework-free parts of the integrations: which steps are measurable, when a new layout applies."""

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from batchscope.adapt import StepTimeModel
from batchscope.errors import ConfigError
from batchscope.integrations.batching import BatchPlan, measurable_layout, optimizer_kind, set_loader_batch_size
from batchscope.integrations.microbatches import leading_size, measurable
from batchscope.integrations.scalars import noise_scalars
from batchscope.integrations.state import pack_state, unpack_state
from batchscope.noise import NoiseEstimate, NoisePoint
from batchscope.plan.critical_batch import LIVE_FACTOR


def test_leading_size_of_tensors_tuples_and_dicts():
    x = torch.zeros(5, 3)
    assert leading_size(x) == 5
    assert leading_size((x, torch.zeros(5))) == 5
    assert leading_size({"input_ids": torch.zeros(7, 12, dtype=torch.long), "labels": torch.zeros(7)}) == 7
    assert leading_size({"meta": "text"}) is None and leading_size(torch.tensor(1.0)) is None


@pytest.mark.parametrize("sizes, expected, world, ok", [
    ([8, 8, 8, 8], 4, 1, True),
    ([8, 8, 8], 4, 1, False),        # Lightning's short last window: loss still divided by 4
    ([8, 8, 8, 2], 4, 1, False),     # the epoch's smaller last batch
    ([8, 8, 8], None, 1, True),      # a loop that divides by the count it ran
    ([8], 1, 1, False),              # one micro-batch on one process: no second batch size
    ([8], 1, 2, True),               # ... but one per rank under DDP is enough
    ([8, None], 2, 1, False),
])
def test_measurable(sizes, expected, world, ok):
    assert measurable(sizes, expected, world) is ok


def test_measurable_layout_keeps_two_micro_batches():
    assert measurable_layout(64, 1, 1) == (32, 2)
    assert measurable_layout(64, 3, 1) == (64, 3)
    assert measurable_layout(64, 1, 2) == (64, 1)


def plan(accumulation=2, micro=8, optimizer=None):
    optimizer = optimizer or torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    return BatchPlan.build(StepTimeModel(0.02, 2e-5), micro_batch=micro, accumulation=accumulation, world=1,
                           n_train=4096, optimizer=optimizer, every=2, min_samples=1)


def test_new_accumulation_waits_for_a_boundary_that_divides_the_batches_run():
    p = plan()
    p.pending = (8, 4)
    assert p.apply_if_aligned(6) == (8, 2)      # 6 batches run: a window of 4 would start mid-way
    assert p.apply_if_aligned(8) == (8, 4) and p.pending is None


def test_plan_grows_the_batch_and_scales_the_rate():
    p = plan()
    est = NoiseEstimate(b_simple=500.0, low=400.0, high=600.0, g2=1.0, trace=500.0, method="microbatch", n_samples=3)
    assert p.gain(16) == 1.0                         # no estimate yet: the starting rate
    p.after_step(1, 16, 0.1, est, consumed=2)
    layout = p.after_step(2, 16, 0.1, est, consumed=4)   # decision due at step 2
    assert layout[0] * layout[1] > 16 and p.controller.decisions[-1].changed
    b = layout[0] * layout[1]
    bn = LIVE_FACTOR * 500                           # the B_noise the controller plans with
    assert p.gain(b) == pytest.approx((1 + bn / 16) / (1 + bn / b))     # AdaScale gain
    assert [s.examples for s in p.steps] == [16, 16]


def test_adam_type_optimizers_get_the_square_root_rule():
    adam = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1e-3)
    assert optimizer_kind(adam) == "adam"
    assert plan(optimizer=adam).gain(64) == pytest.approx(2.0)


def test_plan_needs_two_micro_batches_to_start():
    with pytest.raises(ConfigError, match="start with an accumulation of at least 2"):
        plan(accumulation=1)


def test_plan_state_round_trip():
    p = plan()
    p.after_step(1, 16, 0.1, None, consumed=2)
    q = plan()
    q.load_state_dict(p.state_dict())
    assert repr(q.state_dict()) == repr(p.state_dict())   # repr: the nan before any estimate equals itself


def test_loader_batch_size_changes_between_batches():
    loader = DataLoader(TensorDataset(torch.arange(20.0)), batch_size=4)
    it = iter(loader)
    assert len(next(it)[0]) == 4
    set_loader_batch_size(loader, 8)
    assert len(next(it)[0]) == 8


def test_loader_without_a_batch_sampler_is_refused():
    loader = DataLoader(TensorDataset(torch.arange(20.0)), batch_size=None)
    with pytest.raises(ConfigError, match="cannot change the micro-batch"):
        set_loader_batch_size(loader, 8)


def test_noise_scalars_leave_out_the_unbounded_end():
    p = NoisePoint(step=3, loss=1.0, g2=1.0, trace=5.0, b_simple=5.0, low=2.0, high=math.inf, n_samples=3)
    assert noise_scalars(p) == {"noise/b_simple": 5.0, "noise/b_simple_low": 2.0}


def test_state_packing_keeps_json_readable_and_tensors_exact():
    plain = {"a": 1.5, "b": [1, 2]}
    assert pack_state(plain) == {"json": plain} and unpack_state(pack_state(plain)) == plain
    t = {"sums": torch.tensor([1.0, 2.0], dtype=torch.float64)}
    assert torch.equal(unpack_state(pack_state(t))["sums"], t["sums"])
