"""Numba mirror of the native branched rollout op (csrc/include/mbpo_fast/rollout.h).

Same arguments, validation, randomness and results as ``_C.branched_rollout``, on the Numba
ReplayPool (``mbpo_fast._numba.pool.ReplayPool``): start row i is
``random_index(seed, STREAM_ROLLOUT_START, i, len(real_pool))``; step t uses
``seed_t = rollout_step_seed(seed, t)`` for the policy noise (alive row i, element j:
``random_normal(seed_t, STREAM_POLICY_NOISE, i * act_dim + j)``) and the ensemble step
(member and noise of alive row i as in ``ensemble_step(seed=seed_t)``). Rows with a
non-finite action, reward or next_obs are dropped and counted; the others are appended to
the model pool in order (terminated ones with terminated=True, then they stop); the rest
continue, compacted in order.
"""

from __future__ import annotations

import math
import time

import numpy as np

from . import ensemble as _ens
from .actor import ActorParams, _check_u64
from .pool import ReplayPool
from .rng import STREAM_ROLLOUT_START, philox_fill_u32
from .termination import termination as _termination
from .termination_model import TerminationMLP

# disagreement_rows rules besides a count >= 0 (rollout.h): every stored row, or one stored
# row in DISAGREEMENT_AUTO_STRIDE (at least one) at each step.
DISAGREEMENT_ALL = -1
DISAGREEMENT_AUTO = -2
DISAGREEMENT_AUTO_STRIDE = 256


def disagreement_sample_rows(rule: int, stored: int) -> int:
    """Rows on which a step that stored `stored` transitions measures the disagreement under
    `rule` (a count >= 0, DISAGREEMENT_ALL or DISAGREEMENT_AUTO), as rollout.h's
    ``disagreement_sample_rows``; ValueError for another rule."""
    if rule < DISAGREEMENT_AUTO:
        raise ValueError("disagreement_rows: expected a count >= 0, -1 (every row) or -2 (auto: "
                         f"one row in {DISAGREEMENT_AUTO_STRIDE}), got {rule}")
    if stored <= 0:
        return 0
    if rule == DISAGREEMENT_ALL:
        return stored
    if rule == DISAGREEMENT_AUTO:
        return -(-stored // DISAGREEMENT_AUTO_STRIDE)
    return min(stored, rule)


def check_uncertainty(max_disagreement: float, quantile: float, penalty: float) -> None:
    """rollout.h's RolloutUncertainty::validate: ValueError naming the argument."""
    if not (math.isfinite(penalty) and penalty >= 0.0):
        raise ValueError(f"uncertainty_penalty: expected a finite float >= 0, got {penalty}")
    if not (quantile < 0.0 or quantile <= 1.0):
        raise ValueError(f"max_disagreement: expected a quantile in [0, 1], got {quantile}")
    if not (math.isnan(max_disagreement) or max_disagreement >= 0.0):
        raise ValueError("max_disagreement: expected a threshold >= 0 (or +inf / NaN: no stop), "
                         f"got {max_disagreement}")


def finite_quantile(x: np.ndarray, q: float) -> float:
    """The q-quantile of the finite entries of x, linear interpolation, in float64, written as
    rollout.h's finite_quantile (so backends pick the same threshold); +inf when none."""
    v = np.sort(np.asarray(x, dtype=np.float64)[np.isfinite(x)])
    if v.size == 0:
        return math.inf
    pos = q * (v.size - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, v.size - 1)
    return float(v[lo] + (pos - lo) * (v[hi] - v[lo]))


def rollout_step_seed(seed, step) -> int:
    """The seed of rollout step `step`: words 0 and 1 of (seed, STREAM_ROLLOUT_START + 1 +
    step), combined as ``w1 << 32 | w0``."""
    seed = _check_u64("seed", seed)
    step = int(step)
    if step < 0:
        raise ValueError(f"step: expected step >= 0, got {step}")
    w = philox_fill_u32(seed, STREAM_ROLLOUT_START + 1 + step, 0, 2)
    return int(w[0]) | (int(w[1]) << 32)


def _start_rows(seed: int, n: int, size: int) -> np.ndarray:
    """random_index(seed, STREAM_ROLLOUT_START, i, size) for i < n (multiply-shift)."""
    words = philox_fill_u32(seed, STREAM_ROLLOUT_START, 0, n).astype(np.uint64)
    return ((words * np.uint64(size)) >> np.uint64(32)).astype(np.int64)


def _pool_arg(obj, name: str) -> ReplayPool:
    if not isinstance(obj, ReplayPool):
        raise TypeError(f"{name}: expected a Numba pool (mbpo_fast._numba.pool.ReplayPool, e.g. "
                        f"mbpo_fast.ReplayPool(...)._impl on the numba backend), got "
                        f"{type(obj).__name__}")
    return obj


def _flags_from_callable(fn, obs, act, next_obs) -> np.ndarray:
    n = obs.shape[0]
    res = np.asarray(fn(obs.copy(), act.copy(), next_obs.copy()))
    if res.dtype.kind not in "biu":
        raise TypeError(f"termination: the callable must return a bool array, got {res.dtype}")
    if res.shape != (n,):
        raise ValueError(f"termination: the callable must return shape ({n},), got "
                         f"{_ens._shape_str(res.shape)}")
    flags = res.astype(np.int64)
    bad = np.flatnonzero((flags != 0) & (flags != 1))
    if bad.size:
        raise ValueError(f"termination: the callable must return 0/1 flags, got "
                         f"{int(flags[bad[0]])} at row {int(bad[0])}")
    return flags.astype(bool)


def branched_rollout(real_pool, model_pool, actor_weights, actor_biases, action_scale,
                     action_bias, input_mean, input_std, weights, biases, max_logvar, min_logvar,
                     elites, termination, num_starts, horizon, seed=0,
                     compute_disagreement=False, disagreement_rows=-1, action_low=None,
                     action_high=None, log_std_min=-20.0, log_std_max=2.0,
                     weights_bf16=None, max_disagreement=math.inf, disagreement_quantile=-1.0,
                     uncertainty_penalty=0.0, termination_weights=None, termination_biases=None,
                     termination_input_mean=None, termination_input_std=None) -> dict:
    """MBPO branched rollout (see the native op and rollout.h). Returns the stats dict."""
    t_start = time.perf_counter()
    max_disagreement, quantile = float(max_disagreement), float(disagreement_quantile)
    penalty = float(uncertainty_penalty)
    check_uncertainty(max_disagreement, quantile, penalty)
    stops = quantile >= 0.0 or max_disagreement < math.inf
    uncertain = stops or penalty != 0.0
    real = _pool_arg(real_pool, "real_pool")
    model = _pool_arg(model_pool, "model_pool")
    actor = ActorParams(actor_weights, actor_biases, action_scale, action_bias, action_low,
                        action_high, log_std_min, log_std_max, "actor_weights", "actor_biases")
    ens = _ens._elite_params(input_mean, input_std, weights, biases, max_logvar, min_logvar,
                             elites, weights_bf16,
                             "elites: a rollout needs the elite indices, got None")
    seed = _check_u64("seed", seed)
    num_starts, horizon = int(num_starts), int(horizon)
    if num_starts < 0:
        raise ValueError(f"num_starts: expected num_starts >= 0, got {num_starts}")
    if horizon < 0:
        raise ValueError(f"horizon: expected horizon >= 0, got {horizon}")
    learned = termination_weights is not None
    builtin = not learned and isinstance(termination, (int, np.integer)) \
        and not isinstance(termination, bool)
    if not learned and not builtin and not callable(termination):
        raise TypeError("termination: expected a built-in termination id (int, see "
                        "termination_id) or a callable (obs, act, next_obs) -> bool [n], got "
                        f"{type(termination).__name__}")
    od, ad = ens.obs_dim, ens.act_dim
    mlp = None
    if learned:
        if termination_biases is None or termination_input_mean is None \
                or termination_input_std is None:
            raise ValueError("termination_weights: a learned termination also needs "
                             "termination_biases, termination_input_mean and termination_input_std")
        mlp = TerminationMLP(od, ad, termination_input_mean, termination_input_std,
                             termination_weights, termination_biases)
    if builtin:
        _termination(int(termination), np.zeros((0, od), np.float32))  # validates id and width
    if actor.obs_dim != od or actor.act_dim != ad:
        raise ValueError(f"branched_rollout: the actor maps obs_dim {actor.obs_dim} to act_dim "
                         f"{actor.act_dim} but the model has obs_dim {od} and act_dim {ad}")
    for p, name in ((real, "real_pool"), (model, "model_pool")):
        if p.obs_dim != od or p.act_dim != ad:
            raise ValueError(f"{name}: expected obs_dim {od} and act_dim {ad} (the model's), got "
                             f"{p.obs_dim} and {p.act_dim}")
    if horizon >= 0xFFFFFFFF:
        raise ValueError(f"horizon: expected 0 <= horizon < 2**32 - 1, got {horizon}")
    if num_starts > 0 and len(real) == 0:
        raise ValueError("real_pool: is empty; a rollout needs start states")
    if uncertain and ens.elites.shape[0] < 2:
        raise ValueError("max_disagreement / uncertainty_penalty: the disagreement d is a variance "
                         "across the elites and needs at least 2 elites, got "
                         f"{ens.elites.shape[0]}")

    stats = dict(num_starts=num_starts, rows_added=0, mean_length=0.0, frac_terminated=0.0,
                 num_terminated=0, nonfinite=0, mean_disagreement=math.nan,
                 disagreement_rows=0, steps_run=0, seconds=0.0, num_stopped=0,
                 frac_stopped=0.0, mean_uncertainty=0.0 if uncertain else math.nan,
                 mean_penalty=0.0, disagreement_threshold=math.nan)
    threshold = math.nan
    if stops:
        threshold = math.inf if math.isnan(max_disagreement) else max_disagreement
        stats["disagreement_threshold"] = threshold
    unc_sum = pen_sum = 0.0
    pen32 = np.float32(penalty)
    disagreement_rows = int(disagreement_rows)
    disagreement_sample_rows(disagreement_rows, 0)  # validates the rule
    staged: list[tuple[np.ndarray, ...]] = []
    dis_sum = 0.0
    obs = np.empty((0, od), np.float32)
    if num_starts > 0 and horizon > 0:
        obs = real.gather(_start_rows(seed, num_starts, len(real)))[0]
    for t in range(horizon):
        if obs.shape[0] == 0:
            break
        seed_t = rollout_step_seed(seed, t)
        # Overflowing predictions are expected input here (dropped and counted below).
        with np.errstate(over="ignore", invalid="ignore"):
            act, _ = actor.act(obs, seed_t, 0, False)
            if not uncertain:
                next_obs, rew, _ = _ens._step(ens, obs, act, None, seed_t, False)
            else:  # every elite once per row: the same transition, and d
                next_obs, rew, d = _ens._step_uncertainty(ens, obs, act, seed_t, False)
                if t == 0 and quantile >= 0.0:
                    threshold = finite_quantile(d, quantile)
                    stats["disagreement_threshold"] = threshold
                if penalty != 0.0:
                    rew = (rew - pen32 * np.sqrt(d)).astype(np.float32)
        if mlp is not None:
            with np.errstate(over="ignore", invalid="ignore"):
                term = mlp.logits(obs, act, next_obs) > 0
        elif builtin:
            term = _termination(int(termination), next_obs)
        else:
            term = _flags_from_callable(termination, obs, act, next_obs)
        ok = (np.isfinite(rew) & np.isfinite(next_obs).all(axis=1)
              & np.isfinite(act).all(axis=1))
        if uncertain:
            ok &= np.isfinite(d)
        stats["nonfinite"] += int(obs.shape[0] - np.count_nonzero(ok))
        stats["steps_run"] += 1
        if stops:  # check, then store: a row with d > threshold stops unstored
            stop = ok & (d.astype(np.float64) > threshold)
            stats["num_stopped"] += int(np.count_nonzero(stop))
            ok &= ~stop
        # the statistic's sample: those of the first m alive rows that are stored
        m_sample = disagreement_sample_rows(disagreement_rows, obs.shape[0]) \
            if compute_disagreement else 0
        sample_stored = int(np.count_nonzero(ok[:m_sample]))
        if not ok.all():
            obs, act, rew, next_obs, term = obs[ok], act[ok], rew[ok], next_obs[ok], term[ok]
        if uncertain:
            d = d[ok].astype(np.float64)
            unc_sum += float(d.sum())
            pen_sum += float((penalty * np.sqrt(d)).sum())
        n = obs.shape[0]
        m = sample_stored  # the first stored rows (compaction keeps the order)
        if m > 0:
            with np.errstate(over="ignore", invalid="ignore"):  # an elite may overflow here
                dis = _ens._disagreement(ens, obs[:m], act[:m], ens.elites)
                dis_sum += float(np.sum(dis, dtype=np.float64))
            stats["disagreement_rows"] += m
        if n > 0:
            if builtin or mlp is not None:
                model.add_batch(obs, act, rew, next_obs, term)
            else:  # a callable may raise at a later step: stage, append once at the end
                staged.append((obs, act, rew, next_obs, term))
        stats["rows_added"] += n
        stats["num_terminated"] += int(np.count_nonzero(term))
        obs = np.ascontiguousarray(next_obs[~term])
    if staged:
        model.add_batch(*(np.concatenate(parts) for parts in zip(*staged, strict=True)))
    if num_starts > 0:
        stats["mean_length"] = stats["rows_added"] / num_starts
        stats["frac_terminated"] = stats["num_terminated"] / num_starts
        stats["frac_stopped"] = stats["num_stopped"] / num_starts
    if uncertain:
        n = stats["rows_added"]
        stats["mean_uncertainty"] = unc_sum / n if n else math.nan
        stats["mean_penalty"] = pen_sum / n if n else 0.0
    if compute_disagreement and stats["disagreement_rows"] > 0:
        stats["mean_disagreement"] = dis_sum / stats["disagreement_rows"]
    stats["seconds"] = time.perf_counter() - t_start
    return stats
