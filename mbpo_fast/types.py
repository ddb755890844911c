"""Plain data types shared across the package."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Transition(NamedTuple):
    """A batch of transitions (leading batch dims ``...``; usually ``[B]``).

    obs:        float32 [..., obs_dim]
    act:        float32 [..., act_dim]
    rew:        float32 [...]
    next_obs:   float32 [..., obs_dim]
    terminated: bool    [...]   true environment termination (never time-limit truncation)
    """

    obs: np.ndarray
    act: np.ndarray
    rew: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
