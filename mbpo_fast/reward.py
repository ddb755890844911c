"""Reward functions r(obs, act, next_obs) for planning with a learned model (:class:`MPC`).

Built-in functions for gymnasium tasks (same formulas as csrc/include/mbpo_fast/reward.h, which
the native planner evaluates without calling back into Python)::

    fn = mbpo_fast.reward_fn("Pendulum-v1")
    r = fn(obs, act, next_obs)          # float32 [B, 3], [B, 1], [B, 3] -> float32 [B]

=====================  ========================================================================
Pendulum-v1            -(th^2 + 0.1 thdot^2 + 0.001 u^2), th = atan2(obs[1], obs[0]),
                       thdot = obs[2], u = clip(act[0], -2, 2)                       (exact)
InvertedPendulum-v4/5  1 if next_obs is not terminal else 0                         (exact)
HalfCheetah-v4/v5      next_obs[8] - 0.1 |act|^2
Hopper-v4/v5           next_obs[5] + healthy(next_obs) - 1e-3 |act|^2
Walker2d-v4/v5         next_obs[8] + healthy(next_obs) - 1e-3 |act|^2
=====================  ========================================================================

The locomotion rewards use the x velocity at the end of the step (in the observation) where
gymnasium averages the velocity over the frame skip (x is not observed); mbrl-lib and the PETS
code make the same approximation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import _backend

__all__ = ["BuiltinReward", "RewardFn", "reward_env_ids", "reward_fn"]

#: Signature of a reward function: (obs, act, next_obs) -> float [B].
RewardFn = Callable[[Any, Any, Any], Any]


def reward_env_ids() -> list[str]:
    """gymnasium env ids with a built-in reward function."""
    return list(_backend.ops.reward_env_ids())


class BuiltinReward:
    """The reward function of one gymnasium task; create it with :func:`reward_fn`.

    Call ``fn(obs, act, next_obs)`` with float arrays [B, obs_dim], [B, act_dim],
    [B, obs_dim] (or single rows); returns float32 [B] (or a scalar array for single rows).
    ``native_id`` is the id the native planner uses to evaluate the same function in C++.
    """

    __slots__ = ("env_id", "native_id")

    def __init__(self, env_id: str, native_id: int) -> None:
        self.env_id = env_id
        self.native_id = int(native_id)

    def __call__(self, obs: Any, act: Any, next_obs: Any) -> np.ndarray:
        obs, act, next_obs = np.asarray(obs), np.asarray(act), np.asarray(next_obs)
        single = obs.ndim == 1
        if single:
            obs, act, next_obs = obs[None], act[None], next_obs[None]
        out = _backend.ops.reward(self.native_id, obs, act, next_obs)
        return out[0] if single else out

    def __repr__(self) -> str:
        return f"reward_fn({self.env_id!r})"

    def __reduce__(self):
        return (reward_fn, (self.env_id,))


def reward_fn(env_id: str) -> BuiltinReward:
    """The built-in reward function of a gymnasium task (see the module docstring).

    Raises ValueError listing the known ids for any other env id; pass your own callable
    ``(obs, act, next_obs) -> float [B]`` to :class:`MPC` instead.
    """
    if not isinstance(env_id, str):
        raise TypeError(f"env_id: expected a gymnasium env id string, got {type(env_id).__name__}")
    return BuiltinReward(env_id, _backend.ops.reward_id(env_id))
