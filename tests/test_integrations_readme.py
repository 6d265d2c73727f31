"""The README's integration examples run as written (on the CPU, nothing downloaded)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def examples() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Where you already train", 1)[1].split("\n## ", 1)[0]
    out = {}
    for part in re.split(r"\n### ", section)[1:]:
        title = part.split("\n", 1)[0]
        for i, code in enumerate(re.findall(r"```python\n(.*?)```", part, flags=re.S)):
            out[f"{title} {i}"] = code
    return out


def test_each_framework_has_an_example():
    names = " ".join(examples())
    assert "Lightning" in names and "Hugging Face" in names and "TensorBoard" in names


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(examples()))
def test_readme_example_runs(name, tmp_path):
    pytest.importorskip({"Lightning": "lightning", "Hugging": "transformers", "TensorBoard": "tensorboard"}[
        name.split()[0]])
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", examples()[name]], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
