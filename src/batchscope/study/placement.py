"""Which devices a study runs on: `--devices cuda:0,cuda:1 | auto | cpu` -> one worker per entry."""

from __future__ import annotations

from typing import Optional

import torch

from ..errors import ConfigError


def resolve_devices(text: Optional[str]) -> Optional[list[str]]:
    """The device of each worker, checked against this machine; None when no devices were asked for.

    ``auto``: every visible GPU, or one CPU worker without one. ``cpu`` may repeat (``cpu,cpu``: two
    CPU workers). A CUDA device may appear once: two workers on one GPU would share its memory and
    make each other's runs slower, which is what ``--workers`` on one device already does.
    """
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ConfigError(f"--devices needs device names such as cuda:0,cuda:1, auto or cpu. Got {text!r} instead.")
    if names == ["auto"]:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(n)] or ["cpu"]
    out = []
    for name in names:
        if name == "cpu":
            out.append("cpu")
            continue
        if not name.startswith("cuda:") or not name[5:].isdigit():
            raise ConfigError(f"--devices takes cpu, cuda:N (with its index) or auto. Got {name!r} in {text!r}.")
        if not torch.cuda.is_available():
            raise ConfigError(f"--devices {text}: this machine has no CUDA device (PyTorch sees none); "
                              "run on a GPU machine or pass --devices cpu")
        index, count = int(name[5:]), torch.cuda.device_count()
        if index >= count:
            raise ConfigError(f"--devices {text}: {name} does not exist; this machine has {count} GPU(s), "
                              f"cuda:0..cuda:{count - 1}")
        if name in out:
            raise ConfigError(f"--devices {text}: {name} is listed twice; one worker per GPU")
        out.append(name)
    return out


def threads_per_worker(devices: list[str], cpus: int) -> int:
    """CPU threads for each worker: the cores shared among the CPU workers (a GPU worker needs few)."""
    on_cpu = sum(d == "cpu" for d in devices)
    return max(1, cpus // on_cpu) if on_cpu else max(1, min(4, cpus // len(devices)))
