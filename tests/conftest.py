import pytest
import torch

from batchscope import Task
from tests.helpers import linear_task


@pytest.fixture
def tiny_task() -> Task:
    return linear_task()


@pytest.fixture(autouse=True)
def _few_threads():
    # Two cores on CI: keep torch from oversubscribing when pytest runs beside other work.
    torch.set_num_threads(1)
    yield
