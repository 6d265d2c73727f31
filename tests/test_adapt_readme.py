"""The adaptive own-loop example of docs/train.md runs as printed, and the batch grows in it."""

import re
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from batchscope.adapt import StepTimeModel
from batchscope.noise import NoiseScaleMonitor


def test_own_loop_example_runs():
    text = (Path(__file__).parents[1] / "docs" / "train.md").read_text()
    code = re.search(r"```python\n(from batchscope.adapt import .*?)```", text, re.S).group(1)
    assert len(code.strip().splitlines()) <= 10
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8192, 4, generator=g)
    dataset = TensorDataset(x, x.sum(1, keepdim=True) + 2 * torch.randn(8192, 1, generator=g))
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    scope = {"dataset": dataset, "model": model, "opt": torch.optim.SGD(model.parameters(), lr=0.1),
             "loss_fn": nn.functional.mse_loss, "DataLoader": DataLoader, "NoiseScaleMonitor": NoiseScaleMonitor,
             "profile": StepTimeModel(2e-3, 2e-5)}
    exec(code, scope)
    assert scope["controller"].batch_size > 32 and scope["step"] > 10
