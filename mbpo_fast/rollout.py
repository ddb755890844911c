"""Branched rollouts: short model rollouts started from real states (MBPO's data generator).

::

    rollout = mf.BranchedRollout(model, agent, termination="Hopper-v5")
    stats = rollout.run(real_pool, model_pool, num_starts=100_000, horizon=5, seed=7)

One call samples ``num_starts`` start states uniformly from the real pool and advances all of
them together: per step the SAC actor's stochastic action, one ensemble step (one random elite
per row, sampled Δobs and reward), the termination function on the sampled next state, then
the surviving rows' transitions go into the model pool in one ``add_batch``. Rows that
terminate are stored with ``terminated=True`` and stop; rows whose prediction is not finite
are dropped (never stored) and counted; the horizon end is a truncation (the last transitions
are stored with ``terminated=False``). Each step works on the compacted alive rows only.

Two engines run the same semantics:

* ``engine="native"`` (chosen by ``"auto"`` whenever the model is an
  :class:`~mbpo_fast.EnsembleDynamics` on the CPU, the agent a CPU :class:`~mbpo_fast.SAC` and
  both pools :class:`~mbpo_fast.ReplayPool`): the whole rollout is ONE call of the active
  backend (``mbpo_fast.rollout_native.run_native_rollout``: C++ with the GIL released, or
  the Numba mirror) — actor MLP and tanh-Gaussian sampling, fused ensemble step, termination
  (built-in in C++, or a Python callable per step) and the append into the model pool's ring.
  Every random number comes from `seed` through Philox (csrc/include/mbpo_fast/rollout.h);
  the pools' and the agent's own generators are not touched.
* ``engine="python"`` (any duck-typed model/agent): a vectorized numpy loop. Start rows come
  from ``real_pool.sample_obs`` (the pool's own generator), actor noise from the agent's
  generator, and the ensemble draw of step ``t`` uses the Philox seed :func:`step_seed`
  ``(seed, t)``, so a run is a pure function of those states and `seed`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ._numba.rollout import disagreement_sample_rows
from .termination import TerminationFn, as_termination_fn

__all__ = ["BranchedRollout", "RolloutStats", "step_seed"]

_SEED_MOD = 1 << 63


def step_seed(seed: int, t: int) -> int:
    """Philox seed of the ensemble draw at rollout step `t`: ``(seed * 1000003 + t) mod 2**63``.

    Distinct steps of one call, and calls with different seeds, use different Philox keys.
    """
    return (int(seed) * 1_000_003 + int(t)) % _SEED_MOD


@dataclass
class RolloutStats:
    """What one :meth:`BranchedRollout.run` did.

    rows_added: transitions written to the model pool.
    mean_length: stored transitions per start row (``rows_added / num_starts``).
    frac_terminated: fraction of start rows that ended by the termination function.
    nonfinite: rows dropped because the model predicted a NaN/inf next state or reward.
    mean_disagreement: mean ensemble disagreement (``model.disagreement``) over the visited
        (obs, act) pairs, measured on a sample of each step's rows (``disagreement_rows``);
        NaN when off.
    seconds: wall-clock time of the call.
    """

    rows_added: int = 0
    mean_length: float = 0.0
    frac_terminated: float = 0.0
    nonfinite: int = 0
    mean_disagreement: float = float("nan")
    seconds: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


class BranchedRollout:
    """Vectorized branched rollouts of a learned model under the current policy.

    Args:
        model: an :class:`~mbpo_fast.EnsembleDynamics` (or anything with
            ``step(obs, act, seed=...) -> (next_obs [B, obs_dim], rew [B])`` and, for the
            disagreement statistic, ``disagreement(obs, act) -> float32 [B]``).
        agent: a :class:`~mbpo_fast.SAC` (anything with ``act(obs [B, obs_dim]) ->
            [B, act_dim]`` sampling stochastic actions), or a plain callable ``obs -> act``.
        termination: a gymnasium env id (uses :func:`~mbpo_fast.termination_fn`) or a callable
            ``(obs, act, next_obs) -> bool [B]``.
        disagreement_rows: rows of each step on which ``model.disagreement`` is measured
            (every elite's forward per measured row): ``"auto"`` (default: one stored row in
            256, at least one, so the statistic costs ~1 % of the rollout at any size),
            ``"all"`` (every row: ~E times the step's model work), or the first ``n`` rows
            (an int; 0 disables the statistic).
        engine: ``"auto"`` (native when the objects allow it, see the module docstring),
            ``"native"`` (raise TypeError when they do not) or ``"python"``.
    """

    def __init__(self, model: Any, agent: Any, termination: str | TerminationFn,
                 disagreement_rows: int | str = "auto", engine: str = "auto") -> None:
        if engine not in ("auto", "native", "python"):
            raise ValueError(f"engine: expected 'auto', 'native' or 'python', got {engine!r}")
        if not hasattr(model, "step"):
            raise TypeError(f"model: expected an ensemble with a step() method, got "
                            f"{type(model).__name__}")
        if hasattr(agent, "act"):
            self._policy: Callable[[np.ndarray], Any] = agent.act
        elif callable(agent):
            self._policy = agent
        else:
            raise TypeError(f"agent: expected a SAC agent (with act()) or a callable obs -> act, "
                            f"got {type(agent).__name__}")
        from .rollout_native import disagreement_rule

        self._disagreement_rule = disagreement_rule(disagreement_rows)  # ValueError if invalid
        self.model = model
        self.agent = agent
        self.termination = as_termination_fn(termination)
        self.disagreement_rows = disagreement_rows
        self.engine = engine
        if engine == "native":
            why = self._native_unsupported(None, None)
            if why:
                raise TypeError(f"engine='native': {why}")

    def _native_unsupported(self, real_pool: Any, model_pool: Any) -> str | None:
        """Why the native engine cannot run these objects (None when it can)."""
        from .ensemble import EnsembleDynamics
        from .pool import ReplayPool
        from .sac import SAC

        if not isinstance(self.model, EnsembleDynamics):
            return f"model is a {type(self.model).__name__}, not an EnsembleDynamics"
        if self.model.device.type != "cpu":
            return f"model is on {self.model.device}, the native engine runs on the CPU"
        if not isinstance(self.agent, SAC):
            return f"agent is a {type(self.agent).__name__}, not a SAC agent"
        if self.agent.device.type != "cpu":
            return f"agent is on {self.agent.device}, the native engine runs on the CPU"
        for name, pool in (("real_pool", real_pool), ("model_pool", model_pool)):
            if pool is not None and not isinstance(pool, ReplayPool):
                return f"{name} is a {type(pool).__name__}, not a ReplayPool"
            if pool is not None and pool.device != "cpu":  # else pybind's opaque TypeError
                return f"{name} is on {pool.device}, the native engine runs on CPU pools"
        return None

    def run(self, real_pool: Any, model_pool: Any, num_starts: int, horizon: int,
            seed: int = 0) -> RolloutStats:
        """Rolls `num_starts` rows for up to `horizon` steps into `model_pool`; returns stats.

        real_pool: source of start states (``sample_obs``; must not be empty).
        model_pool: receives float32 obs [n, obs_dim], act [n, act_dim], rew [n],
            next_obs [n, obs_dim], bool terminated [n] once per step (alive rows only).
        """
        for name, v, lo in (("num_starts", num_starts, 1), ("horizon", horizon, 0)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
        if len(real_pool) == 0:
            raise ValueError("real_pool is empty: collect real transitions before rollouts")
        if getattr(model_pool, "device", "cpu") != "cpu":  # device pools: the CUDA engine
            return self._run_cuda(real_pool, model_pool, int(num_starts), int(horizon), seed)
        if self.engine != "python":
            why = self._native_unsupported(real_pool, model_pool)
            if why is None:
                return self._run_native(real_pool, model_pool, int(num_starts), int(horizon), seed)
            if self.engine == "native":
                raise TypeError(f"engine='native': {why}")
        t0 = time.perf_counter()
        num_starts, horizon = int(num_starts), int(horizon)
        obs_dim = real_pool.obs_dim
        obs = np.ascontiguousarray(real_pool.sample_obs(num_starts), dtype=np.float32)
        rows_added = 0
        terminated_rows = 0
        nonfinite = 0
        dis_sum, dis_count = 0.0, 0
        for t in range(horizon):
            act = np.ascontiguousarray(_to_numpy(self._policy(obs)), dtype=np.float32)
            k = disagreement_sample_rows(self._disagreement_rule, obs.shape[0])
            if k and hasattr(self.model, "disagreement"):
                d = _to_numpy(self.model.disagreement(obs[:k], act[:k]))
                dis_sum += float(np.sum(d, dtype=np.float64))
                dis_count += k
            next_obs, rew = self.model.step(obs, act, seed=step_seed(seed, t))
            next_obs = np.ascontiguousarray(_to_numpy(next_obs), dtype=np.float32)
            rew = np.ascontiguousarray(_to_numpy(rew), dtype=np.float32).reshape(-1)
            if next_obs.shape != obs.shape or rew.shape != (obs.shape[0],):
                raise ValueError(f"model.step returned next_obs {next_obs.shape} and rew "
                                 f"{rew.shape}; expected {obs.shape} and ({obs.shape[0]},)")
            finite = np.isfinite(next_obs).all(axis=1) & np.isfinite(rew)
            if not finite.all():
                nonfinite += int(finite.size - np.count_nonzero(finite))
                obs, act, next_obs, rew = obs[finite], act[finite], next_obs[finite], rew[finite]
            if obs.shape[0] == 0:
                break
            done = np.asarray(_to_numpy(self.termination(obs, act, next_obs)), dtype=bool)
            if done.shape != (obs.shape[0],):
                raise ValueError(f"termination returned shape {done.shape}, expected "
                                 f"({obs.shape[0]},)")
            model_pool.add_batch(obs, act, rew, next_obs, done)
            rows_added += obs.shape[0]
            n_done = int(np.count_nonzero(done))
            terminated_rows += n_done
            if n_done == obs.shape[0]:
                break
            obs = next_obs[~done] if n_done else next_obs
            assert obs.shape[1] == obs_dim
        return RolloutStats(
            rows_added=rows_added,
            mean_length=rows_added / num_starts,
            frac_terminated=terminated_rows / num_starts,
            nonfinite=nonfinite,
            mean_disagreement=dis_sum / dis_count if dis_count else float("nan"),
            seconds=time.perf_counter() - t0,
        )


    def _run_cuda(self, real_pool: Any, model_pool: Any, num_starts: int, horizon: int,
                  seed: int) -> RolloutStats:
        from .cuda_ops import branched_rollout

        return _stats(branched_rollout(self.model, self.agent, self.termination, real_pool,
                                       model_pool, num_starts, horizon, int(seed)))

    def _run_native(self, real_pool: Any, model_pool: Any, num_starts: int, horizon: int,
                    seed: int) -> RolloutStats:
        from .rollout_native import run_native_rollout

        out = run_native_rollout(
            self.model, self.agent, self.termination, real_pool, model_pool, num_starts, horizon,
            int(seed), compute_disagreement=self._disagreement_rule != 0,
            disagreement_rows=self._disagreement_rule)
        return _stats(out)


def _stats(out: dict) -> RolloutStats:
    """RolloutStats from the statistics dict of a native engine (CPU or CUDA)."""
    return RolloutStats(
        rows_added=int(out["rows_added"]),
        mean_length=float(out["mean_length"]),
        frac_terminated=float(out["frac_terminated"]),
        nonfinite=int(out["nonfinite"]),
        mean_disagreement=float(out["mean_disagreement"]),
        seconds=float(out["seconds"]),
    )


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # torch tensor
        return x.detach().cpu().numpy()
    return np.asarray(x)
