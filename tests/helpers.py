"""Tasks and fakes that several test modules share (imported as a plain module, never from a test module)."""

import os
import socket
import sys
import threading

import torch
from torch import nn
from torch.utils.data import TensorDataset

import batchscope
from batchscope import Target, Task
from batchscope.hardware import HardwareProfile, ProfilePoint
from batchscope.tasks import accuracy


_PACKAGE = os.path.dirname(os.path.abspath(batchscope.__file__)) + os.sep


def batchscope_calls(run) -> list[str]:
    """The batchscope functions that run while ``run()`` does, in call order (qualified names).

    A hook a monitor or callback left on a model is batchscope code that the model's forward or
    backward calls, so ``batchscope_calls(lambda: loss(model).backward()) == []`` says, from the
    outside, that none is left; one gradient hook per parameter shows up as one call per parameter.
    """
    seen: list[str] = []

    def profile(frame, event, _arg):
        if event == "call" and frame.f_code.co_filename.startswith(_PACKAGE):
            seen.append(frame.f_code.co_qualname)

    sys.setprofile(profile)
    threading.setprofile(profile)   # a backward run on another thread of the autograd engine
    try:
        run()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return seen


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


def wide_task(n=4096, d=256, hidden=1024):
    x, y = torch.randn(n, d), torch.randint(0, 10, (n,))
    return Task(name="wide", make_model=lambda: nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 10)),
                train_data=TensorDataset(x, y), loss_fn=nn.functional.cross_entropy,
                target=Target("loss", 0.1, "train"))


def fake_profile(task, alpha=1e-3, beta=1e-5, ceiling=100_000, limited_by="data set", device="cpu", parameters=None):
    """A hardware profile with chosen numbers (as if measured elsewhere and loaded with --profile)."""
    return HardwareProfile(
        task=task.name, parameters=task.parameter_count() if parameters is None else parameters,
        device={"type": device}, amp=False, max_batch=ceiling, limited_by=limited_by, memory_budget=None,
        memory_method="given", m0=None, m1=None, memory_r2=None, alpha=alpha, beta=beta, r2=1.0, residuals=[],
        points=[ProfilePoint(b, alpha + beta * b, 0.0, b / (alpha + beta * b), None) for b in (1, 4, 16, 64, 256)],
        memory_probes=[], ceiling_steps=0, over_budget_steps=0, knee=None, knee_fit=None, seconds=0.0)


def blobs_task(n=6000, seed=0):
    """Four overlapping Gaussian classes: enough noise that the run takes a few hundred steps."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 10, generator=g) * 1.2
    y = torch.randint(0, 4, (n,), generator=g)
    x = centres[y] + torch.randn(n, 10, generator=g)
    cut = n * 4 // 5
    return Task(name="blobs", make_model=lambda: nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4)),
                train_data=TensorDataset(x[:cut], y[:cut]), val_data=TensorDataset(x[cut:], y[cut:]),
                loss_fn=nn.functional.cross_entropy, metric_fn=accuracy, metric_name="accuracy",
                optimizer="sgd", lr=0.02, momentum=0.0, reference_batch=32, target=Target("metric", 0.80, "val"))


def free_port() -> int:
    """A free TCP port on the loopback, for a gloo rendezvous between test processes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sleeping_rank(rank, *args):
    """A torch.distributed rank that never finishes (for the bounded wait of the spawned measurements)."""
    import time

    time.sleep(600)
