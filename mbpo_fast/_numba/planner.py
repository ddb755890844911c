"""Numba mirror of the native MPC planner ops (csrc/include/mbpo_fast/planner.h, reward.h).

Same names, arguments, validation and randomness as ``_C.mpc_plan``, ``_C.mpc_evaluate``,
``_C.reward`` and ``_C.derive_seed``: the candidates, member choices and elite sets are the
same for the same seed; values agree to float rounding (the ensemble forward runs in numpy
float32 here, in the AVX-512 kernel there). The algorithm is spelled out in planner.h.
"""

from __future__ import annotations

import math
import time

import numba as nb
import numpy as np

from . import ensemble as _ens
from .actor import _check_u64
from .rng import STREAM_MEMBER_CHOICE, philox_fill_normal, philox_fill_u32
from .rollout import _flags_from_callable, rollout_step_seed
from .termination import is_terminal
from .termination import termination as _termination

STREAM_PLAN_SEED = 6 << 32
STREAM_PLAN_ACTION = 7 << 32

# RewardId (reward.h): never renumber.
MODEL, PENDULUM, INVERTED_PENDULUM, HALF_CHEETAH, HOPPER, WALKER2D = range(6)
_REWARD_ENVS = {
    "Pendulum-v1": PENDULUM,
    "InvertedPendulum-v5": INVERTED_PENDULUM,
    "InvertedPendulum-v4": INVERTED_PENDULUM,
    "HalfCheetah-v5": HALF_CHEETAH,
    "HalfCheetah-v4": HALF_CHEETAH,
    "Hopper-v5": HOPPER,
    "Hopper-v4": HOPPER,
    "Walker2d-v5": WALKER2D,
    "Walker2d-v4": WALKER2D,
}
_REWARD_DIMS = {PENDULUM: (3, 1), INVERTED_PENDULUM: (4, 1), HALF_CHEETAH: (17, 6),
                HOPPER: (11, 3), WALKER2D: (17, 6)}
_REWARD_NAMES = {MODEL: "model", PENDULUM: "Pendulum", INVERTED_PENDULUM: "InvertedPendulum",
                 HALF_CHEETAH: "HalfCheetah", HOPPER: "Hopper", WALKER2D: "Walker2d"}


def derive_seed(seed, stream, index) -> int:
    """(v1 << 32) | v0 of philox_block(seed, stream, index)."""
    seed, stream, index = (_check_u64(n, v) for n, v in
                           (("seed", seed), ("stream", stream), ("index", index)))
    w = philox_fill_u32(seed, stream, 4 * index, 2) if index < 1 << 62 else None
    if w is None:
        raise ValueError(f"index: expected an int below 2**62, got {index}")
    return int(w[0]) | (int(w[1]) << 32)


def reward_env_ids() -> list[str]:
    return list(_REWARD_ENVS)


def reward_id(env_id: str) -> int:
    if env_id not in _REWARD_ENVS:
        raise ValueError(f"reward: no built-in reward function for '{env_id}'; known env ids: "
                         f"{', '.join(_REWARD_ENVS)} (or use the model's reward output, or a "
                         "custom function)")
    return _REWARD_ENVS[env_id]


def _check_reward_args(rid: int, obs_dim: int, act_dim: int, name: str) -> None:
    if not 0 <= rid < 6:
        raise ValueError(f"{name}: unknown built-in reward id {rid} (expected 0..5)")
    if rid == MODEL:
        return
    od, ad = _REWARD_DIMS[rid]
    if (obs_dim, act_dim) != (od, ad):
        raise ValueError(f"{name}: the {_REWARD_NAMES[rid]} reward expects obs_dim {od} and "
                         f"act_dim {ad}, got obs_dim {obs_dim} and act_dim {act_dim}")


@nb.njit(cache=True)
def _rewards(rid, obs, act, next_obs, out):
    """Element body of builtin_reward (reward.h), in float64, rounded once to float32."""
    od = obs.shape[1]
    for i in range(obs.shape[0]):
        r = 0.0
        if rid == PENDULUM:
            th = math.atan2(np.float64(obs[i, 1]), np.float64(obs[i, 0]))
            thdot = np.float64(obs[i, 2])
            u = min(max(np.float64(act[i, 0]), -2.0), 2.0)
            r = -(th * th + 0.1 * thdot * thdot + 0.001 * u * u)
        elif rid == INVERTED_PENDULUM:
            r = 0.0 if is_terminal(5, next_obs[i], od) else 1.0
        else:
            sq = 0.0
            for j in range(act.shape[1]):
                sq += np.float64(act[i, j]) * np.float64(act[i, j])
            if rid == HALF_CHEETAH:
                r = np.float64(next_obs[i, 8]) - 0.1 * sq
            elif rid == HOPPER:
                r = (np.float64(next_obs[i, 5]) + (0.0 if is_terminal(1, next_obs[i], od) else 1.0)
                     - 1e-3 * sq)
            elif rid == WALKER2D:
                r = (np.float64(next_obs[i, 8]) + (0.0 if is_terminal(2, next_obs[i], od) else 1.0)
                     - 1e-3 * sq)
        out[i] = np.float32(r)


def _finite_f32(obj, name: str, shape) -> np.ndarray:
    arr = _ens._as_f32(obj, name, shape)
    _ens._require_finite(arr, name)
    return arr


def reward(reward_id, obs, act, next_obs) -> np.ndarray:
    """Built-in reward per row -> float32 [n] (see the native op)."""
    rid = int(reward_id)
    if rid == MODEL:
        raise ValueError("reward_id: 0 is the model's reward, not a function of "
                         "(obs, act, next_obs)")
    o = _finite_f32(obs, "obs", (-1, -1))
    a = _finite_f32(act, "act", (o.shape[0], -1))
    nx = _finite_f32(next_obs, "next_obs", (o.shape[0], o.shape[1]))
    _check_reward_args(rid, o.shape[1], a.shape[1], "reward_id")
    out = np.empty(o.shape[0], np.float32)
    _rewards(rid, o, a, nx, out)
    return out


def _objective(reward_arg, termination_arg, obs_dim: int, act_dim: int):
    """(reward fn, termination fn) over (obs, act, next_obs) rows, validated like the native op."""
    def is_int(x):
        return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

    if is_int(reward_arg):
        rid = int(reward_arg)
        _check_reward_args(rid, obs_dim, act_dim, "reward")
        if rid == MODEL:
            reward_fn = None
        else:
            def reward_fn(o, a, nx):
                out = np.empty(o.shape[0], np.float32)
                _rewards(rid, o, a, nx, out)
                return out
    elif callable(reward_arg):
        def reward_fn(o, a, nx):
            res = np.asarray(reward_arg(o.copy(), a.copy(), nx.copy()))
            if res.dtype.kind not in "fiu":
                raise TypeError(f"reward: the callable must return a float array, got {res.dtype}")
            if res.shape != (o.shape[0],):
                raise ValueError(f"reward: the callable must return shape ({o.shape[0]},), got "
                                 f"{_ens._shape_str(res.shape)}")
            return res.astype(np.float32)
    else:
        raise TypeError("reward: expected a built-in reward id (int, 0 = the model's reward) or "
                        "a callable (obs, act, next_obs) -> float [n], got "
                        f"{type(reward_arg).__name__}")
    if is_int(termination_arg):
        tid = int(termination_arg)
        _termination(tid, np.zeros((0, obs_dim), np.float32))  # validates the id and the width

        def term_fn(o, a, nx):
            return _termination(tid, nx)
    elif callable(termination_arg):
        def term_fn(o, a, nx):
            return _flags_from_callable(termination_arg, o, a, nx)
    else:
        raise TypeError("termination: expected a built-in termination id (int) or a callable "
                        f"(obs, act, next_obs) -> bool [n], got {type(termination_arg).__name__}")
    return reward_fn, term_fn


def _propagation(name: str) -> bool:
    if name not in ("ts_inf", "ts_1"):
        raise ValueError(f"propagation: expected 'ts_inf' or 'ts_1', got '{name}'")
    return name == "ts_inf"


def _model(input_mean, input_std, weights, biases, max_logvar, min_logvar, elites, weights_bf16):
    return _ens._elite_params(input_mean, input_std, weights, biases, max_logvar, min_logvar,
                              elites, weights_bf16,
                              "elites: planning needs the elite indices, got None")


def _evaluate(p, reward_fn, term_fn, obs0, x, particles, ts_inf, seed, members_out):
    """plan_evaluate (planner.h) without validation: (values f64 [N], failed rows)."""
    N, H, _ = x.shape
    P, R = particles, x.shape[0] * particles
    od = p.obs_dim
    obs = np.repeat(obs0.reshape(1, od), R, axis=0)
    ret = np.zeros(R, np.float64)
    state = np.zeros(R, np.int8)  # 0 alive, 1 terminated, 2 failed
    members = None
    if ts_inf:
        words = philox_fill_u32(seed, STREAM_MEMBER_CHOICE, 0, R).astype(np.uint64)
        k = np.uint64(p.elites.shape[0])
        members = p.elites[((words * k) >> np.uint64(32)).astype(np.int64)]
    failed = 0
    row_seq = np.arange(R) // P
    for t in range(H):
        seed_t = rollout_step_seed(seed, t)
        act = np.ascontiguousarray(x[row_seq, t])
        with np.errstate(over="ignore", invalid="ignore"):
            nxt, rew_model, used = _ens._step(p, obs, act, members, seed_t, False)
        if members_out is not None:
            members_out[t] = used
        rew = rew_model if reward_fn is None else reward_fn(obs, act, nxt)
        term = np.asarray(term_fn(obs, act, nxt), dtype=bool)
        finite = np.isfinite(nxt).all(axis=1)
        alive = state == 0
        fail = alive & ~(finite & np.isfinite(rew))
        ok = alive & ~fail
        ret[ok] += rew[ok].astype(np.float64)
        state[ok & term] = 1
        state[fail] = 2
        ret[fail] = -np.inf
        failed += int(np.count_nonzero(fail))
        obs[finite] = nxt[finite]
    values = np.empty(N, np.float64)
    r2 = ret.reshape(N, P)
    for n in range(N):  # sequential sums, as the native loop
        s = 0.0
        for q in range(P):
            s += r2[n, q]
        values[n] = s / P
    return values, failed


def mpc_evaluate(obs, actions, input_mean, input_std, weights, biases, max_logvar, min_logvar,
                 elites, reward=0, termination=0, particles=20, propagation="ts_inf", seed=0,
                 weights_bf16=None):
    """Scores action sequences (see the native op): (values f64 [N], members int64 [H, N*P])."""
    p = _model(input_mean, input_std, weights, biases, max_logvar, min_logvar, elites, weights_bf16)
    o = _finite_f32(obs, "obs", (p.obs_dim,))
    x = _finite_f32(actions, "actions", (-1, -1, p.act_dim))
    N, H = x.shape[0], x.shape[1]
    if N < 1 or H < 1:
        raise ValueError(f"actions: expected shape (N >= 1, horizon >= 1, {p.act_dim}), got "
                         f"{_ens._shape_str(x.shape)}")
    particles = int(particles)
    if particles < 1:
        raise ValueError(f"particles: expected >= 1, got {particles}")
    ts_inf = _propagation(propagation)
    reward_fn, term_fn = _objective(reward, termination, p.obs_dim, p.act_dim)
    seed = _check_u64("seed", seed)
    members = np.empty((H, N * particles), np.int64)
    values, _ = _evaluate(p, reward_fn, term_fn, o, x, particles, ts_inf, seed,
                          members)
    return values, members


def _check_config(optimizer, population, num_elites, iterations, alpha, particles, horizon,
                  act_dim, lo, hi):
    if optimizer not in ("cem", "random"):
        raise ValueError(f"optimizer: expected 'cem' or 'random', got '{optimizer}'")
    if not 1 <= horizon < 0xFFFFFFFF:
        raise ValueError(f"horizon: expected 1 <= horizon < 2**32 - 1, got {horizon}")
    if population < 1:
        raise ValueError(f"population: expected >= 1, got {population}")
    if particles < 1:
        raise ValueError(f"particles: expected >= 1, got {particles}")
    if population * particles > 1 << 31:
        raise ValueError("population * particles: expected at most 2**31 rows, got "
                         f"{population} * {particles}")
    if optimizer == "cem":
        if not 1 <= num_elites <= population:
            raise ValueError(f"elites: expected 1 <= elites <= population = {population}, got "
                             f"{num_elites}")
        if iterations < 1:
            raise ValueError(f"iterations: expected >= 1, got {iterations}")
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha: expected 0 <= alpha < 1, got {alpha}")
    bad = np.flatnonzero(~(lo < hi))
    if bad.size:
        a = int(bad[0])
        raise ValueError("action_low, action_high: expected finite bounds with low < high, got "
                         f"[{lo[a]}, {hi[a]}] at index {a}")


def mpc_plan(obs, mean, action_low, action_high, input_mean, input_std, weights, biases,
             max_logvar, min_logvar, elites, reward=0, termination=0, optimizer="cem",
             population=500, num_elites=50, iterations=5, alpha=0.1, particles=20,
             propagation="ts_inf", horizon=30, seed=0, call=0, weights_bf16=None):
    """One MPC plan (see the native op): (action f32 [A], final mean f32 [H, A], stats dict)."""
    t0 = time.perf_counter()
    p = _model(input_mean, input_std, weights, biases, max_logvar, min_logvar, elites, weights_bf16)
    A = p.act_dim
    population, num_elites, iterations = int(population), int(num_elites), int(iterations)
    particles, horizon, alpha = int(particles), int(horizon), float(alpha)
    ts_inf = _propagation(propagation)
    lo = _finite_f32(action_low, "action_low", (A,))
    hi = _finite_f32(action_high, "action_high", (A,))
    _check_config(optimizer, population, num_elites, iterations, alpha, particles, horizon, A,
                  lo, hi)
    o = _finite_f32(obs, "obs", (p.obs_dim,))
    mu0 = _finite_f32(mean, "mean", (horizon, A))
    reward_fn, term_fn = _objective(reward, termination, p.obs_dim, p.act_dim)
    call_seed = derive_seed(_check_u64("seed", seed), STREAM_PLAN_SEED, _check_u64("call", call))
    cem = optimizer == "cem"
    N, H = population, horizon
    lo64, hi64 = lo.astype(np.float64), hi.astype(np.float64)
    mu = np.clip(mu0.astype(np.float64), lo64, hi64)
    var = np.broadcast_to((hi64 - lo64) ** 2 / 16.0, (H, A)).copy()
    stats = dict(best_value=0.0, elite_value=0.0, failed=0, iterations=0, seconds=0.0)
    x = None
    best = 0
    for i in range(iterations if cem else 1):
        s_i = derive_seed(call_seed, STREAM_PLAN_SEED + 1, i)
        if cem:
            sd = np.sqrt(np.minimum(var, np.minimum(((mu - lo64) / 2.0) ** 2,
                                                    ((hi64 - mu) / 2.0) ** 2)))
            z = np.clip(philox_fill_normal(s_i, STREAM_PLAN_ACTION, 0, N * H * A),
                        np.float32(-2), np.float32(2)).reshape(N, H, A)
            x = np.clip((mu + sd * z.astype(np.float64)).astype(np.float32), lo, hi)
        else:
            words = philox_fill_u32(s_i, STREAM_PLAN_ACTION, 0, N * H * A).reshape(N, H, A)
            u = (words >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)
            x = np.clip(lo + (hi - lo) * u, lo, hi)
        values, failed = _evaluate(p, reward_fn, term_fn, o, x, particles, ts_inf,
                                   s_i, None)
        stats["failed"] += failed
        stats["iterations"] += 1
        order = np.lexsort((np.arange(N), -values))
        best = int(order[0])
        stats["best_value"] = float(values[best])
        if cem:
            top = order[:num_elites]
            stats["elite_value"] = float(sum(float(values[j]) for j in top) / num_elites)
            xe = x[top].astype(np.float64).reshape(num_elites, H * A)
            m = np.zeros(H * A)
            for j in range(num_elites):  # sequential sums, as the native loop
                m += xe[j]
            m /= num_elites
            v = np.zeros(H * A)
            for j in range(num_elites):
                v += (xe[j] - m) ** 2
            v /= num_elites
            mu = alpha * mu + (1.0 - alpha) * m.reshape(H, A)
            var = alpha * var + (1.0 - alpha) * v.reshape(H, A)
        else:
            stats["elite_value"] = stats["best_value"]
    if cem:
        action = mu[0].astype(np.float32)
        mean_out = mu.astype(np.float32)
    else:
        action = x[best, 0].copy()
        mean_out = mu0.copy()
    stats["seconds"] = time.perf_counter() - t0
    return action, mean_out, stats


__all__ = ["STREAM_PLAN_ACTION", "STREAM_PLAN_SEED", "derive_seed", "mpc_evaluate", "mpc_plan",
           "reward", "reward_env_ids", "reward_id"]
