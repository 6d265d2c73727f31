"""The time-to-target model: pure functions, numbers in, numbers out.

Notation (docs/design.md): B batch size, B_noise the gradient noise scale, S_min / E_min the minimum
steps / examples to reach a target (McCandlish et al. 2018, arXiv 1812.06162, eqs. 2.11-2.12):

    S(B) = S_min (1 + B_noise / B)        steps to target
    E(B) = E_min (1 + B / B_noise)        examples to target, E_min = S_min * B_noise
    t(B) = alpha + beta * B               seconds per optimizer step (hardware profile)
    T(B) = S(B) * t(B)                    wall-clock time to target

T is minimised at B* = sqrt(alpha * B_noise / beta). With gradient accumulation (micro-batch m,
k = ceil(B / m) passes) a step costs k * (alpha + beta * m) instead: the fixed cost is paid per pass.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from ..hardware.steptime import StepTimeModel


def steps_to_target(b: float, s_min: float, b_noise: float) -> float:
    return s_min * (1.0 + b_noise / b)


def examples_to_target(b: float, s_min: float, b_noise: float) -> float:
    return steps_to_target(b, s_min, b_noise) * b


def s_min_from_reference(steps_ref: float, b_ref: float, b_noise: float) -> float:
    """Invert S(B_ref) = S_min (1 + B_noise / B_ref): the steps an infinitely large batch would need."""
    return steps_ref / (1.0 + b_noise / b_ref)


def step_time_curve(alpha: float, beta: float, measured: Sequence[tuple[float, float]] = ()) -> Callable[[float], float]:
    """Seconds for one forward/backward pass of ``m`` examples: the one step-time model of a profile.

    See :class:`batchscope.hardware.steptime.StepTimeModel` (measured medians inside their range,
    bounded and interpolated log-log; the line alpha + beta m outside it).
    """
    return StepTimeModel.from_measurements(alpha, beta, measured)


def step_seconds(b: int, alpha: float, beta: float, micro_batch: int | None = None, devices: int = 1,
                 curve: Callable[[float], float] | None = None) -> float:
    """Seconds per optimizer step for a global batch ``b`` over ``devices`` workers, without communication.

    Each device runs b / devices examples as passes of at most ``micro_batch``; every pass pays the
    fixed cost alpha. This is :func:`batchscope.plan.devices.step_time` (the one N-device model) with
    no all-reduce; pass a cluster there to price the gradient synchronisation.
    """
    from .devices import step_time

    t_pass = curve if curve is not None else (lambda m: alpha + beta * m)
    return step_time(b, devices, t_pass, 0.0, None, ceiling=micro_batch).seconds


def time_to_target(b: int, s_min: float, b_noise: float, alpha: float, beta: float,
                   micro_batch: int | None = None, devices: int = 1) -> float:
    return steps_to_target(b, s_min, b_noise) * step_seconds(b, alpha, beta, micro_batch, devices)


def optimal_batch(alpha: float, beta: float, b_noise: float) -> float:
    """The unconstrained minimiser of T(B) = S_min (1 + B_noise/B)(alpha + beta B): sqrt(alpha B_noise / beta).

    dT/dB = S_min (beta - alpha B_noise / B^2) = 0. With beta -> 0 (a step costs the same at any
    batch) the answer is unbounded: the memory ceiling or the data set decides.
    """
    if beta <= 0:
        return math.inf
    return math.sqrt(max(alpha, 0.0) * b_noise / beta)


def sgd_lr(b: float, b_ref: float, lr_ref: float, b_noise: float) -> float:
    """SGD step size eps(B) = eps_max / (1 + B_noise / B), anchored at a known-good (b_ref, lr_ref).

    McCandlish et al. 2018 eq. 2.6: linear in B while B << B_noise (Goyal et al. 2017's linear rule),
    saturating at eps_max = lr_ref (1 + B_noise / b_ref) for B >> B_noise.
    """
    return lr_ref * (1.0 + b_noise / b_ref) / (1.0 + b_noise / b)


def adam_lr(b: float, b_ref: float, lr_ref: float) -> float:
    """Square-root scaling for Adam-type optimizers (Malladi et al. 2022, the SDE view of Adam)."""
    return lr_ref * math.sqrt(b / b_ref)


def adascale_gain(sigma2: float, g2: float, scale: float) -> float:
    """AdaScale gain r = (sigma^2 + |G|^2) / (sigma^2 / s + |G|^2) for s = B / B0 (Johnson et al. 2020)."""
    return (sigma2 + g2) / (sigma2 / scale + g2)
