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

Uncertainty-aware rollouts (off by default; exact rule in csrc/include/mbpo_fast/rollout.h,
step 4). The disagreement of a row is ``d(s, a)`` = the mean over the observation dimensions
of the unbiased variance (``ddof=1``, as ``torch.var``) across the elites of their predicted
mean next state. ``max_disagreement=x`` stops a row whose ``d > x`` before its transition is
stored (check, then store); ``max_disagreement="q0.9"`` uses the 0.9-quantile of ``d`` over the
start states (step 0) as ``x``. ``uncertainty_penalty=λ`` stores ``r - λ * sqrt(d)``. With either
on, every elite runs once on the alive rows and the sampled transition is taken from that same
pass (same member and noise as the plain rollout), so no member runs twice; with both off the
rollout is exactly the plain one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ._numba.rollout import check_uncertainty, disagreement_sample_rows, finite_quantile
from .termination import TerminationFn, as_termination_fn

__all__ = ["BranchedRollout", "RolloutStats", "parse_max_disagreement", "step_seed"]

_SEED_MOD = 1 << 63


def parse_max_disagreement(max_disagreement: Any) -> tuple[float, float]:
    """``(threshold, quantile)`` of the engines for a user's ``max_disagreement``: None ->
    ``(inf, -1)`` (no stop); a number x >= 0 -> ``(x, -1)``; ``"q0.9"`` -> ``(inf, 0.9)`` (the
    quantile of d over the start states). ValueError naming the argument otherwise."""
    if max_disagreement is None:
        return float("inf"), -1.0
    if isinstance(max_disagreement, str):
        text = max_disagreement.strip()
        if text[:1] in ("q", "Q"):
            try:
                q = float(text[1:])
            except ValueError:
                q = float("nan")
            if 0.0 <= q <= 1.0:
                return float("inf"), q
        raise ValueError("max_disagreement: expected None, a float >= 0 or a quantile string "
                         f"'q<p>' with 0 <= p <= 1 (e.g. 'q0.9'), got {max_disagreement!r}")
    if isinstance(max_disagreement, (int, float, np.integer, np.floating)) \
            and not isinstance(max_disagreement, bool):
        x = float(max_disagreement)
        if x >= 0.0:  # NaN fails here: a NaN threshold would silently never stop
            return x, -1.0
    raise ValueError("max_disagreement: expected None, a float >= 0 or a quantile string "
                     f"'q<p>' with 0 <= p <= 1 (e.g. 'q0.9'), got {max_disagreement!r}")


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
    frac_stopped: fraction of start rows whose rollout the stop rule (``max_disagreement``)
        ended; 0 when off.
    mean_penalty: mean ``uncertainty_penalty * sqrt(d)`` subtracted from the stored rewards;
        0 when off.
    mean_uncertainty: mean ``d(s, a)`` over the stored transitions; NaN when both uncertainty
        features are off.
    disagreement_threshold: the stop threshold used (resolved from the quantile form); NaN
        when the stop is off.
    """

    rows_added: int = 0
    mean_length: float = 0.0
    frac_terminated: float = 0.0
    nonfinite: int = 0
    mean_disagreement: float = float("nan")
    seconds: float = 0.0
    frac_stopped: float = 0.0
    mean_penalty: float = 0.0
    mean_uncertainty: float = float("nan")
    disagreement_threshold: float = float("nan")

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
        max_disagreement: stop a row whose disagreement ``d(s, a)`` (module docstring) exceeds
            this, before its transition is stored: None (default: never), a float >= 0, or a
            quantile string ``"q0.9"`` (the threshold is that quantile of ``d`` over the
            rollout's start states, recomputed at every :meth:`run`). Needs >= 2 elites.
        uncertainty_penalty: float >= 0; the stored reward is ``r - uncertainty_penalty *
            sqrt(d(s, a))`` (default 0: unchanged). Needs >= 2 elites when > 0.
        disagreement_rows: rows of each step on which ``model.disagreement`` is measured
            (every elite's forward per measured row): ``"auto"`` (default: one stored row in
            256, at least one, so the statistic costs ~1 % of the rollout at any size),
            ``"all"`` (every row: ~E times the step's model work), or the first ``n`` rows
            (an int; 0 disables the statistic).
        engine: ``"auto"`` (native when the objects allow it, see the module docstring),
            ``"native"`` (raise TypeError when they do not) or ``"python"``.
    """

    def __init__(self, model: Any, agent: Any, termination: str | TerminationFn,
                 max_disagreement: float | str | None = None, uncertainty_penalty: float = 0.0,
                 disagreement_rows: int | str = "auto", engine: str = "auto") -> None:
        if engine not in ("auto", "native", "python"):
            raise ValueError(f"engine: expected 'auto', 'native' or 'python', got {engine!r}")
        self._threshold, self._quantile = parse_max_disagreement(max_disagreement)
        if isinstance(uncertainty_penalty, bool) or not isinstance(
                uncertainty_penalty, (int, float, np.integer, np.floating)):
            raise ValueError(f"uncertainty_penalty: expected a finite float >= 0, got "
                             f"{uncertainty_penalty!r}")
        check_uncertainty(self._threshold, self._quantile, float(uncertainty_penalty))
        self.max_disagreement = max_disagreement
        self.uncertainty_penalty = float(uncertainty_penalty)
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
        if self.uncertain:
            self._check_elites()
        if getattr(model_pool, "device", "cpu") != "cpu":  # device pools: the CUDA engine
            return self._run_cuda(real_pool, model_pool, int(num_starts), int(horizon), seed)
        if self.engine != "python":
            why = self._native_unsupported(real_pool, model_pool)
            if why is None:
                return self._run_native(real_pool, model_pool, int(num_starts), int(horizon), seed)
            if self.engine == "native":
                raise TypeError(f"engine='native': {why}")
        if self.uncertain:
            return self._run_python_uncertain(real_pool, model_pool, int(num_starts),
                                              int(horizon), seed)
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
            done = self._terminate_and_store(model_pool, obs, act, rew, next_obs)
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


    @property
    def uncertain(self) -> bool:
        """Whether the stop rule or the penalty is on (then every elite runs on every row)."""
        return self._quantile >= 0.0 or self._threshold < float("inf") \
            or self.uncertainty_penalty != 0.0

    def _check_elites(self) -> None:
        elites = getattr(self.model, "elites", None)
        if elites is None or not hasattr(self.model, "predict"):
            raise TypeError("max_disagreement / uncertainty_penalty: the model needs predict() and "
                            f"elites; {type(self.model).__name__} lacks them")
        if len(elites) < 2:
            raise ValueError("max_disagreement / uncertainty_penalty: the disagreement d is a "
                             "variance across the elites and needs at least 2 elites, got "
                             f"{len(elites)}")

    def _run_python_uncertain(self, real_pool: Any, model_pool: Any, num_starts: int,
                              horizon: int, seed: int) -> RolloutStats:
        """The Python engine with the uncertainty features: ``model.predict`` runs every member
        once per step; the chosen elite's Gaussian from that pass is sampled with the Philox
        member choice and noise of ``model.step`` (DESIGN §3), and ``d`` comes from the elites'
        means. Same order as the native engine: penalty, drop non-finite, stop, store."""
        from . import _backend

        ops = _backend.ops
        t0 = time.perf_counter()
        elites = np.asarray(self.model.elites, dtype=np.int64)
        k = len(elites)
        obs = np.ascontiguousarray(real_pool.sample_obs(num_starts), dtype=np.float32)
        od = obs.shape[1]
        threshold = self._threshold if self._quantile < 0 else float("nan")
        pen = np.float32(self.uncertainty_penalty)
        rows_added = terminated_rows = nonfinite = stopped = 0
        dis_sum, dis_count, unc_sum, pen_sum = 0.0, 0, 0.0, 0.0
        for t in range(horizon):
            act = np.ascontiguousarray(_to_numpy(self._policy(obs)), dtype=np.float32)
            n = obs.shape[0]
            m = disagreement_sample_rows(self._disagreement_rule, n)
            if m and hasattr(self.model, "disagreement"):
                dd = _to_numpy(self.model.disagreement(obs[:m], act[:m]))
                dis_sum += float(np.sum(dd, dtype=np.float64))
                dis_count += m
            st = step_seed(seed, t)
            mean, var = (_to_numpy(x) for x in self.model.predict(obs, act))
            words = ops.philox_fill_u32(st, ops.STREAM_MEMBER_CHOICE, 0, n).astype(np.uint64)
            choice = ((words * np.uint64(k)) >> np.uint64(32)).astype(np.int64)
            eps = ops.philox_fill_normal(st, ops.STREAM_MODEL_NOISE, 0, n * (od + 1))
            rows = np.arange(n)
            mu = mean[elites[choice], rows].astype(np.float32)
            with np.errstate(all="ignore"):
                sample = mu + np.sqrt(var[elites[choice], rows]).astype(np.float32) \
                    * eps.reshape(n, od + 1)
                next_obs = (obs + sample[:, :od]).astype(np.float32)
                rew = sample[:, od].astype(np.float32)
                d = mean[elites][:, :, :od].astype(np.float64).var(axis=0, ddof=1).mean(axis=1)
                d = d.astype(np.float32)
                if t == 0 and self._quantile >= 0:
                    threshold = finite_quantile(d, self._quantile)
                if pen != 0:
                    rew = (rew - pen * np.sqrt(d)).astype(np.float32)
            ok = np.isfinite(next_obs).all(axis=1) & np.isfinite(rew) & np.isfinite(d)
            nonfinite += int(n - np.count_nonzero(ok))
            if self._quantile >= 0 or threshold < float("inf"):
                stop = ok & (d.astype(np.float64) > threshold)
                stopped += int(np.count_nonzero(stop))
                ok &= ~stop
            obs, act, next_obs, rew, d = obs[ok], act[ok], next_obs[ok], rew[ok], d[ok]
            if obs.shape[0] == 0:
                break
            done = self._terminate_and_store(model_pool, obs, act, rew, next_obs)
            rows_added += obs.shape[0]
            unc_sum += float(np.sum(d, dtype=np.float64))
            pen_sum += float(np.sum(float(pen) * np.sqrt(d.astype(np.float64))))
            terminated_rows += int(np.count_nonzero(done))
            obs = next_obs[~done]
            if obs.shape[0] == 0:
                break
        stop_on = self._quantile >= 0 or self._threshold < float("inf")
        return RolloutStats(
            rows_added=rows_added,
            mean_length=rows_added / num_starts,
            frac_terminated=terminated_rows / num_starts,
            nonfinite=nonfinite,
            mean_disagreement=dis_sum / dis_count if dis_count else float("nan"),
            seconds=time.perf_counter() - t0,
            frac_stopped=stopped / num_starts,
            mean_penalty=pen_sum / rows_added if rows_added else 0.0,
            mean_uncertainty=unc_sum / rows_added if rows_added else float("nan"),
            disagreement_threshold=threshold if stop_on else float("nan"),
        )

    def _terminate_and_store(self, model_pool: Any, obs: np.ndarray, act: np.ndarray,
                             rew: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
        """The termination flags bool [n] of a step's stored rows, appended to the pool."""
        done = np.asarray(_to_numpy(self.termination(obs, act, next_obs)), dtype=bool)
        if done.shape != (obs.shape[0],):
            raise ValueError(f"termination returned shape {done.shape}, expected "
                             f"({obs.shape[0]},)")
        model_pool.add_batch(obs, act, rew, next_obs, done)
        return done

    def _run_cuda(self, real_pool: Any, model_pool: Any, num_starts: int, horizon: int,
                  seed: int) -> RolloutStats:
        from .cuda_ops import branched_rollout

        # the uncertainty features and a learned TerminationModel run on the device too
        return _stats(branched_rollout(
            self.model, self.agent, self.termination, real_pool, model_pool, num_starts, horizon,
            int(seed), max_disagreement=self._threshold, disagreement_quantile=self._quantile,
            uncertainty_penalty=self.uncertainty_penalty))

    def _run_native(self, real_pool: Any, model_pool: Any, num_starts: int, horizon: int,
                    seed: int) -> RolloutStats:
        from .rollout_native import run_native_rollout

        out = run_native_rollout(
            self.model, self.agent, self.termination, real_pool, model_pool, num_starts, horizon,
            int(seed), compute_disagreement=self._disagreement_rule != 0,
            disagreement_rows=self._disagreement_rule, max_disagreement=self._threshold,
            disagreement_quantile=self._quantile, uncertainty_penalty=self.uncertainty_penalty)
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
        frac_stopped=float(out.get("frac_stopped", 0.0)),
        mean_penalty=float(out.get("mean_penalty", 0.0)),
        mean_uncertainty=float(out.get("mean_uncertainty", float("nan"))),
        disagreement_threshold=float(out.get("disagreement_threshold", float("nan"))),
    )


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # torch tensor
        return x.detach().cpu().numpy()
    return np.asarray(x)
