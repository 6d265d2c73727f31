"""The branch check and the stability bound: the decisions on hand-made branches (winner, tie, a spike
ruled out and the next lower rate checked), then find with the check on a tiny task, and a least-squares
task whose Hessian is known exactly and whose rule rate lies far above 2/lambda_max."""

import copy
import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from batchscope import Target, Task, TrainConfig, train
from batchscope.errors import DivergedError
from batchscope.noise.hessian import STABILITY_FRACTION
from batchscope.plan import branch_check as bc
from batchscope.plan.branch_check import Figures, Setting
from batchscope.plan.find import find, fit_noise, measure, recommend_for
from batchscope.plan.verify import check
from tests.helpers import blobs_task, fake_profile


def fig(label, batch, lr, losses, step_seconds=1.0, start=1.0, diverged=""):
    return Figures(label, batch, lr, step_seconds, start, list(losses), examples=batch * len(losses),
                   diverged=diverged)


def zigzag(level, n, amp=0.01):
    """n losses at ``level`` alternating +-amp: successive differences +-2 amp, per-step noise amp sqrt(2)."""
    return [level + (amp if i % 2 else -amp) for i in range(n)]


# ---- pure rules ----------------------------------------------------------------------------------------

def test_budget_is_a_share_of_the_predicted_run_with_a_floor_in_whole_steps_of_the_largest_batch():
    assert bc.branch_examples(1_000_000, 256) == 8192            # 0.8% = 8,000 -> 32 whole steps of 256
    assert bc.branch_examples(10_000, 256) == 8 * 256            # 80 examples: the floor of 8 steps of 256
    assert bc.branch_examples(10_000, 256, share=0.5, min_steps=1, budget=1.0) == 5120   # 5,000 -> 20 x 256


def test_the_measuring_run_and_the_branches_together_stay_within_the_budget_unless_the_floor_says_no():
    # 1M predicted: budget 10% = 100,000; the measuring run took 80,000: 20,000 left for 5 branches = 4,000
    # each (below the share's 8,000), in whole steps of 256: 16 steps = 4,096
    assert bc.branch_examples(1_000_000, 256, measured_examples=80_000, branches=5) == 4096
    # the measuring run alone spent the budget: the floor of 8 steps of the largest batch
    assert bc.branch_examples(1_000_000, 256, measured_examples=150_000, branches=5) == 8 * 256
    # room to spare: the share decides
    assert bc.branch_examples(1_000_000, 256, measured_examples=10_000, branches=5) == 8192
    b = bc.budget_figures(1_000_000, 80_000, 4096, 5, 256)
    assert b["measuring_share"] == 0.08 and b["branches_share"] == pytest.approx(0.02048)
    assert not b["floor"] and not b["within"]                     # 80,000 + 20,480 > 100,000 by the rounding
    b = bc.budget_figures(1_000_000, 150_000, 2048, 5, 256)
    assert b["floor"] and not b["within"]


def test_the_stability_cap_is_a_share_of_the_bound_and_never_below_the_reference_rate():
    assert bc.SAFETY == STABILITY_FRACTION == 0.9
    assert bc.stability_cap(1.0, 0.1) == pytest.approx(0.9)
    assert bc.stability_cap(0.05, 0.08) == 0.08                  # the measuring run trained at 0.08
    assert bc.stability_cap(math.inf, 0.1) == math.inf           # Adam: no bound


def test_candidates_are_capped_deduplicated_and_kept_inside_the_allowed_batches():
    def rule(b):
        return 0.1 * b / 64

    got, skipped = bc.candidate_settings(64, 0.1, rule, [16, 32, 64], cap=0.15)
    assert got == [Setting("predicted", 64, 0.1), Setting("B/2", 32, 0.05), Setting("lr/2", 64, 0.05),
                   Setting("2 lr", 64, 0.15)]
    assert skipped == ["2B: batch 128 is outside the allowed batches"]
    got, skipped = bc.candidate_settings(64, 0.15, rule, [32, 64, 128], cap=0.15)
    assert [s.label for s in got] == ["predicted", "B/2", "2B", "lr/2"] and got[2].lr == 0.15
    assert skipped == ["2 lr: the stability cap 0.15 makes it the same setting as another branch"]


def test_loss_at_a_common_time_is_the_mean_of_the_last_quarter_of_the_steps_made_by_then():
    f = fig("x", 8, 0.1, [float(i) for i in range(16, 0, -1)], step_seconds=0.5)   # 16, 15, ..., 1
    loss, se, n = bc.loss_at(f, 4.0)                               # 8 steps by then; the last 2: 10, 9
    assert (loss, n) == (9.5, 8)
    assert se == pytest.approx(0.0)                                # a straight line: no per-step noise
    # 17 zigzag losses: 16 differences of +-0.02 (sample variance 16/15 x 0.02^2), noise / sqrt(4 steps)
    loss, se, n = bc.loss_at(fig("z", 8, 0.1, zigzag(1.0, 16) + [0.99]), 17.0)
    assert (loss, n) == (pytest.approx(1.0), 17) and se == pytest.approx(math.sqrt(16 / 15 * 0.02 ** 2 / 2) / 2)


def test_the_larger_batch_that_reaches_a_clearly_lower_loss_in_the_same_time_wins():
    # the prediction at B=64 (1 s a step); 2B at B=128 (1.25 s a step) makes half the steps for the same
    # examples: compared at 10 s (its end), the prediction has made 10 steps and is clearly higher
    pred = fig("predicted", 64, 0.1, zigzag(0.9, 16))
    double = fig("2B", 128, 0.14, zigzag(0.6, 8), step_seconds=1.25)
    v = bc.decide([pred, double], predicted_batch=64)
    assert v.winner is double and v.separated and v.tied == [] and v.common_seconds == 10.0
    assert pred.compared_steps == 10 and (pred.status, double.status) == ("behind", "winner")
    assert v.why.startswith("2B (B=128, lr 0.14) reached loss 0.6 against 0.9 for predicted")


def test_a_smaller_batch_or_a_higher_rate_leading_a_short_branch_is_reported_and_not_taken():
    # B/2 at B=32 (0.6 s a step) makes 2x the steps of the same examples and leads clearly; so does 2 lr
    pred = fig("predicted", 64, 0.1, zigzag(0.9, 16))
    half = fig("B/2", 32, 0.07, zigzag(0.6, 32), step_seconds=0.6)
    high = fig("2 lr", 64, 0.2, zigzag(0.7, 16))
    v = bc.decide([pred, half, high], predicted_batch=64)
    assert v.winner is pred and not v.separated
    assert (pred.status, half.status, high.status) == ("winner", "ahead, not taken", "ahead, not taken")
    assert f"B/2 reached a lower loss, not taken: {bc.NOT_TAKEN['B/2']}" in v.why
    assert v.why.endswith(f"; 2 lr reached a lower loss, not taken: {bc.NOT_TAKEN['2 lr']}")
    # with the prediction ruled out, the highest surviving rate at its batch stands in, and B/2 is still behind it
    climb = [1.0, 1.2, 1.5, 1.8, 2.0, 2.2, 2.4, 2.6]
    v = bc.decide([fig("predicted", 64, 0.1, climb), half, fig("lr/2", 64, 0.05, zigzag(0.8, 16))], 64)
    assert v.winner.label == "lr/2" and v.default is v.winner and half.status == "ahead, not taken"
    # with nothing left at the predicted batch, the largest surviving batch stands in
    v = bc.decide([fig("predicted", 64, 0.1, climb), half], 64)
    assert v.winner is half and half.status == "winner"


def test_branches_within_two_standard_errors_are_a_tie_and_the_prediction_stands():
    pred = fig("predicted", 64, 0.1, zigzag(0.50, 16, amp=0.02))
    higher = fig("2 lr", 64, 0.2, zigzag(0.49, 16, amp=0.02))       # 0.01 lower; 2 se of the difference ~0.04
    v = bc.decide([pred, higher], predicted_batch=64)
    assert v.winner is pred and not v.separated and v.tied == ["2 lr"]
    assert (pred.status, higher.status) == ("kept", "tie")
    assert "kept: the branches cannot separate it from 2 lr" in v.why


def test_a_lower_rate_at_the_same_batch_is_not_taken_for_its_short_horizon_lead():
    pred = fig("predicted", 64, 0.1, zigzag(0.9, 16))
    lower = fig("lr/2", 64, 0.05, zigzag(0.6, 16))                  # clearly lower, as short branches favour
    v = bc.decide([pred, lower], predicted_batch=64)
    assert v.winner is pred and not v.separated and v.tied == []
    assert (pred.status, lower.status) == ("winner", "ahead, not taken")
    assert v.why == ("predicted (B=64, lr 0.1) confirmed: its loss is more than 2 standard errors below every "
                     f"rival's; lr/2 reached a lower loss, not taken: {bc.NOT_TAKEN['lr/2']}")


def test_a_spiking_branch_is_ruled_out_and_the_next_lower_rate_is_checked():
    climb = [1.0, 1.2, 1.5, 1.8, 2.0, 2.2, 2.4, 2.6]                # smoothed over 2 steps: 2.5 > 1.5 x 1.0
    spiked = fig("2B", 128, 0.4, climb)
    assert bc.spike(spiked).startswith("the smoothed loss rose to 2.5, above 1.5x its start 1")
    assert bc.spike(fig("nan", 128, 0.4, [1.0, math.nan])) == "the loss became nan"
    assert bc.spike(fig("ok", 128, 0.4, [1.0, 1.4, 0.9, 0.8])) == ""   # one step up is not a smoothed rise
    retries = {}
    assert bc.next_checks([spiked, fig("predicted", 64, 0.2, zigzag(0.8, 16))], retries) == \
        [Setting("retry1 B=128", 128, 0.2)]
    # once the lower rate was checked (and spiked too), half of it; after MAX_RETRIES, nothing more
    retries[128] = 1
    again = fig("retry1 B=128", 128, 0.2, climb)
    assert bc.next_checks([spiked, again], retries) == [Setting("retry2 B=128", 128, 0.1)]
    retries[128] = bc.MAX_RETRIES
    assert bc.next_checks([spiked, again], retries) == []
    # a batch with one surviving rate needs no retry: the prediction spiked, lr/2 at the same batch stands in
    pred = fig("predicted", 64, 0.2, climb)
    half_rate = fig("lr/2", 64, 0.1, zigzag(0.7, 16))
    assert bc.next_checks([pred, half_rate], {}) == []
    v = bc.decide([pred, half_rate], predicted_batch=64)
    assert v.winner is half_rate and v.default is half_rate and pred.status.startswith("ruled out: the smoothed")
    assert bc.decide([pred], predicted_batch=64) is None            # nothing survived


def test_the_schedule_is_capped_and_ends_at_the_checked_recommendation():
    schedule = [{"from_loss": 2.0, "batch_size": 32, "lr": 0.1}, {"from_loss": 1.5, "batch_size": 64, "lr": 0.3},
                {"from_loss": 1.2, "batch_size": 128, "lr": 0.5, "micro_batch": 128, "accumulation": 1}]
    got = bc.final_schedule(schedule, 64, 32, 2, 0.2, cap=0.25)
    assert got == [{"from_loss": 2.0, "batch_size": 32, "lr": 0.1},
                   {"from_loss": 1.2, "batch_size": 64, "lr": 0.2, "micro_batch": 32, "accumulation": 2}]


# ---- find with the check ---------------------------------------------------------------------------------

def _state(run):
    return {"params": [p.detach().clone() for p in run.ctx.model.parameters()],
            "opt": copy.deepcopy(run.ctx.optimizer.state_dict()), "stream": copy.deepcopy(run.policy.state_dict()),
            "counters": (run.ctx.step, run.ctx.examples, run.ctx.seconds, run.smoothed), "rng": torch.get_rng_state()}


def _same(a, b):
    assert all(torch.equal(p, q) for p, q in zip(a["params"], b["params"]))
    sa, sb = a["opt"]["state"], b["opt"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"]) for k in sa)
    assert torch.equal(a["stream"]["stream"]["perm"], b["stream"]["stream"]["perm"])
    assert a["stream"]["stream"]["k"] == b["stream"]["stream"]["k"]
    assert a["counters"] == b["counters"] and torch.equal(a["rng"], b["rng"])


def test_the_check_lists_every_branch_and_leaves_the_measuring_run_as_it_was():
    task = Task(**{**blobs_task().__dict__, "momentum": 0.9})
    profile = fake_profile(task, alpha=2e-3, beta=2e-5)
    m = measure(task, 32, task.lr, 0.05, device="cpu", seed=0, amp=False)
    result = recommend_for(task, profile, m, fit_noise(m, 6, 0), objective="fastest", measure_fraction=0.05,
                           max_batch=None, devices=1, seconds={})
    predicted = (result.recommendation.batch_size, result.recommendation.lr)
    predicted_examples = result.recommendation.predicted["examples"]
    before = _state(m.live)
    check(result, m, task, profile, seed=0)
    _same(before, _state(m.live))
    v = result.recommendation.verification
    b = predicted[0]
    assert [(x["label"], x["batch"]) for x in v["branches"]][:5] == \
        [("predicted", b), ("B/2", b // 2), ("2B", 2 * b), ("lr/2", b), ("2 lr", b)]
    assert v["branches"][0]["lr"] == pytest.approx(predicted[1])
    for x in v["branches"]:
        assert x["examples"] == v["examples_per_branch"] == x["steps"] * x["batch"]
        assert {"start_loss", "end_loss", "seconds", "modelled_seconds", "eval_loss", "status"} <= set(x)
        assert (x["status"] in ("winner", "kept", "tie", "behind", "ahead, not taken")
                or x["status"].startswith("ruled"))
    assert sum(x["status"] in ("winner", "kept") for x in v["branches"]) == 1
    assert v["cost"]["examples"] == sum(x["examples"] for x in v["branches"])
    assert v["cost"]["share_of_measuring"]["examples"] == pytest.approx(v["cost"]["examples"] / m.run.examples)
    rec = result.recommendation
    # the per-branch examples are the budget's: what 10% of the predicted run leaves after the measuring run
    want = bc.branch_examples(predicted_examples, max(x["batch"] for x in v["branches"][:5]), m.run.examples, 5)
    assert v["examples_per_branch"] == want and v["budget"]["measured_examples"] == m.run.examples
    assert v["budget"]["branches"] == len(v["branches"])
    assert (rec.batch_size, rec.lr) == (v["winner"]["batch_size"], v["winner"]["lr"])
    assert rec.schedule[-1]["batch_size"] == rec.batch_size and rec.schedule[-1]["lr"] == rec.lr
    assert rec.batch_size == rec.micro_batch * rec.accumulation
    s = rec.evidence["stability"]
    assert s["optimizer"] == "SGD" and s["lambda_max"] > 0 and s["bound"] == pytest.approx(2 * 1.9 / s["lambda_max"])
    assert all(x["lr"] <= s["cap"] for x in v["branches"])


def test_find_writes_the_check_in_its_json_and_skips_the_branches_when_asked():
    task = blobs_task()
    profile = fake_profile(task, alpha=2e-3, beta=2e-5)
    doc = json.loads(json.dumps(find(task, profile=profile).to_dict()))
    assert doc["verification"]["enabled"] and len(doc["verification"]["branches"]) >= 4
    assert doc["verification"]["verdict"] and "stability" in doc["evidence"]
    off = find(task, profile=profile, verify=False).recommendation
    assert off.verification == {"enabled": False, "predicted": off.verification["predicted"]}
    assert off.batch_size == off.verification["predicted"]["batch"]
    # the check starts from what --no-verify gives: the measuring run, the fit and the bound come first
    assert off.verification["predicted"] == pytest.approx(doc["verification"]["predicted"])


def test_adam_has_no_bound_and_says_the_branches_guard_it():
    task = Task(**{**blobs_task().__dict__, "optimizer": "adam", "lr": 3e-3})
    s = find(task, profile=fake_profile(task), verify=False).recommendation.evidence["stability"]
    assert s["bound"] == math.inf and s["capped"] is False and "the branch check guards it" in s["how"]


def least_squares(scale=2.0, n=512, d=5):
    """Least squares on n Gaussian inputs of spread ``scale``: the mean squared error's Hessian is
    2 X^T X / n exactly, the same at every weight."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g) * scale
    y = x @ torch.randn(d, 1, generator=g) + 0.5 * torch.randn(n, 1, generator=g)
    task = Task(name="lsq", make_model=lambda: nn.Linear(d, 1, bias=False), train_data=TensorDataset(x, y),
                val_data=TensorDataset(x[:128], y[:128]), loss_fn=nn.functional.mse_loss,
                target=Target("loss", 0.375, "val"), optimizer="sgd", lr=0.05, momentum=0.0)
    return task, float(torch.linalg.eigvalsh(2 * x.T @ x / n).max())


def test_a_rule_rate_far_above_two_over_lambda_max_is_capped_below_the_bound():
    task, lam = least_squares()
    r = find(task, profile=fake_profile(task, alpha=1e-3, beta=1e-6)).recommendation
    s, v = r.evidence["stability"], r.verification
    # the 512 training examples are the whole set: lambda_max is the exact one (power iteration from below)
    assert s["examples"] == 512 and s["converged"] and s["lambda_max"] == pytest.approx(lam, rel=5e-3)
    assert s["bound"] == pytest.approx(2 / lam, rel=5e-3) and s["cap"] == pytest.approx(0.9 * 2 / lam, rel=5e-3)
    uncapped = v["predicted"]["uncapped_lr"]
    assert uncapped > 1.5 * 2 / lam                                 # the rule alone asks for 1.5x the bound
    assert s["capped"] and r.lr == pytest.approx(s["cap"]) and all(x["lr"] <= s["cap"] for x in v["branches"])
    assert all(st["lr"] <= s["cap"] for st in r.schedule)
    # what the cap prevents: full-batch steps at the rule's rate diverge on this quadratic, at the cap they converge
    with pytest.raises(DivergedError):
        train(task, TrainConfig(batch_size=512, lr=uncapped, steps=200, seed=0))
    ok = train(task, TrainConfig(batch_size=512, lr=r.lr, steps=200, seed=0))
    assert ok.final.loss < 0.3


def test_a_retry_ahead_of_the_default_is_not_taken_for_the_reason_of_its_batch():
    pred = fig("predicted", 64, 0.1, zigzag(0.9, 16))
    smaller = fig("retry1 B=32", 32, 0.03, zigzag(0.6, 32), step_seconds=0.6)
    lower = fig("retry1 B=64", 64, 0.025, zigzag(0.7, 16))
    v = bc.decide([pred, smaller, lower], predicted_batch=64)
    assert v.winner is pred
    assert f"retry1 B=32 reached a lower loss, not taken: {bc.NOT_TAKEN['B/2']}" in v.why
    assert f"retry1 B=64 reached a lower loss, not taken: {bc.NOT_TAKEN['lr/2']}" in v.why


def test_the_cost_line_reads_a_result_saved_before_the_budget():
    from batchscope.commands.find import budget_words

    cost = {"share_of_measuring": {"examples": 3.0}}
    assert budget_words(None, cost) == "3x the measuring run's examples"
    b = bc.budget_figures(1_000_000, 150_000, 2048, 5, 256)
    assert budget_words(b, cost) == ("measuring + branches 15.0% + 1.0% of the predicted run's examples, budget "
                                     "10%, over it: the branches are at their floor")
    assert budget_words({**b, "extrapolated": True}, cost).endswith("the predicted run is extrapolated")
