"""One builder for the device, model, optimizer and mixed precision of a training step.

``train()`` and the hardware probes both build their step here, so a profile describes the
optimizer of the run it is for.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import ConfigError, check_lr, check_positive_int
from ..tasks import OPTIMIZERS, Task
from .taskcalls import build_model


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but this machine has no CUDA device; use --device cpu")
    return device


def _optimizer_name(name: str) -> str:
    name = name.lower()
    if name not in OPTIMIZERS:
        raise ConfigError(f"The 'optimizer' parameter must be one of {', '.join(OPTIMIZERS)}. Got {name!r} instead.")
    return name


def make_optimizer(name: str, params: Iterable, lr: float, momentum: float = 0.9,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    name = _optimizer_name(name)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


@dataclass(frozen=True)
class OptimizerSettings:
    """The optimizer a run uses: the task's defaults with the run's overrides applied."""

    name: str
    lr: float
    momentum: float
    weight_decay: float

    @classmethod
    def resolve(cls, task: Task, optimizer: Optional[str] = None, lr: Optional[float] = None,
                momentum: Optional[float] = None, weight_decay: Optional[float] = None) -> "OptimizerSettings":
        return cls(_optimizer_name(optimizer or task.optimizer),
                   check_lr("lr", task.lr if lr is None else lr),
                   task.momentum if momentum is None else momentum,
                   task.weight_decay if weight_decay is None else weight_decay)

    @classmethod
    def of(cls, task: Task, cfg) -> "OptimizerSettings":
        return cls.resolve(task, cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)


@dataclass
class TrainingSetup:
    """A fresh model, its optimizer and mixed-precision state: what one training step needs."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: Optional[torch.dtype]
    settings: OptimizerSettings

    def autocast(self):
        return torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext()


def amp_dtype(device: torch.device, amp: bool) -> Optional[torch.dtype]:
    if not amp:
        return None
    if device.type != "cuda":
        raise ConfigError("automatic mixed precision (--amp) needs a CUDA device; drop --amp on the CPU")
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def build_training(task: Task, device: torch.device, settings: OptimizerSettings, amp: bool = False,
                   seed: int = 0) -> TrainingSetup:
    """Seed, build the task's model on ``device``, its optimizer and (under AMP) the gradient scaler.

    bfloat16 needs no loss scaling; float16 gets a GradScaler.
    """
    dtype = amp_dtype(device, amp)
    torch.manual_seed(seed)
    model = build_model(task).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"the model of task {task.name!r} has no trainable parameters")
    optimizer = make_optimizer(settings.name, params, settings.lr, settings.momentum, settings.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype is torch.float16)
    return TrainingSetup(model, optimizer, scaler, dtype, settings)


def batch_coupled_layers(model: nn.Module) -> list[str]:
    """Names of layers whose training-mode output for one example depends on the rest of its batch."""
    return [name or "<root>" for name, mod in model.named_modules() if isinstance(mod, _BatchNorm)]


def smallest_batch(model: nn.Module) -> int:
    """The smallest batch the model trains on: BatchNorm needs two examples to form batch statistics."""
    return 2 if batch_coupled_layers(model) else 1


def check_batch(task: Task, size: int, what: str = "batch size", model: Optional[nn.Module] = None) -> int:
    """The one check of a batch against the task: positive, within the training set, and (given the
    model) at least the smallest batch its layers can train on."""
    b = check_positive_int(what.replace(" ", "_").replace("-", "_"), size)
    if b > task.n_train:
        raise ConfigError(f"{what} {b} is larger than the training set of task {task.name!r} "
                          f"({task.n_train} examples); use at most {task.n_train}")
    if model is not None and b < smallest_batch(model):
        layers = batch_coupled_layers(model)
        raise ConfigError(f"{what} {b} is too small for task {task.name!r}: its model has BatchNorm (layer "
                          f"{layers[0]!r}), which needs more than one example per batch in training; "
                          f"use a {what} of at least 2")
    return b
