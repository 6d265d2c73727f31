"""JSON round-trips exactly: inf, -inf, NaN and None stay four different things, for every result type."""

import json
import math

import pytest

from batchscope.hardware import HardwareProfile
from batchscope.hardware.ceiling import ProbeResult
from batchscope.noise.stats import NoiseEstimate, NoisePoint
from batchscope.plan.recommend import Recommendation
from batchscope.serialize import decode, dumps, from_dict, read_json, save_measured, write_bytes, write_json
from batchscope.study.plan import RunSpec
from batchscope.study.runner import RunRecord
from batchscope.train import HistoryPoint, TrainResult
from batchscope.errors import ConfigError, DivergedError
from tests.helpers import fake_profile, linear_task

INF, NAN = math.inf, math.nan


def same(a, b) -> bool:
    """Equal, with NaN equal to NaN (dataclass == treats NaN as unequal to itself)."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if hasattr(a, "__dataclass_fields__"):
        return all(same(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    return a == b


def through_json(obj):
    return json.loads(dumps(obj))


def test_the_four_values_are_written_differently_and_read_back():
    doc = through_json({"a": INF, "b": -INF, "c": NAN, "d": None, "e": 1.5})
    assert doc == {"a": "inf", "b": "-inf", "c": "nan", "d": None, "e": 1.5}
    back = decode(dict, doc)
    assert back["a"] == INF and back["b"] == -INF and math.isnan(back["c"]) and back["d"] is None


def test_a_string_field_keeps_the_reserved_words_as_text():
    spec = RunSpec(**{**_spec().__dict__, "optimizer": "nan"})
    assert from_dict(RunSpec, through_json(spec)).optimizer == "nan"


def test_noise_estimate_and_point_round_trip():
    est = NoiseEstimate(b_simple=INF, low=12.0, high=INF, g2=-0.5, trace=NAN, method="microbatch", n_samples=3,
                        layers={"w": {"g2": 1.0, "trace": 2.0, "b_simple": INF}})
    assert same(NoiseEstimate.from_dict(through_json(est)), est)
    pt = NoisePoint(4, 0.5, NAN, 1.0, INF, -INF, INF, 2)
    assert same(NoisePoint.from_dict(through_json(pt)), pt)


def test_hardware_profile_round_trips_through_a_file(tmp_path):
    p = fake_profile(linear_task())
    p.knee_fit, p.memory_r2 = INF, NAN
    p.memory_probes = [ProbeResult(8, None, True), ProbeResult(4, 1024, False)]
    back = HardwareProfile.load(p.save(tmp_path / "p.json"))
    assert same(back, p) and back.m0 is None and back.knee_fit == INF and math.isnan(back.memory_r2)


def test_recommendation_round_trips():
    r = Recommendation("fastest", 64, 32, 2, 1, 0.1, "linear", "why", 0,
                       b_crit={"value": 50.0, "low": NAN, "high": INF}, b_simple_at_target={"value": 1.0, "low": None},
                       predicted={"steps": 10.0}, candidates=[{"batch_size": 64, "seconds": INF}])
    assert same(Recommendation.from_dict(through_json(r)), r)


def test_train_result_round_trips():
    h = [HistoryPoint(0, 0, 0.0, NAN, None, INF, 0.1), HistoryPoint(5, 320, 0.2, 0.5, 0.9, 0.4, 0.1)]
    r = TrainResult("t", {"lr": 0.1}, h, 5, 320, 0.2, False, "loss < 0.1", None, None, None, "diverged")
    assert same(from_dict(TrainResult, through_json(r)), r)


def _spec():
    return RunSpec(batch_size=32, optimizer="sgd", lr_rule="none", lr_multiplier=1.0, warmup_epochs=0.0, seed=0,
                   lr=0.1, warmup_steps=0, steps=10)


def test_run_record_round_trips():
    rec = RunRecord(key="k", spec=_spec(), status="diverged", steps=3, examples=96, seconds=0.1, initial_loss=0.7,
                    curve=[{"step": 0, "loss": INF}], step_losses=[0.7, NAN], final={"val_metric": None},
                    distance={"total": 1.0}, cosine={"total": NAN}, target_step=None)
    back = RunRecord.from_dict(through_json(rec))
    assert same(back, rec)


def test_find_result_round_trips():
    from batchscope.plan.find import FindResult

    r = FindResult(Recommendation("fastest", 64, 64, 1, 1, 0.1, "none", "", 0, {"high": INF}, {}, {}),
                   fake_profile(linear_task()), {"progress": NAN}, {"loss": [1.0]}, {"slope": -INF}, {"profile": 1.0})
    assert same(FindResult.from_dict(through_json(r)), r)


def test_a_failure_keeps_what_it_measured_in_one_file(tmp_path):
    e = DivergedError("blew up", history=[HistoryPoint(0, 0, 0.0, 0.7, None, 0.7, 0.1)]).keep(noise={"b": INF})
    assert e.history[0].step == 0
    assert save_measured(tmp_path / "x.json", e)
    doc = read_json(tmp_path / "x.json")
    assert doc["error"] == "blew up" and doc["complete"] is False and doc["noise"] == {"b": "inf"}
    assert not save_measured(tmp_path / "y.json", ConfigError("nothing measured"))
    assert not (tmp_path / "y.json").exists()


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "r.json"
    write_json(path, {"a": 1})

    def half_then_interrupt(tmp):
        with open(tmp, "w") as f:
            f.write('{"a": ')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_bytes(path, half_then_interrupt)
    assert read_json(path) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["r.json"]
