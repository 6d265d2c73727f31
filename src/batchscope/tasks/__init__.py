"""Training problems: the Task dataclass, the built-in tasks and the loader for user tasks."""

from .base import OPTIMIZERS, Target, Task, accuracy
from .loading import BUILTINS, DEFAULT_TASK, load_task, validate_task

__all__ = ["OPTIMIZERS", "Task", "Target", "accuracy", "BUILTINS", "DEFAULT_TASK", "load_task", "validate_task"]
