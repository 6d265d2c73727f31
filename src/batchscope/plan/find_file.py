"""A saved find result: reading it back (``FindResult.load``) and using its warm-up in one's own loop.

The file is the JSON of ``FindResult.to_dict()`` (what ``batchscope find --out`` writes) with a
``schema`` key added by ``FindResult.save``; files written by ``find --out`` carry no schema and are
recognised by their keys. Any other JSON (a hardware profile, a study, a training result) is
refused with a message naming what the file is and what to do instead.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import ConfigError
from ..serialize import read_json
from ..train import lr_factor

FIND_SCHEMA = "batchscope.find/1"
HARDWARE_SCHEMA = "batchscope.hardware/1"
FIND_KEYS = ("batch_size", "lr", "profile", "measuring")   # what every find result has at the top level
WRITE_ONE = "write one with FindResult.save(path) or `batchscope find --task NAME --out result.json`"


def is_find_document(doc) -> bool:
    """A find result's JSON: its schema, or (``find --out`` files) its top-level keys."""
    if not isinstance(doc, dict):
        return False
    if "schema" in doc:
        return doc["schema"] == FIND_SCHEMA
    return all(k in doc for k in FIND_KEYS)


def read_document(path: "str | Path", what: str = "find result", fix: str = WRITE_ONE) -> dict:
    """The JSON object in ``path``, or a ConfigError saying the file is missing, not JSON or not an object."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist; {fix}")
    try:
        doc = read_json(path)
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {str(path)!r} is not valid JSON ({e}); {fix}") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"{what} {str(path)!r} holds a JSON {type(doc).__name__}, not an object; {fix}")
    return doc


def read_find_document(path: "str | Path") -> dict:
    """The find result saved in ``path``; another kind of batchscope file is named as what it is."""
    doc = read_document(path)
    if is_find_document(doc):
        return doc
    if doc.get("schema") == HARDWARE_SCHEMA:
        raise ConfigError(f"{str(path)!r} is a hardware profile, not a find result; load it with "
                          "HardwareProfile.load(path) (the adaptive callbacks take either), or " + WRITE_ONE)
    kind = f"schema {doc['schema']!r}" if "schema" in doc else f"keys {', '.join(sorted(doc)[:6]) or 'none'}"
    raise ConfigError(f"{str(path)!r} is not a find result ({kind}; a find result has "
                      f"{', '.join(FIND_KEYS)}); {WRITE_ONE}")


def warmup_scheduler(optimizer: torch.optim.Optimizer, lr: float,
                     warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """``optimizer`` set to rate ``lr`` with batchscope's linear warm-up: step s runs at lr x (s+1)/warmup.

    The same factor as ``train`` applies (:func:`batchscope.train.lr_factor`, constant after the
    warm-up). With several parameter groups, each keeps its ratio to the first group's rate.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"lr_scheduler needs a torch.optim.Optimizer; got {type(optimizer).__name__}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"the recommended learning rate is {lr!r}, not a positive number; run find again")
    first = optimizer.param_groups[0]["lr"]
    for g in optimizer.param_groups:
        g["lr"] = lr * (g["lr"] / first if first else 1.0)
        g.pop("initial_lr", None)   # LambdaLR starts from the rate set here, not an earlier scheduler's
    w = int(warmup_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, None, w, "constant"))


def continuation(path: "str | Path") -> dict:
    """What `train --from-find` needs from a saved find result: the recommended batch, micro-batch, rate
    and warm-up, the task, and the saved measuring run (its path resolved beside the JSON)."""
    doc = read_find_document(path)
    saved = doc.get("checkpoint")
    if not saved or not saved.get("path"):
        raise ConfigError(f"{str(path)!r} holds no measuring-run state to continue (written without one, or by a "
                          "version before find saved it); run `batchscope find --out FILE` again, or train from "
                          "scratch with --batch-size and --lr")
    ckpt = Path(path).parent / saved["path"]
    if not ckpt.is_file():
        raise ConfigError(f"{str(path)!r} names the measuring run's state {saved['path']!r}, but {ckpt} does not "
                          "exist; keep the .ckpt file beside the result, or run find --out again")
    try:
        batch, micro, accumulation = int(doc["batch_size"]), int(doc["micro_batch"]), int(doc["accumulation"])
        lr, warmup = float(doc["lr"]), int(doc.get("warmup_steps", 0))
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"find result {str(path)!r} is incomplete ({type(e).__name__}: {e}); {WRITE_ONE}") from e
    return {"task_spec": doc.get("task_spec"), "task": doc.get("profile", {}).get("task"), "batch_size": batch,
            "micro_batch": micro if accumulation > 1 else None, "lr": lr, "warmup_steps": warmup,
            "checkpoint": str(ckpt), "saved": saved}
