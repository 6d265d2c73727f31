"""What timing a framework's own steps on a throw-away copy needs: the global random states put back."""

from __future__ import annotations

import random

import numpy as np
import torch


def random_states() -> tuple:
    """torch (CPU and CUDA), numpy and Python random states, as they are now."""
    return (torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            np.random.get_state(), random.getstate())


def restore_random_states(states: tuple) -> None:
    cpu, cuda, np_state, py_state = states
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    np.random.set_state(np_state)
    random.setstate(py_state)
