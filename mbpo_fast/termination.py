"""Termination functions: which model-predicted transitions end an episode.

MBPO's branched rollouts need ``terminated`` for every predicted transition. The true
condition lives inside the simulator; for the gymnasium MuJoCo tasks it is a function of
the next observation, which :func:`termination_fn` reproduces exactly (gymnasium 1.x, v5 and
v4, default parameters, ``terminate_when_unhealthy=True``)::

    fn = mbpo_fast.termination_fn("Hopper-v5")
    done = fn(obs, act, next_obs)        # next_obs [B, 11] -> bool [B]

The checks (obs = the observation step() returns; x, or x and y, excluded):

============================  ================================================================
Hopper-v4/v5                  not (all(-100 < obs[1:] < 100) and 0.7 < obs[0] < inf
                              and -0.2 < obs[1] < 0.2)
Walker2d-v4/v5                not (0.8 < obs[0] < 2.0 and -1.0 < obs[1] < 1.0)
Ant-v4/v5                     not (isfinite(obs[:27]).all() and 0.2 <= obs[0] <= 1.0)
Humanoid-v4/v5                not (1.0 < obs[0] < 2.0)
InvertedPendulum-v4/v5        not isfinite(obs).all() or abs(obs[1]) > 0.2
HalfCheetah-v4/v5, Pendulum-v1  never
============================  ================================================================

Two residual differences come from state that is not in the observation: Hopper checks the
unclipped joint velocities against +-100 while its observation clips them to +-10, and Ant
also requires the excluded x, y position to be finite. Neither occurs in real episodes
(tests/test_termination.py compares with the environments' own flag over thousands of steps).

Custom tasks: anything with the same signature works wherever a termination function is
accepted, e.g. ``BranchedRollout(model, agent, termination=my_fn)`` with::

    def my_fn(obs, act, next_obs):   # float32 [B, obs_dim], [B, act_dim], [B, obs_dim]
        return next_obs[:, 0] < 0.3  # -> bool [B]

Built-in functions carry ``env_id`` and ``native_id`` so the native rollout engine evaluates
the same check in C++ (csrc/include/mbpo_fast/termination.h) without calling back into Python.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from enum import IntEnum
from typing import Any

import numpy as np

from . import _backend

__all__ = [
    "KNOWN_ENV_IDS",
    "BuiltinTermination",
    "TerminationFn",
    "TerminationId",
    "as_termination_fn",
    "termination_fn",
]

#: Signature of a termination function: (obs, act, next_obs) -> bool [B].
TerminationFn = Callable[[Any, Any, Any], Any]


class TerminationId(IntEnum):
    """Stable ids of the built-in termination functions (same values as the C++ enum)."""

    NEVER = 0
    HOPPER = 1
    WALKER2D = 2
    ANT = 3
    HUMANOID = 4
    INVERTED_PENDULUM = 5
    HALF_CHEETAH = 6
    PENDULUM = 7


#: gymnasium env ids with a built-in termination function, and their ids.
_ENV_TO_ID: dict[str, TerminationId] = {
    "Hopper-v5": TerminationId.HOPPER,
    "Hopper-v4": TerminationId.HOPPER,
    "Walker2d-v5": TerminationId.WALKER2D,
    "Walker2d-v4": TerminationId.WALKER2D,
    "HalfCheetah-v5": TerminationId.HALF_CHEETAH,
    "HalfCheetah-v4": TerminationId.HALF_CHEETAH,
    "Ant-v5": TerminationId.ANT,
    "Ant-v4": TerminationId.ANT,
    "Humanoid-v5": TerminationId.HUMANOID,
    "Humanoid-v4": TerminationId.HUMANOID,
    "InvertedPendulum-v5": TerminationId.INVERTED_PENDULUM,
    "InvertedPendulum-v4": TerminationId.INVERTED_PENDULUM,
    "Pendulum-v1": TerminationId.PENDULUM,
}

KNOWN_ENV_IDS: tuple[str, ...] = tuple(_ENV_TO_ID)


def _is_torch_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _native_cuda() -> bool:
    return _backend.name == "native" and bool(_backend.ops.build_info()["cuda_compiled"])


class BuiltinTermination:
    """The termination function of one gymnasium task; create it with :func:`termination_fn`.

    Call: ``fn(obs, act, next_obs)``. ``obs`` and ``act`` are accepted for signature
    compatibility and ignored (the built-in conditions depend on next_obs only).
    ``next_obs``: numpy array (or torch tensor) [..., obs_dim], any real dtype; float64 is
    checked in float64, everything else as float32. Returns bool with the leading shape
    ``[...]`` (numpy, or a torch bool tensor on next_obs's device for a tensor input; CUDA
    tensors run the CUDA kernel when the native extension has CUDA, in float32).
    Raises ValueError when obs_dim is not a width the task produces.

    Attributes: ``env_id`` (str) and ``native_id`` (int, a :class:`TerminationId`) that native
    code uses to run the identical C++ check.
    """

    __slots__ = ("env_id", "native_id")

    def __init__(self, env_id: str, native_id: int) -> None:
        self.env_id = env_id
        self.native_id = int(native_id)

    def __call__(self, obs: Any, act: Any, next_obs: Any) -> Any:
        del obs, act  # the built-in conditions only look at the next observation
        if _is_torch_tensor(next_obs):
            return self._torch(next_obs)
        return self._numpy(np.asarray(next_obs))

    def _torch(self, next_obs: Any) -> Any:
        torch = sys.modules["torch"]
        t = next_obs.detach()
        if t.ndim == 0:
            raise ValueError(f"next_obs: expected shape (..., obs_dim), got {tuple(t.shape)}")
        if t.is_cuda and _native_cuda():
            # On the GPU with a CUDA-enabled native backend: the CUDA kernel, no host round
            # trip; it reads float32 (a float64 tensor is rounded to float32 first).
            x = t.reshape(-1, t.shape[-1]).float().contiguous()
            out = torch.empty(x.shape[0], dtype=torch.bool, device=x.device)
            with torch.cuda.device(x.device):
                stream = torch.cuda.current_stream().cuda_stream
                _backend.ops.cuda_termination(
                    self.native_id, x.data_ptr(), x.shape[0], x.shape[1], out.data_ptr(), stream
                )
            return out.reshape(t.shape[:-1])
        # Host ops: a device tensor is copied to the host and the flags copied back.
        if t.dtype != torch.float64:
            t = t.float()  # bf16/half/int -> float32, like the numpy path
        flags = self._numpy(t.cpu().numpy())
        return torch.from_numpy(flags).to(next_obs.device)

    def _numpy(self, x: np.ndarray) -> np.ndarray:
        if x.ndim == 0:
            raise ValueError(f"next_obs: expected shape (..., obs_dim), got {x.shape}")
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        return _backend.ops.termination(self.native_id, flat).reshape(lead)

    def __repr__(self) -> str:
        return f"termination_fn({self.env_id!r})"

    def __reduce__(self):  # picklable by id (e.g. for subprocess workers)
        return (termination_fn, (self.env_id,))


def termination_fn(env_id: str) -> BuiltinTermination:
    """The termination function ``(obs, act, next_obs) -> bool [B]`` of a gymnasium task.

    env_id: one of :data:`KNOWN_ENV_IDS` (Hopper, Walker2d, HalfCheetah, Ant, Humanoid,
    InvertedPendulum in v5 and v4; Pendulum-v1). Ant accepts the 27-dim observation MBPO uses
    (``include_cfrc_ext_in_observation=False``) as well as the default widths; Humanoid accepts
    the 45-dim one (the four ``include_*_in_observation=False``) and the others.

    Raises ValueError for any other id; pass your own callable with the same signature instead.
    """
    if not isinstance(env_id, str):
        raise TypeError(f"env_id: expected a gymnasium env id string, got {type(env_id).__name__}")
    if env_id not in _ENV_TO_ID:
        raise ValueError(
            f"env_id: no built-in termination function for {env_id!r}; known ids: "
            f"{', '.join(KNOWN_ENV_IDS)}. For another task pass your own callable "
            "(obs, act, next_obs) -> bool[B], "
            "e.g. BranchedRollout(model, agent, termination=my_fn)."
        )
    return BuiltinTermination(env_id, _ENV_TO_ID[env_id])


def as_termination_fn(termination: str | TerminationFn) -> TerminationFn:
    """A termination function from an env id (-> :func:`termination_fn`) or a callable (as is).

    Lets classes accept ``termination="Hopper-v5"`` or ``termination=my_fn`` alike.
    """
    if isinstance(termination, str):
        return termination_fn(termination)
    if callable(termination):
        return termination
    raise TypeError(
        "termination: expected a gymnasium env id (str) or a callable "
        "(obs, act, next_obs) -> bool[B], "
        f"got {type(termination).__name__}"
    )
