import pytest
import torch

from batchscope import Task
from tests.helpers import linear_task


@pytest.fixture
def tiny_task() -> Task:
    return linear_task()


@pytest.fixture(autouse=True)
def _few_threads():
    # One thread: these models are too small to gain from a second, and on a loaded 2-core machine
    # two threads wait on each other (the text task's test took 30 s of CPU with two, 5 s with one).
    # The tests that start processes (workers, ranks, Ray) get the second core that way.
    torch.set_num_threads(1)
    yield
