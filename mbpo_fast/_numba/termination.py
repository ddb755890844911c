"""Numba mirror of csrc/include/mbpo_fast/termination.h and csrc/cpu/termination.cpp.

Same ops, arguments, ids, accepted observation widths and error messages as the native
``termination`` / ``termination_id`` / ``termination_env_ids``. Every comparison is made in
float64 on the value as given, like the C++ element body, so both backends agree bit for bit.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

# Stable ids shared with the C++ enum TerminationId (never renumber).
NEVER = 0
HOPPER = 1
WALKER2D = 2
ANT = 3
HUMANOID = 4
INVERTED_PENDULUM = 5
HALF_CHEETAH = 6
PENDULUM = 7
NUM_TERMINATION_IDS = 8

_NAMES = (
    "Never",
    "Hopper",
    "Walker2d",
    "Ant",
    "Humanoid",
    "InvertedPendulum",
    "HalfCheetah",
    "Pendulum",
)

# Same order as kEnvs in csrc/cpu/termination.cpp.
_ENVS = (
    ("Hopper-v5", HOPPER),
    ("Hopper-v4", HOPPER),
    ("Walker2d-v5", WALKER2D),
    ("Walker2d-v4", WALKER2D),
    ("HalfCheetah-v5", HALF_CHEETAH),
    ("HalfCheetah-v4", HALF_CHEETAH),
    ("Ant-v5", ANT),
    ("Ant-v4", ANT),
    ("Humanoid-v5", HUMANOID),
    ("Humanoid-v4", HUMANOID),
    ("InvertedPendulum-v5", INVERTED_PENDULUM),
    ("InvertedPendulum-v4", INVERTED_PENDULUM),
    ("Pendulum-v1", PENDULUM),
)

_ANT_STATE_DIM = 27  # qpos[2:] (13) + qvel (14): the part gymnasium checks for finiteness

# Humanoid-v5: 45 plus any subset of cinert 130, cvel 78, qfrc_actuator 17, cfrc_ext 78.
_HUMANOID_WIDTHS = frozenset(
    [376]
    + [
        45 + 130 * (m & 1) + 78 * ((m >> 1) & 1) + 17 * ((m >> 2) & 1) + 78 * ((m >> 3) & 1)
        for m in range(16)
    ]
)

_EXPECTED = {
    NEVER: ">= 1",
    HOPPER: "11",
    WALKER2D: "17",
    ANT: "27 (no contact forces), 105 (Ant-v5 default) or 111 (Ant-v4 use_contact_forces)",
    HUMANOID: "376 (Humanoid-v4), 348 (Humanoid-v5 default), "
    "45 (the four include_*_in_observation off) "
    "or 45 plus any of cinert 130 / cvel 78 / qfrc_actuator 17 / cfrc_ext 78",
    INVERTED_PENDULUM: "4",
    HALF_CHEETAH: "17",
    PENDULUM: "3",
}


def _accepts(tid: int, d: int) -> bool:
    if tid == NEVER:
        return d >= 1
    if tid == ANT:
        return d in (27, 105, 111)
    if tid == HUMANOID:
        return d in _HUMANOID_WIDTHS
    return d == int(_EXPECTED[tid])


def termination_env_ids() -> list[str]:
    """The gymnasium env ids with a built-in termination function."""
    return [e for e, _ in _ENVS]


def termination_id(env_id: str) -> int:
    """The built-in termination id of a gymnasium env id; ValueError listing known ids otherwise."""
    for name, tid in _ENVS:
        if env_id == name:
            return tid
    raise ValueError(
        f"env_id: no built-in termination function for '{env_id}'; known ids: "
        f"{', '.join(termination_env_ids())}. For another task pass your own termination callable "
        "(obs, act, next_obs) -> bool[B] instead of an env id."
    )


@nb.njit(cache=True, inline="always")
def _finite_all(x, n):
    for i in range(n):
        if not math.isfinite(np.float64(x[i])):
            return False
    return True


@nb.njit(cache=True, inline="always")
def is_terminal(tid, x, obs_dim):
    """Element body: mirrors mbpo_fast::is_terminal (x: one observation row)."""
    if tid == HOPPER:
        z = np.float64(x[0])
        angle = np.float64(x[1])
        healthy = 0.7 < z and z < math.inf and -0.2 < angle and angle < 0.2
        i = 1
        while healthy and i < obs_dim:
            s = np.float64(x[i])
            healthy = -100.0 < s and s < 100.0
            i += 1
        return not healthy
    if tid == WALKER2D:
        z = np.float64(x[0])
        angle = np.float64(x[1])
        return not (0.8 < z and z < 2.0 and -1.0 < angle and angle < 1.0)
    if tid == ANT:
        z = np.float64(x[0])
        return not (_finite_all(x, _ANT_STATE_DIM) and 0.2 <= z and z <= 1.0)
    if tid == HUMANOID:
        z = np.float64(x[0])
        return not (1.0 < z and z < 2.0)
    if tid == INVERTED_PENDULUM:
        angle = np.float64(x[1])
        return (not _finite_all(x, obs_dim)) or abs(angle) > 0.2
    return False


@nb.njit(cache=True)
def _terminations(tid, next_obs, out):
    obs_dim = next_obs.shape[1]
    for b in range(next_obs.shape[0]):
        out[b] = is_terminal(tid, next_obs[b], obs_dim)


def termination(termination_id: int, next_obs) -> np.ndarray:
    """Terminated flags bool[B] of next_obs [B, obs_dim] (float32, or float64 kept in float64)."""
    tid = int(termination_id)
    arr = np.asarray(next_obs)
    if arr.dtype.kind not in "fiub":
        raise TypeError(
            f"next_obs: expected a real numeric dtype (float32 preferred), got {arr.dtype}"
        )
    if arr.ndim != 2:
        raise ValueError(f"next_obs: expected shape (batch, obs_dim), got {arr.shape}")
    if not 0 <= tid < NUM_TERMINATION_IDS:
        raise ValueError(f"termination_id: expected an id in [0, {NUM_TERMINATION_IDS}), got {tid}")
    if not _accepts(tid, arr.shape[1]):
        raise ValueError(
            f"next_obs: {_NAMES[tid]} termination expects an observation width of "
            f"{_EXPECTED[tid]}, "
            f"got {arr.shape[1]}"
        )
    dtype = np.float64 if arr.dtype == np.float64 else np.float32
    arr = np.ascontiguousarray(arr, dtype=dtype)
    out = np.zeros(arr.shape[0], dtype=np.bool_)
    if arr.shape[0] > 0 and tid not in (NEVER, HALF_CHEETAH, PENDULUM):
        _terminations(tid, arr, out)
    return out
