"""batchscope: which batch size and learning rate to train with, measured, with the evidence."""

from .errors import BatchscopeError, ConfigError, DivergedError, TaskError
from .tasks import Target, Task, load_task
from .train import Callback, TrainConfig, TrainResult, evaluate, train

__version__ = "0.1.0"

__all__ = [
    "BatchscopeError", "ConfigError", "DivergedError", "TaskError",
    "Task", "Target", "load_task",
    "Callback", "TrainConfig", "TrainResult", "evaluate", "train",
]
