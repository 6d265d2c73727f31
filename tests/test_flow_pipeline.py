import pytest

from batchscope import ConfigError
from batchscope.flow import PipelineResult, bubble_formula, pipeline_line, simulate_pipeline


def test_equal_stages_give_gpipe_s_bubble():
    # (P - 1) / (M + P - 1) for P equal stages and M micro-batches
    assert bubble_formula([1.0] * 4, 8) == pytest.approx(3 / 11)
    assert bubble_formula([2.5], 5) == 0.0
    assert bubble_formula([1.0] * 8, 1) == pytest.approx(7 / 8)
    assert bubble_formula([1.0] * 6, 10) == pytest.approx(5 / 15)


@pytest.mark.parametrize("p, m", [(1, 4), (2, 1), (2, 7), (4, 8), (4, 32), (8, 3)])
def test_simulation_reproduces_the_bubble(p, m):
    r = simulate_pipeline(p, m)
    assert r.bubble_fraction == pytest.approx((p - 1) / (m + p - 1), rel=1e-12, abs=1e-15)
    assert r.agrees and r.equal_stages
    # one step = (M + P - 1) slots of forward (1) + backward (2)
    assert r.step_time == (m + p - 1) * 3
    assert r.device_busy == [m * 3.0] * p


def test_bubble_does_not_depend_on_backward_ratio_or_micro_batch_size():
    a = simulate_pipeline(3, 5, backward_ratio=1.0)
    b = simulate_pipeline(3, 5, backward_ratio=3.0, micro_batch_size=4)
    assert a.bubble_fraction == pytest.approx(b.bubble_fraction) == pytest.approx(2 / 7)
    assert b.step_time == pytest.approx(7 * 4 * 4.0)


def test_unequal_stages_follow_the_general_formula():
    # stages (1, 2, 1), M = 4, b = 2f: step = 3 * (4 + 3 * 2) = 30; busy = 3 * 4 * f_i -> 12, 24, 12
    r = simulate_pipeline(3, 4, stage_times=[1.0, 2.0, 1.0])
    assert r.step_time == 30.0
    assert r.device_busy == [12.0, 24.0, 12.0]
    assert r.bubble_fraction == pytest.approx(1 - 48 / 90) == pytest.approx(r.bubble_fraction_formula)
    assert not r.equal_stages and r.agrees


def test_pipeline_as_a_line_and_round_trip():
    line = pipeline_line([1.0, 1.0], 3, micro_batch_size=2)
    assert [s.name for s in line.stations] == ["F1", "F2", "B2", "B1"]
    assert line.order_quantity == 6 and line.transfer_batch == 2
    assert line.transfer_batch_at(1) == 6                                  # the flush before the backward pass
    r = simulate_pipeline(2, 3)
    assert PipelineResult.from_dict(r.to_dict()).bubble_fraction == r.bubble_fraction


def test_pipeline_errors():
    with pytest.raises(ConfigError, match=r"Give one forward time per stage: 3 stage\(s\), got 2"):
        simulate_pipeline(3, 4, stage_times=[1.0, 1.0])
    with pytest.raises(ConfigError, match=r"The 'micro_batches' parameter must be a positive integer\. Got 0"):
        simulate_pipeline(2, 0)
    with pytest.raises(ConfigError, match=r"The 'stages' parameter must be a positive integer\. Got 0"):
        simulate_pipeline(0, 4)
