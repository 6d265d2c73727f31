"""The hardware half of batchscope: what fits in memory and how step time grows with the batch.

``profile_hardware(task)`` measures both and returns a :class:`HardwareProfile` (JSON round-trip),
which later commands reuse with ``--profile profile.json``.
"""

from .ceiling import Ceiling, MemoryBudgetError, Probe, ProbeResult, bisect_ceiling, find_ceiling, fit_memory
from .device import cpu_facts, cuda_facts, device_facts
from .fit import LinearFit, fit_line, fit_step_time, knee_from_line
from .memory import available_ram, cpu_memory_probe, cpu_memory_supported, cuda_memory_probe
from .oom import is_out_of_memory
from .profile import HardwareProfile, ProfilePoint, batch_grid, load_profile_for, profile_hardware, resolve_budget
from .step import StepRunner, probe_indices
from .steptime import StepTimeModel, knee
from .timing import StepTiming, step_time_probe
from .units import format_bytes, parse_bytes

__all__ = [
    "HardwareProfile", "ProfilePoint", "profile_hardware", "load_profile_for", "batch_grid", "resolve_budget",
    "Ceiling", "MemoryBudgetError", "Probe", "ProbeResult", "find_ceiling", "bisect_ceiling", "fit_memory",
    "LinearFit", "fit_line", "fit_step_time", "knee_from_line", "StepTimeModel", "knee",
    "cpu_memory_probe", "cuda_memory_probe", "cpu_memory_supported", "available_ram",
    "StepRunner", "probe_indices", "StepTiming", "step_time_probe",
    "cpu_facts", "cuda_facts", "device_facts", "is_out_of_memory", "parse_bytes", "format_bytes",
]
