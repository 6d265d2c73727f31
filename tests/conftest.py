import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from batchscope import Target, Task


def linear_task(n: int = 512, d: int = 5, noise: float = 0.5, seed: int = 0, name: str = "linear") -> Task:
    """Linear regression with Gaussian inputs: small, fast, and every gradient statistic has a closed form."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, 1, generator=g)
    y = x @ w + noise * torch.randn(n, 1, generator=g)
    return Task(
        name=name,
        make_model=lambda: nn.Linear(d, 1, bias=False),
        train_data=TensorDataset(x, y),
        val_data=TensorDataset(x[: n // 4], y[: n // 4]),
        loss_fn=nn.functional.mse_loss,
        target=Target("loss", noise**2 * 1.5, "val"),
        optimizer="sgd",
        lr=0.05,
    )


@pytest.fixture
def tiny_task() -> Task:
    return linear_task()


@pytest.fixture(autouse=True)
def _few_threads():
    # Two cores on CI: keep torch from oversubscribing when pytest runs beside other work.
    torch.set_num_threads(2)
    yield
