"""batchscope: which batch size and learning rate to train with, measured, with the evidence.

The public names are imported on first use, so that ``import batchscope`` (and the command line
starting) does not wait for torch until something needs it.
"""

from __future__ import annotations

import importlib
import sys
import types

from .errors import BatchscopeError, ConfigError, DivergedError, TaskError

__version__ = "0.1.0"

_LAZY = {"Target": "tasks", "Task": "tasks", "load_task": "tasks",
         "Callback": "train", "TrainConfig": "train", "TrainResult": "train", "evaluate": "train", "train": "train"}

__all__ = ["BatchscopeError", "ConfigError", "DivergedError", "TaskError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'batchscope' has no attribute {name!r}")


class _Package(types.ModuleType):
    """``batchscope.train`` stays the function when the submodule of the same name is imported."""

    def __setattr__(self, name, value):
        if name in _LAZY and isinstance(value, types.ModuleType):
            self.__dict__.pop(name, None)  # looked up lazily (the function) on next access
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
