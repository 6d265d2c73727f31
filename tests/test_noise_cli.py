import json

from click.testing import CliRunner

from batchscope.cli import cli
from batchscope.noise import NoiseMeasurement


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_noise_json_document_and_files(tmp_path):
    out, png = tmp_path / "noise.json", tmp_path / "noise.png"
    r = run("noise", "--task", "dots", "--batch-size", "32", "--micro-batch", "8", "--steps", "12",
            "--out", str(out), "--plot", str(png), "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert {"b_simple", "low", "high", "method", "history"} <= set(doc)
    assert doc["method"] == "microbatch" and doc["n_samples"] == 12
    assert [h["step"] for h in doc["history"]] == list(range(1, 13))
    assert all({"step", "loss", "b_simple"} <= set(h) for h in doc["history"])
    assert doc["low"] <= doc["b_simple"] <= (doc["high"] if doc["high"] is not None else float("inf"))
    assert NoiseMeasurement.from_dict(json.loads(out.read_text())).estimate.b_simple == doc["b_simple"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_noise_table_for_people():
    r = run("noise", "--task", "dots", "-b", "32", "--micro-batch", "8", "--steps", "8", "--per-layer")
    assert r.exit_code == 0, r.output
    assert "B_simple =" in r.stdout and "90% interval" in r.stdout and "per parameter tensor" in r.stdout


def test_noise_user_errors_exit_2(tmp_path):
    bn = tmp_path / "bn.py"
    bn.write_text(
        "import torch\nfrom torch import nn\nfrom torch.utils.data import TensorDataset\n"
        "from batchscope import Task, Target\n"
        "def make_task():\n"
        "    x, y = torch.randn(64, 3), torch.randn(64, 1)\n"
        "    return Task(name='bn',\n"
        "                make_model=lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)),\n"
        "                train_data=TensorDataset(x, y), loss_fn=nn.functional.mse_loss,\n"
        "                target=Target('loss', 0.1, 'train'))\n")
    cases = [
        (["noise", "--task", "dots", "-b", "32", "--micro-batch", "5", "--steps", "2"],
         "micro-batch 5 does not divide batch size 32"),
        (["noise", "--task", "dots", "-b", "32", "--micro-batch", "32", "--steps", "2"],
         "needs two batch sizes, but micro-batch 32 is not smaller than the batch size 32"),
        (["noise", "--task", str(bn) + ":make_task", "-b", "16", "--method", "exact", "--steps", "2"],
         "cannot measure a model with BatchNorm"),
        (["noise", "--task", "dots", "-b", "32", "--micro-batch", "8", "--preconditioned", "--steps", "2"],
         "preconditioned=True needs an Adam-type optimizer"),
    ]
    for args, message in cases:
        r = run(*args)
        assert r.exit_code == 2, (args, r.output)
        assert message in r.stderr and "Traceback" not in r.output


def test_divergence_keeps_the_measured_trajectory(tmp_path):
    out = tmp_path / "partial.json"
    r = run("noise", "--task", "dots", "-b", "32", "--micro-batch", "8", "--lr", "30", "--steps", "200",
            "--out", str(out))
    assert r.exit_code == 2 and "lower the learning rate" in r.stderr
    partial = json.loads(out.read_text())
    # the noise trajectory measured before the loss blew up, and the training history beside it
    assert partial["complete"] is False and "lower the learning rate" in partial["error"]
    assert partial["noise"]["history"] and partial["noise"]["train"] is None
    assert [p["step"] for p in partial["history"]][0] == 0
