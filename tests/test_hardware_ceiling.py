import math

import pytest

from batchscope.hardware import MemoryBudgetError, ProbeResult, bisect_ceiling, find_ceiling

MiB = 2**20
PAGE = 4096


def linear_probe(m0, m1, page=PAGE):
    """A fake device: memory(B) = m0 + m1*B rounded up to pages; counts its calls."""
    def probe(b):
        probe.calls.append(b)
        return ProbeResult(b, int(math.ceil((m0 + m1 * b) / page) * page))
    probe.calls = []
    return probe


def true_ceiling(m0, m1, budget, page=PAGE):
    return max(b for b in range(1, 200_000) if math.ceil((m0 + m1 * b) / page) * page <= budget)


@pytest.mark.parametrize("m0, m1, budget", [
    (300 * 2**10, 4230, 8 * MiB),       # mnist1d-like
    (40 * MiB, 150_000, 2 * 2**30),     # a convnet on a GPU
    (1 * MiB, 1000, 3 * MiB),
])
def test_prediction_lands_at_the_true_ceiling_in_few_steps(m0, m1, budget):
    probe = linear_probe(m0, m1)
    c = find_ceiling(probe, budget, limit=10**6)
    truth = true_ceiling(m0, m1, budget)
    assert truth * 0.97 <= c.max_batch <= truth
    assert c.limited_by == "memory"
    assert c.over_budget <= 2
    assert c.steps <= 8
    assert c.fit.slope == pytest.approx(m1, rel=0.01)
    exhaustive = bisect_ceiling(linear_probe(m0, m1), budget, limit=10**6)
    assert exhaustive.max_batch == truth
    assert exhaustive.steps > 2 * c.steps


def test_a_non_linear_allocator_still_lands_within_five_percent():
    # A caching allocator hands out 2 MiB blocks: memory grows in steps, not smoothly.
    def probe(b):
        raw = 50 * MiB + 30_000 * b + 0.5 * b * b
        return ProbeResult(b, int(math.ceil(raw / (2 * MiB)) * 2 * MiB))
    budget = 1 * 2**30
    truth = max(b for b in range(1, 100_000) if probe(b).peak_bytes <= budget)
    c = find_ceiling(probe, budget, limit=10**6)
    assert truth * 0.95 <= c.max_batch <= truth
    assert c.over_budget <= 2


def test_out_of_memory_probes_count_as_over_budget():
    # The device runs out before the budget says so: only OOM tells where the real ceiling is.
    def probe(b):
        return ProbeResult(b, None, oom=True) if b > 700 else ProbeResult(b, 1 * MiB + 10_000 * b)
    # Memory says nothing about where it happens, so precision is traded for at most two failures.
    c = find_ceiling(probe, budget=64 * MiB, limit=10**5)
    assert 700 / 2 <= c.max_batch <= 700
    assert 1 <= c.over_budget <= 2
    assert all(p.oom for p in c.probes if p.batch > 700)


def test_the_data_set_or_the_cap_can_bind_first():
    c = find_ceiling(linear_probe(MiB, 1000), 1 * 2**30, limit=4000)
    assert (c.max_batch, c.limited_by, c.over_budget) == (4000, "data set", 0)
    c = find_ceiling(linear_probe(MiB, 1000), 1 * 2**30, limit=300, limit_reason="max_batch")
    assert (c.max_batch, c.limited_by) == (300, "max_batch")


def test_multiple_of_eight():
    c = find_ceiling(linear_probe(MiB, 10_000), 10 * MiB, limit=10**5, multiple=8)
    truth = true_ceiling(MiB, 10_000, 10 * MiB)
    assert c.max_batch % 8 == 0
    assert truth * 0.97 - 8 < c.max_batch <= truth


def test_model_that_does_not_fit_at_batch_one():
    probe = linear_probe(5 * MiB, 1000)
    with pytest.raises(MemoryBudgetError, match=r"does not fit the memory budget even at batch size 1: one "
                       r"training step needs 5.00 MiB, the budget is 4.00 MiB; raise the budget"):
        find_ceiling(probe, 4 * MiB, limit=1000)
    assert probe.calls == [2, 1]


def test_a_probe_must_answer_for_the_batch_asked():
    with pytest.raises(TypeError, match=r"a probe must return ProbeResult\(batch=2, ...\)"):
        find_ceiling(lambda b: ProbeResult(b + 1, 10), 100, limit=10)
