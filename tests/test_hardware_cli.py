import json

from click.testing import CliRunner

from batchscope.cli import cli
from batchscope.hardware import HardwareProfile


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_profile_json_out_and_plot(tmp_path):
    out, png = tmp_path / "p.json", tmp_path / "p.png"
    r = run("profile", "--task", "dots", "--max-batch", "64", "--threads", "1", "--json",
            "--out", str(out), "--plot", str(png))
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert {"max_batch", "alpha", "beta", "device", "points", "limited_by"} <= set(doc)
    assert (doc["max_batch"], doc["limited_by"]) == (64, "max_batch")
    assert [p["batch"] for p in doc["points"]] == [1, 2, 4, 8, 16, 32, 64]
    assert doc["device"]["type"] == "cpu"
    assert HardwareProfile.load(out).to_dict() == doc
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_user_errors_are_one_line_and_exit_2():
    cases = [
        (["profile", "--task", "dots", "--memory-budget", "lots"], "The --memory-budget option must be a size"),
        (["profile", "--task", "dots", "--amp"], "needs a CUDA device; drop --amp"),
        (["profile", "--task", "dots", "--max-batch", "0"], "The --max-batch option must"),
        (["profile", "--task", "dots", "--memory-budget", "1KiB"],
         "does not fit the memory budget even at batch size 1"),
    ]
    for args, message in cases:
        r = run(*args)
        assert r.exit_code == 2, (args, r.output)
        assert message in r.stderr
        assert "Traceback" not in r.output
        assert len(r.stderr.strip().splitlines()) == 1
