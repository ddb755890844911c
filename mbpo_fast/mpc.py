"""Model-predictive control with a learned ensemble (PETS-style planning).

:class:`MPC` plans an action for the current observation by scoring candidate action
sequences with particle rollouts through the ensemble: random shooting or the cross-entropy
method (CEM), trajectory sampling TS-inf (each particle keeps one member for the whole
horizon) or TS-1 (member redrawn every step). The whole plan — iterations x population x
particles x horizon through the fused ensemble step, rewards, terminations and the elite
refit — is ONE call into the active backend (``_backend.ops.mpc_plan``: the C++ planner with
the GIL released, or its Numba mirror). A CUDA :class:`EnsembleDynamics` plans on its device
(``cuda_ops.mpc_plan``: csrc/cuda/planner.cu, the same candidates and random numbers). The
exact algorithm and randomness are in csrc/include/mbpo_fast/planner.h; docs/planning.md
explains the choices.

    mpc = mf.MPC(model, env.action_space.low, env.action_space.high, reward_fn="Pendulum-v1")
    obs, _ = env.reset(seed=0); mpc.reset()
    while True:
        obs, rew, terminated, truncated, _ = env.step(mpc.plan(obs))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import _backend
from .ensemble_infer import EnsembleInference
from .rollout_native import resolve_termination

__all__ = ["MPC"]

_OPTIMIZERS = ("cem", "random")
_PROPAGATIONS = ("ts_inf", "ts_1")


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    return int(value)


def _bounds(name: str, value: Any, act_dim: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    if arr.shape != (act_dim,):
        raise ValueError(f"{name}: expected shape ({act_dim},), got {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: expected finite bounds, got {arr.tolist()}")
    return arr


def _resolve_reward(reward_fn: Any) -> int | Callable:
    """0 (the model's reward), a built-in reward id, or a callable."""
    if reward_fn is None:
        return 0
    if isinstance(reward_fn, str):
        return int(_backend.ops.reward_id(reward_fn))
    native_id = getattr(reward_fn, "native_id", None)
    if native_id is not None and hasattr(reward_fn, "env_id"):
        return int(native_id)
    if callable(reward_fn):
        return reward_fn
    raise TypeError(
        "reward_fn: expected None (the model's reward output), a gymnasium env id (str), "
        f"mf.reward_fn(env_id) or a callable (obs, act, next_obs) -> float [B], got "
        f"{type(reward_fn).__name__}"
    )


class MPC:
    """PETS-style model-predictive controller over an ensemble dynamics model.

    Args:
        model: an :class:`EnsembleDynamics` (its parameters are borrowed per call: training
            between plans is seen by the next plan) or an :class:`EnsembleInference`. A model on
            a CUDA device plans there (csrc/cuda/planner.cu: the particle rollouts on the GPU,
            the same candidates, members and noise as the CPU planner); it takes built-in
            rewards/terminations only (TypeError for Python callables).
        action_low, action_high: float [act_dim], the action box (low < high, finite).
        reward_fn: None (the reward the model predicts, its last output), a gymnasium env id
            with a built-in reward (``mf.reward_fn``), or a callable
            ``(obs, act, next_obs) -> float [B]`` (float32 arrays [B, obs_dim], [B, act_dim],
            [B, obs_dim]; called once per horizon step with all rows, holding the GIL).
        termination: None (never), an env id, ``mf.termination_fn(env_id)`` or a callable
            ``(obs, act, next_obs) -> bool [B]``: a terminated particle collects no further
            reward.
        horizon: planning horizon (steps).
        optimizer: ``"cem"`` or ``"random"`` (random shooting: one batch of ``population``
            uniform sequences, the best one's first action; elites/iterations/alpha unused).
        population: candidate sequences per iteration.
        elites: CEM: the best candidates the sampling distribution is refit to.
        iterations: CEM iterations.
        alpha: CEM: weight of the previous mean/variance in each refit (0 <= alpha < 1).
        particles: model rollouts per candidate; its value is the mean return over them.
        propagation: ``"ts_inf"`` (a particle keeps its member for the horizon) or ``"ts_1"``
            (member redrawn every step).
        seed: the planner's seed; call k plans with ``derive_seed(seed, STREAM_PLAN_SEED, k)``.

    ``plan`` warm-starts CEM from the previous mean shifted by one step (the new last step is
    the middle of the box); ``reset`` forgets it (call it at the start of each episode).
    """

    def __init__(
        self,
        model: Any,
        action_low: Any,
        action_high: Any,
        reward_fn: str | Callable | None = None,
        termination: str | Callable | None = None,
        horizon: int = 30,
        optimizer: str = "cem",
        population: int = 500,
        elites: int = 50,
        iterations: int = 5,
        alpha: float = 0.1,
        particles: int = 20,
        propagation: str = "ts_inf",
        seed: int = 0,
    ) -> None:
        self.model = model
        if self._on_cuda:
            self.obs_dim, self.act_dim = int(model.obs_dim), int(model.act_dim)
        else:
            inference = self._inference()
            self.obs_dim, self.act_dim = inference.obs_dim, inference.act_dim
        self.action_low = _bounds("action_low", action_low, self.act_dim)
        self.action_high = _bounds("action_high", action_high, self.act_dim)
        if not (self.action_low < self.action_high).all():
            a = int(np.argmax(~(self.action_low < self.action_high)))
            raise ValueError(
                "action_low, action_high: expected low < high, got "
                f"[{self.action_low[a]}, {self.action_high[a]}] at index {a}"
            )
        if optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {_OPTIMIZERS}, got {optimizer!r}")
        if propagation not in _PROPAGATIONS:
            raise ValueError(f"propagation: expected one of {_PROPAGATIONS}, got {propagation!r}")
        self.horizon = _positive("horizon", horizon)
        self.population = _positive("population", population)
        self.elites = _positive("elites", elites)
        self.iterations = _positive("iterations", iterations)
        self.particles = _positive("particles", particles)
        alpha = float(alpha)
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha: expected 0 <= alpha < 1, got {alpha}")
        if optimizer == "cem" and self.elites > self.population:
            raise ValueError(
                f"elites: expected 1 <= elites <= population = {self.population}, got {self.elites}"
            )
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not (
            0 <= seed < 2**64
        ):
            raise ValueError(f"seed: expected an int in [0, 2**64), got {seed!r}")
        self.optimizer, self.propagation, self.alpha, self.seed = (
            optimizer, propagation, alpha, int(seed))
        self.reward_fn = reward_fn
        self.termination = termination
        self._reward = _resolve_reward(reward_fn)
        self._termination = 0 if termination is None else resolve_termination(termination)
        if self._on_cuda and not (isinstance(self._reward, int)
                                  and isinstance(self._termination, int)):
            raise TypeError(
                "reward_fn / termination: with a CUDA model the planner runs on the device and "
                "takes None (the model's reward), a built-in env id or mf.reward_fn / "
                "mf.termination_fn; a Python callable needs the rows on the host: plan with a CPU "
                "model for callables")
        self.calls = 0
        self.last_stats: dict = {}
        self.reset()

    # ------------------------------------------------------------------ state

    @property
    def _on_cuda(self) -> bool:
        """A CUDA EnsembleDynamics: the plan runs on its device (csrc/cuda/planner.cu)."""
        device = getattr(self.model, "device", None)
        return not isinstance(self.model, EnsembleInference) and getattr(
            device, "type", "cpu") == "cuda"

    def _inference(self) -> EnsembleInference:
        if isinstance(self.model, EnsembleInference):
            return self.model
        inference = getattr(self.model, "inference", None)
        if not isinstance(inference, EnsembleInference):
            raise TypeError(
                "model: expected an EnsembleDynamics or EnsembleInference, got "
                f"{type(self.model).__name__}"
            )
        return inference

    @property
    def mean(self) -> np.ndarray:
        """The warm start of the next plan, float32 [horizon, act_dim] (a copy)."""
        return self._mean.copy()

    def reset(self) -> None:
        """Forget the warm start (the mean returns to the middle of the box). The call counter
        keeps running, so that successive episodes draw different numbers."""
        mid = 0.5 * (self.action_low + self.action_high)
        self._mean = np.ascontiguousarray(np.tile(mid, (self.horizon, 1)), dtype=np.float32)

    def state_dict(self) -> dict:
        """Everything ``plan`` depends on besides the model: warm start and call counter."""
        return {"mean": self._mean.copy(), "calls": int(self.calls)}

    def load_state_dict(self, state: dict) -> None:
        mean = np.asarray(state["mean"], dtype=np.float32)
        if mean.shape != (self.horizon, self.act_dim):
            raise ValueError(
                f"state['mean']: expected shape ({self.horizon}, {self.act_dim}), got {mean.shape}"
            )
        self._mean = np.ascontiguousarray(mean)
        self.calls = int(state["calls"])

    # ------------------------------------------------------------------ planning

    def _model_args(self) -> tuple:
        inf = self._inference()
        return (*inf._params(), inf.elites)

    def plan(self, obs: Any) -> np.ndarray:
        """The action for ``obs`` (float [obs_dim]): float32 [act_dim], inside the box.

        One native call (GIL released). Raises ValueError for a wrong shape or a non-finite
        observation, leaving the planner unchanged. ``last_stats`` holds the call's dict
        (best_value, elite_value, failed, iterations, seconds).
        """
        obs = np.asarray(obs)
        if obs.shape != (self.obs_dim,):
            raise ValueError(f"obs: expected shape ({self.obs_dim},), got {obs.shape}")
        if self._on_cuda:
            from . import cuda_ops

            action, mean, stats = cuda_ops.mpc_plan(
                self.model, obs, self._mean, self.action_low, self.action_high, self._reward,
                self._termination, self.optimizer, self.population, self.elites,
                self.iterations, self.alpha, self.particles, self.propagation, self.horizon,
                self.seed, self.calls)
            return self._advance(action, mean, stats)
        inf = self._inference()
        action, mean, stats = _backend.ops.mpc_plan(
            obs,
            self._mean,
            self.action_low,
            self.action_high,
            *self._model_args(),
            reward=self._reward,
            termination=self._termination,
            optimizer=self.optimizer,
            population=self.population,
            num_elites=self.elites,
            iterations=self.iterations,
            alpha=self.alpha,
            particles=self.particles,
            propagation=self.propagation,
            horizon=self.horizon,
            seed=self.seed,
            call=self.calls,
            weights_bf16=inf.weights_bf16,
        )
        return self._advance(action, mean, stats)

    def _advance(self, action, mean, stats) -> np.ndarray:
        """Shift the final mean into the next warm start, count the call, keep the stats."""
        mean = np.array(mean, dtype=np.float32)
        mean[:-1] = mean[1:].copy()
        mean[-1] = 0.5 * (self.action_low + self.action_high)
        self._mean = mean
        self.calls += 1
        self.last_stats = dict(stats)
        return np.asarray(action, dtype=np.float32)

    def evaluate(self, obs: Any, actions: Any, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Scores action sequences ``actions`` float [N, H, act_dim] from ``obs`` [obs_dim] with
        ``particles`` rollouts each, exactly as one plan iteration does with iteration seed
        ``seed``. Returns (values float64 [N]: mean return over particles, -inf when one
        produced a non-finite value; members int64 [H, N * particles]: the ensemble member each
        row used at each step, row n * particles + p)."""
        if self._on_cuda:
            from . import cuda_ops

            return cuda_ops.mpc_evaluate(self.model, np.asarray(obs), np.asarray(actions),
                                         self._reward, self._termination, self.particles,
                                         self.propagation, seed)
        inf = self._inference()
        return _backend.ops.mpc_evaluate(
            np.asarray(obs),
            np.asarray(actions),
            *self._model_args(),
            reward=self._reward,
            termination=self._termination,
            particles=self.particles,
            propagation=self.propagation,
            seed=seed,
            weights_bf16=inf.weights_bf16,
        )

    def __repr__(self) -> str:
        return (
            f"MPC(optimizer={self.optimizer!r}, horizon={self.horizon}, "
            f"population={self.population}, elites={self.elites}, iterations={self.iterations}, "
            f"particles={self.particles}, propagation={self.propagation!r})"
        )
