import sys
import textwrap

import pytest

from batchscope import Task, TaskError, load_task

TASK_SOURCE = textwrap.dedent("""
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset
    from batchscope import Task, Target

    def make_task():
        x = torch.randn(64, 3)
        return Task(name="mine", make_model=lambda: nn.Linear(3, 1),
                    train_data=TensorDataset(x, x.sum(1, keepdim=True)),
                    loss_fn=nn.functional.mse_loss, target=Target("loss", 0.1, "train"))

    def not_a_task():
        return 42

    def broken():
        raise RuntimeError("boom")
""")


@pytest.fixture
def task_file(tmp_path):
    path = tmp_path / "mytask.py"
    path.write_text(TASK_SOURCE)
    return path


def test_user_task_from_file(task_file):
    task = load_task(f"{task_file}:make_task")
    assert isinstance(task, Task) and task.name == "mine" and task.n_train == 64


def test_user_task_from_module(task_file, monkeypatch):
    monkeypatch.syspath_prepend(str(task_file.parent))
    sys.modules.pop("mytask", None)
    assert load_task("mytask:make_task").name == "mine"


def test_task_object_passes_through(tiny_task):
    assert load_task(tiny_task) is tiny_task


@pytest.mark.parametrize("spec, message", [
    ("nope", "unknown task 'nope'; use a built-in name"),
    ("missing/file.py:make_task", "task file 'missing/file.py' does not exist"),
    ("no_such_module_xyz:make_task", "cannot import module 'no_such_module_xyz'"),
])
def test_bad_task_specs(spec, message):
    with pytest.raises(TaskError, match=message):
        load_task(spec)


def test_bad_functions(task_file):
    with pytest.raises(TaskError, match="has no function 'absent'"):
        load_task(f"{task_file}:absent")
    with pytest.raises(TaskError, match="returned int, not a batchscope.Task"):
        load_task(f"{task_file}:not_a_task")
    with pytest.raises(TaskError, match="raised RuntimeError: boom"):
        load_task(f"{task_file}:broken")
