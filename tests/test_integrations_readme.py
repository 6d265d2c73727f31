"""The integration examples run as written (on the CPU, nothing downloaded): each framework's full
example in docs/integrations.md, and the README's one callback example on that page's Lightning
model and data."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def examples() -> dict[str, str]:
    text = (ROOT / "docs" / "integrations.md").read_text()
    out = {}
    for part in re.split(r"\n## ", text)[1:]:
        title = part.split("\n", 1)[0]
        for i, code in enumerate(re.findall(r"```python\n(.*?)```", part, flags=re.S)):
            out[f"{title} {i}"] = code
    return out


def readme_callback_example() -> str:
    """The README's Lightning block after the docs example's Classifier and Data (everything before its step 1)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Lightning, Hugging Face Trainer, TensorBoard\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    definitions = examples()["Lightning 0"].split("\n# 1.", 1)[0]
    return definitions + "\n\n" + block


def test_each_framework_has_an_example():
    names = " ".join(examples())
    assert "Lightning" in names and "Hugging Face" in names and "TensorBoard" in names
    assert "class Classifier" in readme_callback_example() and "NoiseScaleCallback()" in readme_callback_example()


def run_example(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(examples()))
def test_docs_example_runs(name, tmp_path):
    pytest.importorskip({"Lightning": "lightning", "Hugging": "transformers", "TensorBoard": "tensorboard"}[
        name.split()[0]])
    run = run_example(examples()[name], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.mark.slow
def test_readme_callback_example_runs(tmp_path):
    pytest.importorskip("lightning")
    run = run_example(readme_callback_example(), tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "B_simple" in run.stdout or "b_simple" in run.stdout.lower(), run.stdout[-2000:]
