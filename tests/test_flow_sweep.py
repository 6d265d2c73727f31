import pytest

from batchscope import ConfigError
from batchscope.flow import lot_sizes, capacity, closed_form, make_line, sweep_process, sweep_transfer
from batchscope.flow.sweep import SweepResult


def test_batch_grid():
    assert lot_sizes(12) == [1, 2, 3, 4, 6, 8, 12]
    assert lot_sizes(7) == [1, 2, 4, 7]
    grid = lot_sizes(5040, max_points=10)
    assert len(grid) <= 10 and grid[0] == 1 and grid[-1] == 5040


def test_transfer_sweep_matches_closed_forms_and_smaller_batches_flow_faster():
    line = make_line([1.0, 3.0, 2.0], 24, setups=[4.0, 2.0, 6.0])
    sweep = sweep_transfer(line)
    assert sweep.values == (1, 2, 3, 4, 6, 8, 12, 16, 24)      # divisors of 24 and powers of two
    for t, figs in zip(sweep.values, sweep.figures):
        closed = closed_form(line.with_(transfer_batch=t))
        if t == 16:                                              # ragged (16 + 8): simulation only
            assert closed is None
            continue
        for name in ("lead_time", "wip_average", "value_added_fraction"):
            assert figs[name].mean == pytest.approx(closed.figures[name], rel=1e-12)
    lead = sweep.series("lead_time")
    assert lead == sorted(lead) and lead[0] < lead[-1]
    va = sweep.series("value_added_fraction")
    assert va == sorted(va, reverse=True)
    assert SweepResult.from_dict(sweep.to_dict()) == sweep


def test_process_sweep_capacity_and_lead_time():
    line = make_line([1.0, 2.0], 16, setups=[8.0, 4.0], transfer_batch=2)
    sweep = sweep_process(line, [1, 2, 4, 8, 16])
    for q, caps in zip(sweep.values, sweep.capacities):
        assert caps == (capacity(8.0, 1.0, q), capacity(4.0, 2.0, q))
    # set-up matters less as the batch grows: capacity rises toward 1/p
    first = [c[0] for c in sweep.capacities]
    assert first == sorted(first) and first[-1] < 1.0
    # one set-up per batch per station: with process batch 1 the lead time is at least 16 set-ups of 8
    assert sweep.figures[0]["lead_time"].mean >= 16 * 8


def test_sweep_rejects_bad_values():
    line = make_line([1.0], 8, process_batch=4)
    with pytest.raises(ConfigError,
                       match=r"The 'transfer_batch' values must be integers from 1 to the process batch \(4\)\. "
                             r"Got \[5\]"):
        sweep_transfer(line, [2, 5])
