"""Step time of one optimizer step on N data-parallel devices: compute, gradient sync, overlap.

    global batch B = N devices x k accumulation passes x m examples per pass (m <= memory ceiling)
    T_step(B, N)  = (k-1) t(m) + (t(m)^gamma + T_sync(N)^gamma)^(1/gamma) + o  (Pollux, comm.overlapped)
    T_sync(N)     = all-reduce of the gradient bytes over N devices            (comm.Cluster)

``t(m)`` is the one step-time model's time for a training pass of m examples on one device
(:class:`~batchscope.hardware.steptime.StepTimeModel`), ``o`` its per-step overhead (the real steps' cost
beyond the passes, 0 for a bare profile); :class:`DataParallelStep` composes them with
the split, the all-reduce and the overlap. `find --devices` and `plan` both evaluate it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ..errors import ConfigError
from ..hardware.steptime import StepTimeModel
from ..hardware.units import format_bytes
from .comm import Cluster, overlapped

# Bytes of optimizer state per parameter element, on top of weights and gradients (fp32 master copies).
OPTIMIZER_STATE = {"sgd": 1, "adam": 2, "adamw": 2}   # momentum buffer; first and second moments


class DeviceMemoryError(ConfigError):
    """The model (weights, gradients, optimizer state) does not fit one device: data parallelism replicates it."""


@dataclass(frozen=True)
class Split:
    devices: int
    micro_batch: int          # examples per forward/backward pass on one device
    accumulation: int         # passes per optimizer step on each device

    @property
    def batch_size(self) -> int:
        return self.devices * self.accumulation * self.micro_batch


@dataclass(frozen=True)
class StepTime:
    split: Split
    compute: float            # seconds of the k passes alone (and the per-step overhead)
    sync: float               # seconds of the gradient all-reduce alone
    seconds: float            # the step, with the overlap and the model's per-step overhead


def split_batch(b: int, n: int, ceiling: Optional[int] = None) -> Split:
    """Devices x accumulation x micro-batch for global batch ``b``, exactly (never a rounded batch).

    The micro-batch is the largest that fits the ceiling and divides the per-device batch.
    """
    if b % n:
        raise ConfigError(f"a global batch of {b} cannot be split evenly over {n} devices; "
                          f"use a multiple of {n} (for example {max(n, b // n * n)})")
    per_device = b // n
    if ceiling is None or per_device <= ceiling:
        return Split(n, per_device, 1)
    k = math.ceil(per_device / ceiling)
    while per_device % k:
        k += 1
    return Split(n, per_device // k, k)


@dataclass(frozen=True)
class DataParallelStep:
    """One optimizer step of a global batch on N data-parallel devices: ``step(b, n)`` -> :class:`StepTime`.

    ``model``: one device's step time; ``ceiling``: the largest micro-batch a pass may take (None:
    any); ``cluster``: how the gradients are all-reduced (None: no communication); ``grad_bytes``:
    what one all-reduce moves; ``gamma``: its overlap with the last backward pass (1: none).
    """

    model: StepTimeModel
    ceiling: Optional[int] = None
    cluster: Optional[Cluster] = None
    grad_bytes: float = 0.0
    gamma: float = 1.0

    def __call__(self, b: int, n: int = 1) -> StepTime:
        s = split_batch(b, n, self.ceiling)
        t_pass = self.model.pass_seconds(s.micro_batch)
        sync = self.cluster.allreduce_seconds(self.grad_bytes, n) if self.cluster is not None and n > 1 else 0.0
        return StepTime(s, self.model.seconds(s.micro_batch, s.accumulation), sync,
                        overlapped(t_pass, sync, self.gamma, s.accumulation) + self.model.overhead)


def static_bytes(parameters: int, optimizer: str, bytes_per_element: int = 4) -> int:
    """Weights + gradients + optimizer state of a replica: what every data-parallel device holds."""
    return parameters * bytes_per_element * (2 + OPTIMIZER_STATE.get(optimizer, 2))


def ceiling_on(device_memory: float, m0: Optional[float], m1: Optional[float], parameters: int,
               optimizer: str) -> int:
    """Largest micro-batch that fits ``device_memory`` bytes, from the profile's memory(B) = m0 + m1 B.

    Without a memory fit the model's static bytes stand in for m0, and any batch is taken to fit.
    """
    static = static_bytes(parameters, optimizer)
    floor = max(static, m0 or 0.0)
    if floor >= device_memory:
        raise DeviceMemoryError(
            f"one replica needs {format_bytes(floor)} before any activations (weights, gradients and "
            f"{optimizer} state of {parameters:,} parameters) but a device has {format_bytes(device_memory)}; "
            "data parallelism copies the whole model to every device: shard it (FSDP, ZeRO) or choose a "
            "device with more memory (--device-memory)")
    if not m1 or m1 <= 0:
        return 2**62
    fit = int((device_memory - floor) // m1)
    if fit < 1:
        raise DeviceMemoryError(f"not even one example fits in {format_bytes(device_memory)} with this model "
                                f"({format_bytes(m1)} per example above {format_bytes(floor)}); "
                                "choose a device with more memory (--device-memory)")
    return fit


def gradient_bytes(model, dtype=None) -> int:
    """Bytes one all-reduce moves: the trainable parameters' gradients.

    Gradients have their parameter's dtype. Under autocast (AMP) the parameters stay float32, so DDP
    all-reduces float32 gradients; only a compression hook (``fp16_compress_hook`` /
    ``bf16_compress_hook``) halves the traffic: pass ``dtype`` (torch.bfloat16) to model that.
    """
    import torch

    size = None if dtype is None else torch.empty((), dtype=dtype).element_size()
    return sum(p.numel() * (size or p.element_size()) for p in model.parameters() if p.requires_grad)
