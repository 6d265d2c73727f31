"""The README's Python API example runs as printed and reaches its target at the batch find names."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_api_example() -> str:
    section = README.read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_python_api_example_runs(capsys):
    scope: dict = {}
    exec(python_api_example(), scope)
    rec, run = scope["rec"], scope["run"]
    assert rec.batch_size == rec.micro_batch * rec.accumulation * rec.devices
    assert run.config["batch_size"] == rec.batch_size and run.config["lr"] == rec.lr
    assert run.reached_target, run.stopped_because
    assert capsys.readouterr().out.split() == [str(rec.batch_size), str(rec.lr), "True", str(run.target_step)]
