"""Find a Task by name, by ``file.py:function`` or by ``package.module:function``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

from ..errors import TaskError
from .base import OPTIMIZERS, Task


def _builtin(module: str) -> Callable[[], Task]:
    def make() -> Task:
        return importlib.import_module(f"batchscope.tasks.{module}").make_task()
    return make


BUILTINS: dict[str, Callable[[], Task]] = {
    "mnist1d": _builtin("mnist1d"),
    "digits": _builtin("digits"),
    "dots": _builtin("dots"),
    "text": _builtin("text"),
}
DEFAULT_TASK = "mnist1d"

_HINT = "use a built-in name (" + ", ".join(BUILTINS) + "), path/to/file.py:make_task or package.module:make_task"


def _import_file(path: Path):
    name = f"batchscope_user_task_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TaskError(f"cannot import task file {path}: it is not a Python source file; {_HINT}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(name, None)
        raise TaskError(f"task file {path} failed to import: {type(e).__name__}: {e}") from e
    return module


def load_task(spec: "str | Task") -> Task:
    """Resolve ``spec`` to a Task: a Task object, a built-in name, or ``module_or_file:function``."""
    if isinstance(spec, Task):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise TaskError(f"task must be a name or 'module:function', got {spec!r}; {_HINT}")
    spec = spec.strip()
    if spec in BUILTINS:
        return BUILTINS[spec]()
    if ":" not in spec:
        raise TaskError(f"unknown task {spec!r}; {_HINT}")
    where, _, func_name = spec.rpartition(":")
    if not func_name.isidentifier():
        raise TaskError(f"task {spec!r}: {func_name!r} is not a function name; {_HINT}")
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where)
        if not path.is_file():
            raise TaskError(f"task file {where!r} does not exist; check the path (relative to {Path.cwd()})")
        module = _import_file(path)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise TaskError(f"cannot import module {where!r} for task {spec!r} ({e}); "
                            "install it or put it on PYTHONPATH, or pass a file path") from e
    factory = getattr(module, func_name, None)
    if factory is None or not callable(factory):
        raise TaskError(f"{where!r} has no function {func_name!r}; define `def {func_name}() -> batchscope.Task`")
    try:
        task = factory()
    except TaskError:
        raise
    except Exception as e:
        raise TaskError(f"{spec} raised {type(e).__name__}: {e}") from e
    if not isinstance(task, Task):
        raise TaskError(f"{spec} returned {type(task).__name__}, not a batchscope.Task; "
                        "return batchscope.Task(name=..., make_model=..., train_data=..., loss_fn=..., target=...)")
    validate_task(task)
    return task


def validate_task(task: Task) -> Task:
    """Cheap structural checks that turn later, obscure failures into one clear message."""
    try:
        n = len(task.train_data)  # type: ignore[arg-type]
    except TypeError as e:
        raise TaskError(f"task {task.name!r}: train_data must be a map-style Dataset with len()") from e
    if n == 0:
        raise TaskError(f"task {task.name!r}: the training set is empty; give it at least a few hundred examples")
    if n < 8:
        raise TaskError(f"task {task.name!r}: the training set has only {n} examples; "
                        "batch-size measurements need at least 8 (preferably hundreds)")
    if task.val_data is not None and len(task.val_data) == 0:  # type: ignore[arg-type]
        raise TaskError(f"task {task.name!r}: val_data is empty; pass None to evaluate on the training set")
    if task.target.kind == "metric" and task.metric_fn is None:
        raise TaskError(f"task {task.name!r}: the target is a metric but metric_fn is None")
    if task.target.split == "val" and task.val_data is None:
        raise TaskError(f"task {task.name!r}: the target is on 'val' but there is no val_data; "
                        "use Target(..., split='train') or give val_data")
    if task.optimizer not in OPTIMIZERS:
        raise TaskError(f"task {task.name!r}: unknown optimizer {task.optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    return task
