"""Facts about the device a profile was measured on, so a profile says where it holds."""

from __future__ import annotations

import os
import platform
from typing import Optional

import torch

from .memory import available_ram


def _cpuinfo() -> tuple[Optional[str], Optional[int]]:
    """(model name, physical cores) from /proc/cpuinfo where there is one."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return None, None
    name, cores, phys = None, set(), None
    for line in text.splitlines():
        key, _, value = (s.strip() for s in line.partition(":"))
        if key == "model name" and name is None:
            name = value
        elif key == "physical id":
            phys = value
        elif key == "core id":
            cores.add((phys, value))
    return name, (len(cores) or None)


def _total_ram() -> Optional[int]:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def cpu_facts() -> dict:
    name, cores = _cpuinfo()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        isa = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - older torch
        isa = None
    return {
        "type": "cpu",
        "name": name or platform.processor() or platform.machine(),
        "physical_cores": cores,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "torch_threads": torch.get_num_threads(),
        "isa": isa,
        "total_memory": _total_ram(),
        "available_memory": available_ram(),
        "load_average": _load_average(),
        "torch": torch.__version__,
    }


def _load_average() -> Optional[float]:
    """1-minute load: above the usable CPUs, other work competed with the timed steps."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def cuda_facts(device: "torch.device | str" = "cuda") -> dict:
    device = torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    free, total = torch.cuda.mem_get_info(index)
    major, minor = props.major, props.minor
    return {
        "type": "cuda",
        "name": props.name,
        "index": index,
        "compute_capability": f"{major}.{minor}",
        "multiprocessors": props.multi_processor_count,
        "total_memory": int(total),
        "free_memory": int(free),
        "bf16": bool(torch.cuda.is_bf16_supported()),
        "fp16": (major, minor) >= (5, 3),          # native half arithmetic
        "fp16_tensor_cores": major >= 7,           # Volta and later
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "host": cpu_facts(),
    }


def device_facts(device: "torch.device | str" = "cpu") -> dict:
    device = torch.device(device)
    return cuda_facts(device) if device.type == "cuda" else cpu_facts()
