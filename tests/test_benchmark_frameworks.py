"""The frameworks benchmark (find's recommendation against batch 32 under the HF Trainer and Lightning),
end to end on tiny sizes: it would fail if the benchmark, or an integration it drives, broke."""

import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("lightning")
pytest.importorskip("mnist1d")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import frameworks_find_vs_batch32 as bench  # noqa: E402

# The pilot is timed: 2.5 s leaves the tiny CNN enough progress for a target that find's measuring run can
# measure the noise toward on a loaded machine (at 1 s, under load, it measured too few steps and refused).
TINY = bench.Sizes(gpt_embd=16, gpt_heads=2, context=16, gpt_train=384, gpt_val=64, cnn_channels=4, cnn_train=384,
                   cnn_val=128, pilot_seconds=2.5, eval_examples=128, cnn_eval_examples=128, cap=1.5, rounds=1,
                   find={"memory_budget": "256MiB", "max_batch": 64, "verify": False})


@pytest.mark.slow
def test_runs_both_frameworks_to_target_and_resumes(tmp_path, monkeypatch):
    store = tmp_path / "runs.json"
    results = bench.run(TINY, store_path=store, say=lambda line: None)
    assert [r["workload"] for r in results] == ["gpt2", "cnn"]
    for r in results:
        f = r["find"]
        assert f["batch_size"] == f["micro_batch"] * f["accumulation"] and f["lr"] > 0
        assert f["wall_seconds"] > 0 and f["measuring_cost"]["examples"] > 0
        assert r["target"] > 0 and math.isfinite(r["target"])
        for arm in bench.ARMS:
            (run,) = r["runs"][arm]
            assert run["steps"] > 0 and run["curve"]
            if run["reached"]:          # the stopping evaluation is at or below the target, and timed
                assert run["value"] <= r["target"] and 0 < run["seconds"] <= run["seconds_with_evals"]
                assert 0 < run["cpu_seconds"] and all(c[4] is not None for c in run["curve"])
        assert r["runs"]["recommendation"][0]["batch"] == f["batch_size"]
        assert r["runs"]["batch 32"][0]["reached"]     # the target came from batch 32's own pilot
        assert r["cpu_rounds"] == 1 and r["ratio_aa"]["median"] > 0
    text = bench.markdown(results, {"load_start": [0.0] * 3, "load_end": [0.0] * 3})
    assert "| gpt2 | Hugging Face Trainer |" in text and "| cnn | Lightning |" in text

    # A rerun on the same store trains nothing: every unit is read back.
    def no_training(*a, **k):
        raise AssertionError("a stored unit was run again")

    for cls in bench.WORKLOADS.values():
        monkeypatch.setattr(cls, "fit", no_training)
        monkeypatch.setattr(cls, "find", no_training)
    again = bench.run(TINY, store_path=store, say=lambda line: None)
    assert [r["median_seconds"] for r in again] == [r["median_seconds"] for r in results]
