import pytest

from batchscope import ConfigError
from batchscope.study.plan import RunSpec, StudyPlan

from .study_tasks import blobs


def test_grid_is_the_full_product_with_resolved_rates():
    task = blobs()
    plan = StudyPlan(task="blobs", batch_sizes=(64, 16, 32), epochs=2, optimizers=("sgd", "adam"),
                     lrs={"sgd": 0.1}, lr_rules=("none", "linear", "sqrt"), lr_grid=(1, 2),
                     warmup_epochs=(0, 1), seeds=(0, 1))
    runs = plan.expand(task)
    assert len(runs) == 3 * 2 * 3 * 2 * 2 * 2
    assert len({r.key for r in runs}) == len(runs)
    assert plan.batch_sizes == (16, 32, 64) and plan.b_ref == 16
    lr = {(r.optimizer, r.lr_rule, r.lr_multiplier, r.batch_size): r.lr for r in runs}
    assert lr["sgd", "none", 1.0, 64] == pytest.approx(0.1)
    assert lr["sgd", "linear", 1.0, 64] == pytest.approx(0.4)          # 0.1 * 64/16
    assert lr["sgd", "sqrt", 2.0, 64] == pytest.approx(0.4)            # 2 * 0.1 * sqrt(4)
    assert lr["adam", "linear", 1.0, 32] == pytest.approx(2e-3)        # adam default 1e-3 at B_ref
    warm = {r.batch_size: r.warmup_steps for r in runs if r.warmup_epochs == 1}
    assert warm == {16: 384 // 16, 32: 384 // 32, 64: 384 // 64}      # one epoch of 384 examples
    probed = [r for r in runs if r.grad_norms]
    assert len(probed) == 3 * 2 and all(r.baseline and r.seed == 0 for r in probed)
    assert all(r.epochs == 2 and r.steps is None for r in runs)
    assert RunSpec.from_dict(runs[5].to_dict()) == runs[5]
    assert StudyPlan.from_dict(plan.to_dict()) == plan


def test_step_budget():
    runs = StudyPlan(task="blobs", batch_sizes=(16, 32), budget="steps", steps=50, optimizers=("sgd",),
                     lr_rules=("none",)).expand(blobs())
    assert [(r.steps, r.epochs) for r in runs] == [(50, None), (50, None)]


@pytest.mark.parametrize("kwargs,msg", [
    ({"batch_sizes": ()}, "The 'batch_sizes' parameter is empty, so the study grid has no runs"),
    ({"seeds": ()}, "The 'seeds' parameter is empty"),
    ({"optimizers": ("sgd", "lion")}, r"The 'optimizers' parameter must hold names from sgd, adam, adamw\. Got 'lion'"),
    ({"lr_rules": ("cubic",)}, r"The 'lr_rules' parameter must hold names from none, sqrt, linear\. Got 'cubic'"),
    ({"batch_sizes": (16, 0)}, r"The 'batch_sizes' parameter of the study must be a positive integer\. Got 0"),
    ({"batch_sizes": (16, 16)}, "repeats a value"),
    ({"lrs": {"lion": 0.1}}, "learning rate given for unknown optimizer 'lion'"),
    ({"budget": "steps"}, r"The 'steps' parameter must be a positive integer\. Got None"),
    ({"warmup_epochs": (-1,)}, "must hold numbers >= 0"),
])
def test_bad_plans(kwargs, msg):
    with pytest.raises(ConfigError, match=msg):
        StudyPlan(task="blobs", **kwargs)


def test_batch_sizes_larger_than_the_data_are_refused():
    plan = StudyPlan(task="blobs", batch_sizes=(32, 500, 1000))
    with pytest.raises(ConfigError, match=r"batch size\(s\) 500, 1000 larger than the training set of task 'blobs' "
                                          r"\(384 examples\); use batch sizes up to 384"):
        plan.expand(blobs())
