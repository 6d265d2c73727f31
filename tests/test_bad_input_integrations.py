"""Bad input to the Python API of the framework integrations and of saved find results.

Each case must raise a ConfigError whose message is one line naming the value and the fix (issue
21: items 7, 9 and 10). ``find`` cases pass no model, data or Trainer at all (``None``): the
arguments are checked before any of them is touched, so a bad target cannot cost a measuring run.
"""

import json
import math

import pytest

from batchscope import Target
from batchscope.errors import ConfigError
from batchscope.tasks import load_task
from tests.helpers import fake_profile

NAN = math.nan


def lightning():
    return pytest.importorskip("batchscope.integrations.lightning")


def hf():
    pytest.importorskip("transformers")
    import batchscope.integrations.hf as module
    return module


def step_time(alpha, beta):
    from batchscope.adapt import StepTimeModel
    return StepTimeModel(alpha, beta)


def load_find(path):
    from batchscope.plan.find import FindResult
    return FindResult.load(path)


CASES = [
    # 10. the adaptive callbacks' step time: a path, a dict, a model, a find result; anything else refused
    ("path missing", lambda f: lightning().AdaptiveBatchCallback(f["missing"]),
     "does not exist; write one with `batchscope profile --task NAME --out FILE`, FindResult.save(path)"),
    ("path not JSON", lambda f: lightning().AdaptiveBatchCallback(f["not_json"]), "is not valid JSON"),
    ("path of another file", lambda f: hf().AdaptiveBatchCallback(f["other_json"]),
     "is neither a hardware profile nor a find result"),
    ("dict without beta", lambda f: hf().AdaptiveBatchCallback({"alpha": 0.01}),
     "needs 'alpha' and 'beta' (seconds per step and per example); it has no 'beta'"),
    ("dict zero step time", lambda f: hf().AdaptiveBatchCallback({"alpha": 0, "beta": 0}),
     "parameter of StepTimeModel must be positive where beta is 0 too"),
    ("model zero step time", lambda f: lightning().AdaptiveBatchCallback(step_time(0.0, 0.0)),
     "parameter of StepTimeModel must be positive where beta is 0 too"),
    ("model negative", lambda f: lightning().AdaptiveBatchCallback(step_time(-0.01, 1e-5)),
     "The 'alpha' parameter of StepTimeModel must be a finite number of seconds >= 0"),
    ("model nan", lambda f: hf().AdaptiveBatchCallback(step_time(NAN, 1e-5)), "nan"),
    ("dict bad measured", lambda f: hf().AdaptiveBatchCallback({"alpha": 0.01, "beta": 0.0, "measured": 3}),
     "The 'measured' parameter of StepTimeModel must hold (batch, median seconds) pairs"),
    ("not a step time", lambda f: lightning().AdaptiveBatchCallback(42),
     "The 'step_time' parameter of lightning AdaptiveBatchCallback must be a StepTimeModel"),
    ("damaged profile by path", lambda f: lightning().AdaptiveBatchCallback(f["zero_profile"]),
     "the hardware profile's 'alpha' must be positive where beta is 0 too"),
    # 10. saved find results
    ("load a profile as a find result", lambda f: load_find(f["profile"]),
     "is a hardware profile, not a find result; load it with HardwareProfile.load(path)"),
    ("load missing", lambda f: load_find(f["missing"]), "does not exist; write one with FindResult.save(path)"),
    ("load not JSON", lambda f: load_find(f["not_json"]), "is not valid JSON"),
    ("load another file", lambda f: load_find(f["other_json"]), "is not a find result (keys runs"),
    ("load a list", lambda f: load_find(f["json_list"]), "holds a JSON list, not an object"),
    ("load incomplete", lambda f: load_find(f["broken_find"]), "is incomplete or malformed"),
    # 9. find checks its arguments before any work (no module, data module or Trainer is given at all)
    ("lightning find target nan", lambda f: lightning().find(None, None, target=NAN),
     "The 'target' parameter of batchscope.integrations.lightning.find must be a positive finite loss"),
    ("lightning find target negative", lambda f: lightning().find(None, None, target=-0.5), "Got -0.5 instead"),
    ("lightning find Target nan", lambda f: lightning().find(None, None, target=Target("loss", NAN)),
     "must be a Target with kind 'loss' (a positive value)"),
    ("lightning find budget", lambda f: lightning().find(None, None, target=0.4, budget=0.1),
     "'budget' is called 'measure_fraction' here"),
    ("hf find target inf", lambda f: hf().find(None, target=math.inf), "Got inf instead"),
    ("hf find target text", lambda f: hf().find(None, target="0.4"), "Got '0.4' instead"),
    ("hf find progress", lambda f: hf().find(None, target=0.4, progress="yes"),
     "The 'progress' parameter must be True, False or None"),
    ("task_from_lightning target", lambda f: lightning().task_from_lightning(None, None, target=NAN),
     "The 'target' parameter of task_from_lightning"),
    # time to target in the frameworks
    ("lightning StopAtTarget nan", lambda f: lightning().StopAtTarget(NAN), "The 'value' parameter"),
    ("hf StopAtTarget mode", lambda f: hf().StopAtTarget(0.5, mode="down"), "The 'mode' parameter"),
    ("hf StopAtTarget metric", lambda f: hf().StopAtTarget(0.5, metric=""), "The 'metric' parameter"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_api")
    profile = fake_profile(load_task("dots"))
    profile.save(d / "profile.json")
    (d / "not.json").write_text("{not json")
    (d / "other.json").write_text(json.dumps({"runs": []}))
    (d / "list.json").write_text("[1, 2]")
    (d / "broken.json").write_text(json.dumps({"batch_size": 8, "lr": 0.1, "profile": profile.to_dict(),
                                               "measuring": {}}))
    (d / "zero.json").write_text(json.dumps({**profile.to_dict(), "alpha": 0.0, "beta": 0.0}))
    names = {"missing": "missing.json", "not_json": "not.json", "other_json": "other.json", "json_list": "list.json",
             "broken_find": "broken.json", "profile": "profile.json", "zero_profile": "zero.json"}
    return {k: str(d / v) for k, v in names.items()}


@pytest.mark.parametrize("call, problem", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_config_error(files, call, problem):
    with pytest.raises(ConfigError) as e:
        call(files)
    message = str(e.value)
    assert "\n" not in message and problem in message, message
