"""The time-to-target model: pure functions, numbers in, numbers out.

Notation (docs/design.md): B batch size, B_crit the gradient noise scale, S_min / E_min the minimum
steps / examples to reach a target (McCandlish et al. 2018, arXiv 1812.06162, eqs. 2.11-2.12):

    S(B) = S_min (1 + B_crit / B)        steps to target
    E(B) = E_min (1 + B / B_crit)        examples to target, E_min = S_min * B_crit
    t(B) = alpha + beta * B               seconds per optimizer step (hardware.steptime.StepTimeModel)
    T(B) = S(B) * t(B)                    wall-clock time to target (:func:`time_to_target`)

On the line T is minimised at B* = sqrt(alpha * B_crit / beta) (dT/dB = S_min (beta - alpha B_crit / B^2));
with beta = 0 it falls at every batch and the memory ceiling or the data set decides. With gradient
accumulation (micro-batch m, k passes) a step costs k t(m) instead: the fixed cost is paid per pass.
"""

from __future__ import annotations

import math


def steps_to_target(b: float, s_min: float, b_noise: float) -> float:
    return s_min * (1.0 + b_noise / b)


def examples_to_target(b: float, s_min: float, b_noise: float) -> float:
    return steps_to_target(b, s_min, b_noise) * b


def s_min_from_reference(steps_ref: float, b_ref: float, b_noise: float) -> float:
    """Invert S(B_ref) = S_min (1 + B_crit / B_ref): the steps an infinitely large batch would need."""
    return steps_ref / (1.0 + b_noise / b_ref)


def time_to_target(b: float, s_min: float, b_noise: float, step_seconds: float) -> float:
    """T(B) = S(B) t_step(B): wall-clock seconds to the target at batch ``b``.

    ``step_seconds`` is one optimizer step at ``b`` as the one step-time model prices it (accumulation,
    devices and all-reduce included: ``plan.devices.DataParallelStep``). ``find`` (through
    ``recommend``) and ``plan`` (through ``frontier``) both rank batches by this.
    """
    return steps_to_target(b, s_min, b_noise) * step_seconds


def sgd_lr(b: float, b_ref: float, lr_ref: float, b_noise: float) -> float:
    """SGD step size eps(B) = eps_max / (1 + B_crit / B), anchored at a known-good (b_ref, lr_ref).

    McCandlish et al. 2018 eq. 2.6: linear in B while B << B_crit (Goyal et al. 2017's linear rule),
    saturating at eps_max = lr_ref (1 + B_crit / b_ref) for B >> B_crit.
    """
    return lr_ref * (1.0 + b_noise / b_ref) / (1.0 + b_noise / b)


def adam_lr(b: float, b_ref: float, lr_ref: float) -> float:
    """Square-root scaling for Adam-type optimizers (Malladi et al. 2022, the SDE view of Adam)."""
    return lr_ref * math.sqrt(b / b_ref)


def adascale_gain(sigma2: float, g2: float, scale: float) -> float:
    """AdaScale gain r = (sigma^2 + |G|^2) / (sigma^2 / s + |G|^2) for s = B / B0 (Johnson et al. 2020)."""
    return (sigma2 + g2) / (sigma2 / scale + g2)
