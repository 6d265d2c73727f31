"""`study --devices`: one worker per device, each run records its device; CUDA refused on a CPU machine."""

import sys

import pytest
import torch
from click.testing import CliRunner

from batchscope.cli import cli
from batchscope.errors import ConfigError
from batchscope.study import load_study, run_study
from batchscope.study.placement import resolve_devices, threads_per_worker
from batchscope.study.ray_runs import import_ray
from tests.test_study_store import TASK, plan

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


def test_device_lists_are_resolved_against_this_machine():
    assert resolve_devices(None) is None
    assert resolve_devices("cpu") == ["cpu"] and resolve_devices("cpu, cpu") == ["cpu", "cpu"]
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert resolve_devices("auto") == ([f"cuda:{i}" for i in range(n)] or ["cpu"])
    with pytest.raises(ConfigError, match="takes cpu, cuda:N .* Got 'cuda' in 'cuda'"):
        resolve_devices("cuda")
    assert threads_per_worker(["cpu", "cpu"], 8) == 4 and threads_per_worker(["cuda:0", "cuda:1"], 16) == 4


@cpu_only
def test_cuda_devices_are_refused_on_a_cpu_machine_with_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"--devices cuda:0,cuda:1: this machine has no CUDA device .* "
                                          "pass --devices cpu"):
        resolve_devices("cuda:0,cuda:1")
    res = CliRunner().invoke(cli, ["study", "--task", TASK, "--dir", str(tmp_path / "s"), "--devices", "cuda:0"])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
    assert res.stderr.startswith("error: --devices cuda:0: this machine has no CUDA device")
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_one_worker_per_device_runs_everything_once_and_records_the_device(tmp_path):
    p = plan(batch_sizes=(8, 16, 32), lr_rules=("none",), steps=10, noise_steps=0)
    summary = run_study(tmp_path, p, devices=["cpu", "cpu"])
    assert (summary.total, summary.ran) == (3, 3)
    records = load_study(tmp_path).records
    assert sorted(r.spec.batch_size for r in records) == [8, 16, 32]
    assert all(r.status == "ok" and r.device == "cpu" and len(r.step_losses) == 10 for r in records)


def test_ways_to_run_are_exclusive_and_a_missing_ray_is_one_line(tmp_path, monkeypatch):
    res = CliRunner().invoke(cli, ["study", "--task", TASK, "--dir", str(tmp_path), "--workers", "2",
                                   "--devices", "cpu"])
    assert res.exit_code == 2 and "give one of --workers N, --devices LIST or --ray" in res.stderr
    monkeypatch.setitem(sys.modules, "ray", None)          # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"pip install 'batchscope\[ray\]'"):
        import_ray()
    res = CliRunner().invoke(cli, ["study", "--task", TASK, "--dir", str(tmp_path / "r"), "--ray"])
    assert res.exit_code == 2
    assert res.stderr.strip() == ("error: study --ray needs Ray, which is not installed: "
                                  "pip install 'batchscope[ray]'")


def test_ray_resources_follow_the_plan_and_the_cluster():
    from batchscope.study.ray_runs import resources

    assert resources(plan(device="cpu"), 8) == {"num_cpus": 1, "num_gpus": 0}
    assert resources(plan(device="cuda"), 8) == {"num_cpus": 1, "num_gpus": 1}
    assert resources(plan(device="auto"), 0) == {"num_cpus": 1, "num_gpus": 0}
    with pytest.raises(ConfigError, match="trains on cuda but the Ray cluster has no GPUs"):
        resources(plan(device="cuda"), 0)
