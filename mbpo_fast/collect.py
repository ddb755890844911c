"""Real-environment data collection: step a gymnasium env with the agent, fill a ReplayPool.

MBPO bootstraps on ``terminated`` only, so the collector keeps the two ends apart:

* a true termination is stored with ``terminated=True``;
* a time-limit truncation is stored with ``terminated=False`` (the state is not terminal,
  the episode was merely cut);
* the stored ``next_obs`` is always the TRUE next observation returned by ``step`` (the
  final observation of an episode), never the first observation of the next episode.

Single envs (``gymnasium.Env``) and vector envs (``gymnasium.vector.VectorEnv``) are both
supported. For vector envs every autoreset mode of gymnasium 1.x is handled:

* ``NEXT_STEP`` (the default): the step after an episode ends only resets that sub-env
  (its action is ignored, reward 0); that row is not a transition and is not stored;
* ``SAME_STEP``: step returns the next episode's first observation; the final observation
  is taken from ``info["final_obs"]``;
* ``DISABLED``: the collector resets finished sub-envs itself (``reset_mask``).

Example::

    env = gymnasium.make("Hopper-v5")
    collector = EnvCollector(env, pool, seed=0)
    collector.collect(None, 5000)                  # uniform random actions (seeded)
    info = collector.step(agent)                   # agent.act(obs) -> action
    for ep in info.episodes: print(ep.episode_return, ep.length)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["EnvCollector", "EpisodeStats", "Policy", "StepInfo"]

#: A policy: ``obs -> action`` callable, an object with ``.act(obs)`` (e.g. ``mf.SAC``), or
#: None for uniform random actions from the env's action space. Called with float32 obs
#: ``[obs_dim]`` (``[num_envs, obs_dim]`` for a vector env); returns the action(s).
Policy = Callable[[np.ndarray], Any] | Any | None


@dataclass(frozen=True)
class EpisodeStats:
    """A finished episode. ``terminated``: ended by a true termination (False: truncated)."""

    episode_return: float
    length: int
    terminated: bool
    env_index: int = 0  # sub-env of a vector env (0 for a single env)


@dataclass(frozen=True)
class StepInfo:
    """What one :meth:`EnvCollector.step` did.

    For a single env: ``obs``/``next_obs`` float32 [obs_dim], ``action`` [act_dim], ``reward``
    float, ``terminated``/``truncated`` bool. For a vector env the same with a leading
    ``[num_envs]`` axis; ``transition`` (bool [num_envs]) is False for rows that were an
    autoreset (NEXT_STEP mode) and therefore not a transition. ``next_obs`` is always the true
    next observation (the final one when the episode ended). ``stored``: rows written to the
    pool (non-finite rows are skipped, see :attr:`EnvCollector.num_nonfinite`).
    ``episodes``: the episodes that ended at this step.
    """

    obs: np.ndarray
    action: np.ndarray
    reward: Any
    next_obs: np.ndarray
    terminated: Any
    truncated: Any
    transition: Any
    stored: int
    episodes: tuple[EpisodeStats, ...]


def _is_vector_env(env: Any) -> bool:
    try:
        from gymnasium.vector import VectorEnv
    except ImportError:  # pragma: no cover - gymnasium is a dependency
        return False
    return isinstance(env, VectorEnv)


def _autoreset_mode(env: Any) -> str:
    mode = getattr(env, "autoreset_mode", None)
    if mode is None:
        mode = (getattr(env, "metadata", None) or {}).get("autoreset_mode", "NextStep")
    return getattr(
        mode, "value", mode
    )  # AutoresetMode enum -> "NextStep" | "SameStep" | "Disabled"


class EnvCollector:
    """Steps a gymnasium env (single or vector) with a policy and writes transitions into a pool.

    Args:
        env: a ``gymnasium.Env`` or ``gymnasium.vector.VectorEnv`` with Box observation and
            action spaces.
        pool: anything with ``add(obs, act, rew, next_obs, terminated)`` (one row; e.g.
            :class:`mbpo_fast.ReplayPool`); for vector envs ``add_batch`` with the same
            arguments is used when present. When the pool has ``obs_dim``/``act_dim`` they must
            match the env.
        seed: seeds the first ``env.reset`` (sub-env i of a vector env gets seed + i) and the
            action space used for random actions.

    The env is reset on the first :meth:`step`; after an episode ends the next one starts
    automatically. Counters: :attr:`env_steps` (transitions taken), :attr:`num_episodes`,
    :attr:`num_stored`, :attr:`num_nonfinite` (transitions with NaN/Inf that were not stored).
    """

    def __init__(self, env: Any, pool: Any, seed: int = 0) -> None:
        if not hasattr(pool, "add"):
            raise TypeError(f"pool: expected an object with add(...), got {type(pool).__name__}")
        self.env = env
        self.pool = pool
        self.seed = int(seed)
        self.is_vector = _is_vector_env(env)
        self.num_envs = int(env.num_envs) if self.is_vector else 1
        obs_space = env.single_observation_space if self.is_vector else env.observation_space
        act_space = env.single_action_space if self.is_vector else env.action_space
        if obs_space.shape is None or len(obs_space.shape) != 1:
            raise ValueError(f"env: expected a flat (1-D) observation space, got {obs_space}")
        if act_space.shape is None or len(act_space.shape) != 1:
            raise ValueError(f"env: expected a flat (1-D) Box action space, got {act_space}")
        self.obs_dim = int(obs_space.shape[0])
        self.act_dim = int(act_space.shape[0])
        for name, dim in (("obs_dim", self.obs_dim), ("act_dim", self.act_dim)):
            pool_dim = getattr(pool, name, None)
            if pool_dim is not None and int(pool_dim) != dim:
                raise ValueError(f"pool: {name} is {pool_dim} but the env has {name} {dim}")
        self.mode = _autoreset_mode(env) if self.is_vector else "single"
        if self.mode not in ("single", "NextStep", "SameStep", "Disabled"):
            raise ValueError(f"env: unsupported autoreset mode {self.mode!r}")
        env.action_space.seed(self.seed)

        self._obs: np.ndarray | None = None
        n = self.num_envs
        self._returns = np.zeros(n, dtype=np.float64)
        self._lengths = np.zeros(n, dtype=np.int64)
        self._autoreset = np.zeros(n, dtype=bool)  # NEXT_STEP: sub-envs whose next step resets
        self.env_steps = 0
        self.num_episodes = 0
        self.num_stored = 0
        self.num_nonfinite = 0

    # ------------------------------------------------------------------ state

    @property
    def obs(self) -> np.ndarray:
        """The observation the next action will be taken in (resets the env on first use)."""
        if self._obs is None:
            self._obs, _ = self.env.reset(seed=self.seed)
        return self._obs

    @property
    def episode_return(self) -> Any:
        """Return of the running episode (float; float64 [num_envs] for a vector env)."""
        return self._returns.copy() if self.is_vector else float(self._returns[0])

    @property
    def episode_length(self) -> Any:
        """Length of the running episode (int; int64 [num_envs] for a vector env)."""
        return self._lengths.copy() if self.is_vector else int(self._lengths[0])

    # ------------------------------------------------------------------ stepping

    def _action(self, policy: Policy, obs32: np.ndarray) -> np.ndarray:
        if policy is None:
            action = self.env.action_space.sample()
        elif hasattr(policy, "act"):
            action = policy.act(obs32)
        elif callable(policy):
            action = policy(obs32)
        else:
            raise TypeError(
                "policy: expected None, a callable obs -> action or an object with .act(obs), "
                f"got {type(policy).__name__}"
            )
        if hasattr(action, "detach"):  # torch tensor
            action = action.detach().cpu().numpy()
        action = np.asarray(action, dtype=self.env.action_space.dtype)
        expected = (self.num_envs, self.act_dim) if self.is_vector else (self.act_dim,)
        if action.shape != expected:
            raise ValueError(
                f"policy: returned an action of shape {action.shape}, expected {expected}"
            )
        return action

    def step(self, policy: Policy = None) -> StepInfo:
        """Takes one env step (all sub-envs of a vector env), stores it, starts new episodes."""
        obs = np.asarray(self.obs)
        obs32 = obs.astype(np.float32)
        action = self._action(policy, obs32)
        next_obs, reward, terminated, truncated, info = self.env.step(action)
        if not self.is_vector:
            return self._single(obs32, action, next_obs, reward, terminated, truncated)
        return self._vector(obs32, action, next_obs, reward, terminated, truncated, info)

    def collect(self, policy: Policy, num_steps: int) -> list[EpisodeStats]:
        """Calls :meth:`step` ``num_steps`` times; returns the episodes that finished meanwhile.

        For a vector env each step advances every sub-env (up to num_envs transitions).
        """
        if int(num_steps) < 0:
            raise ValueError(f"num_steps: expected >= 0, got {num_steps}")
        finished: list[EpisodeStats] = []
        for _ in range(int(num_steps)):
            finished.extend(self.step(policy).episodes)
        return finished

    # ------------------------------------------------------------------ internals

    def _store(self, obs, act, rew, next_obs, term) -> int:
        """Adds the finite rows of a [N, ...] batch; returns how many were stored."""
        ok = (
            np.isfinite(obs).all(axis=1)
            & np.isfinite(act).all(axis=1)
            & np.isfinite(rew)
            & np.isfinite(next_obs).all(axis=1)
        )
        bad = int((~ok).sum())
        if bad:
            self.num_nonfinite += bad
            warnings.warn(
                f"EnvCollector: skipped {bad} transition(s) with NaN/Inf values "
                f"({self.num_nonfinite} so far); non-finite data never enters the pool",
                RuntimeWarning,
                stacklevel=3,
            )
            obs, act, rew, next_obs, term = obs[ok], act[ok], rew[ok], next_obs[ok], term[ok]
        n = len(obs)
        if n == 0:
            return 0
        if n > 1 and hasattr(self.pool, "add_batch"):
            self.pool.add_batch(obs, act, rew, next_obs, term)
        else:
            for i in range(n):
                self.pool.add(obs[i], act[i], rew[i], next_obs[i], bool(term[i]))
        self.num_stored += n
        return n

    def _finish(self, index: int, terminated: bool) -> EpisodeStats:
        stats = EpisodeStats(
            episode_return=float(self._returns[index]),
            length=int(self._lengths[index]),
            terminated=bool(terminated),
            env_index=index,
        )
        self._returns[index] = 0.0
        self._lengths[index] = 0
        self.num_episodes += 1
        return stats

    def _single(self, obs32, action, next_obs, reward, terminated, truncated) -> StepInfo:
        terminated, truncated, reward = bool(terminated), bool(truncated), float(reward)
        next32 = np.asarray(next_obs, dtype=np.float32)
        stored = self._store(
            obs32[None],
            action.astype(np.float32)[None],
            np.asarray([reward], dtype=np.float32),
            next32[None],
            np.asarray([terminated]),
        )
        self.env_steps += 1
        self._returns[0] += reward
        self._lengths[0] += 1
        episodes: tuple[EpisodeStats, ...] = ()
        if terminated or truncated:
            episodes = (self._finish(0, terminated),)
            self._obs, _ = self.env.reset()
        else:
            self._obs = next_obs
        return StepInfo(
            obs32, action, reward, next32, terminated, truncated, True, stored, episodes
        )

    def _vector(self, obs32, action, next_obs, reward, terminated, truncated, info) -> StepInfo:
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool)
        reward = np.asarray(reward, dtype=np.float64)
        next_obs = np.asarray(next_obs)
        done = terminated | truncated

        # Rows that are real transitions, and the true next observation of each.
        transition = np.ones(self.num_envs, dtype=bool)
        true_next = next_obs.copy()
        if self.mode == "NextStep":
            transition = ~self._autoreset  # these rows only reset their sub-env
            self._autoreset = done.copy()
        elif self.mode == "SameStep" and done.any():
            mask = np.asarray(info.get("_final_obs", done), dtype=bool)
            for i in np.flatnonzero(mask):
                true_next[i] = info["final_obs"][i]

        rows = np.flatnonzero(transition)
        next32 = true_next.astype(np.float32)
        stored = self._store(
            obs32[rows],
            action[rows].astype(np.float32),
            reward[rows].astype(np.float32),
            next32[rows],
            terminated[rows],
        )
        self.env_steps += len(rows)
        self._returns[rows] += reward[rows]
        self._lengths[rows] += 1
        episodes = tuple(self._finish(int(i), bool(terminated[i])) for i in rows if done[i])

        if self.mode == "Disabled" and done.any():
            next_obs, _ = self.env.reset(options={"reset_mask": done.copy()})
        self._obs = next_obs  # NEXT_STEP: finished rows hold the final obs; their action is ignored
        return StepInfo(
            obs32, action, reward, next32, terminated, truncated, transition, stored, episodes
        )
