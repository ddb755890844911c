"""mf.MPC (PETS-style planning) on every backend: random shooting and CEM find the optimum of
a known quadratic problem; TS-inf keeps each particle's member (TS-1 redraws it); the native
planner, its Numba mirror and a step-by-step Python reference give the same plan for the same
seed; built-in rewards against float64 references; validation leaves the planner unchanged."""

from __future__ import annotations

import math

import numpy as np
import pytest

import mbpo_fast as mf
from mbpo_fast import _backend
from mbpo_fast._numba.rng import (
    STREAM_MEMBER_CHOICE,
    philox_fill_normal,
    philox_fill_u32,
)
from mbpo_fast.ensemble_infer import EnsembleInference

STREAM_PLAN_SEED = 6 << 32
STREAM_PLAN_ACTION = 7 << 32


def linear_model(d: int, members: int) -> EnsembleInference:
    """One linear layer: mean(Δobs) = act exactly, reward output 0, std ~1e-4:
    next_obs = obs + act (+ tiny noise). obs_dim = act_dim = d."""
    out = 2 * (d + 1)
    w = np.zeros((members, 2 * d, out), np.float32)
    b = np.zeros((members, out), np.float32)
    for j in range(d):
        w[:, d + j, j] = 1.0
    b[:, d + 1 :] = -20.0
    return EnsembleInference(
        d, d, np.zeros(2 * d, np.float32), np.ones(2 * d, np.float32), [w], [b],
        np.full(d + 1, -20.0, np.float32), np.full(d + 1, -24.0, np.float32),
        np.arange(members, dtype=np.int64),
    )


def random_model(obs_dim: int, act_dim: int, seed: int, elites=(4, 1, 2)) -> mf.EnsembleDynamics:
    model = mf.EnsembleDynamics(obs_dim, act_dim, ensemble_size=5, num_elites=len(elites),
                                hidden_size=24, num_layers=3, seed=seed)
    model.set_elites(list(elites))
    return model


def quadratic(goal: np.ndarray):
    def reward(obs, act, next_obs):
        return -((next_obs.astype(np.float64) - goal) ** 2).sum(axis=1)
    return reward


# ---------------------------------------------------------------------------- optimum


def test_random_shooting_finds_the_quadratic_optimum(backend, rng):
    model = linear_model(2, 3)
    for _ in range(3):
        obs, goal = rng.normal(0, 0.3, 2).astype(np.float32), rng.normal(0, 0.3, 2)
        mpc = mf.MPC(model, [-1, -1], [1, 1], reward_fn=quadratic(goal), horizon=1,
                     optimizer="random", population=3000, particles=2,
                     seed=int(rng.integers(2**63)))
        action = mpc.plan(obs)
        np.testing.assert_allclose(action, goal - obs, atol=0.06)
        assert -0.004 < mpc.last_stats["best_value"] <= 0


def test_cem_finds_the_quadratic_optimum_over_a_horizon(backend, rng):
    model = linear_model(2, 4)
    for _ in range(2):
        obs, goal = rng.normal(0, 0.4, 2).astype(np.float32), rng.normal(0, 0.4, 2)
        mpc = mf.MPC(model, [-1.5, -1.5], [1.5, 1.5], reward_fn=quadratic(goal), horizon=3,
                     population=300, elites=30, iterations=15, particles=2,
                     seed=int(rng.integers(2**63)))
        action = mpc.plan(obs)
        np.testing.assert_allclose(action, goal - obs, atol=0.05)
        # the optimum after the first step is to stay: a = 0 (the warm start is shifted)
        np.testing.assert_allclose(mpc.mean[:-2], 0.0, atol=0.1)
        assert mpc.last_stats["elite_value"] > -0.01


# ---------------------------------------------------------------------------- propagation


@pytest.mark.parametrize("propagation", ["ts_inf", "ts_1"])
def test_particles_members(backend, rng, propagation):
    model = random_model(3, 1, seed=3, elites=(4, 1, 3))
    mpc = mf.MPC(model, [-2], [2], reward_fn="Pendulum-v1", particles=8, propagation=propagation)
    N, H = 12, 6
    actions = rng.uniform(-2, 2, (N, H, 1)).astype(np.float32)
    seed = int(rng.integers(2**63))
    values, members = mpc.evaluate(rng.normal(size=3).astype(np.float32), actions, seed=seed)
    R = N * 8
    assert values.shape == (N,) and members.shape == (H, R)
    assert set(np.unique(members)) == {1, 3, 4}
    elites = np.array([4, 1, 3])
    if propagation == "ts_inf":
        assert (members == members[0]).all()  # every row keeps its member for the horizon
        words = philox_fill_u32(seed, STREAM_MEMBER_CHOICE, 0, R).astype(np.uint64)
        np.testing.assert_array_equal(members[0], elites[(words * np.uint64(3)) >> np.uint64(32)])
    else:
        changed = (members[1:] != members[:-1]).mean()
        assert 0.5 < changed < 0.8  # redrawn uniformly among 3 elites: 2/3 change


def test_terminated_particles_collect_no_further_reward(backend):
    model = linear_model(1, 2)

    def ones(obs, act, next_obs):
        return np.ones(obs.shape[0], np.float32)

    def past_one(obs, act, next_obs):
        return next_obs[:, 0] > 1.0

    mpc = mf.MPC(model, [-1], [1], reward_fn=ones, termination=past_one, particles=3)
    actions = np.full((2, 6, 1), 0.3, np.float32)
    actions[1] = 0.1  # never passes 1.0 within 6 steps
    values, _ = mpc.evaluate(np.zeros(1, np.float32), actions, seed=5)
    np.testing.assert_array_equal(values, [4.0, 6.0])  # 0.3, 0.6, 0.9, 1.2 (terminal) rewarded

    def nan_late(obs, act, next_obs):
        return np.where(next_obs[:, 0] > 0.65, np.nan, 1.0)  # 0.6 + noise passes

    mpc = mf.MPC(model, [-1], [1], reward_fn=nan_late, particles=3)
    values, _ = mpc.evaluate(np.zeros(1, np.float32), actions, seed=5)
    assert values[0] == -math.inf and values[1] == 6.0


# ---------------------------------------------------------------------------- reference


def _derive(seed: int, stream: int, index: int) -> int:
    w = philox_fill_u32(seed, stream, 4 * index, 2)
    return int(w[0]) | (int(w[1]) << 32)


def reference_plan(model, obs, mean0, low, high, reward, term, optimizer, N, K, iters, alpha, P,
                   propagation, seed, call):
    """The plan of planner.h written step by step: one model.step call per horizon step."""
    H, A = mean0.shape
    lo, hi = low.astype(np.float64), high.astype(np.float64)
    mu = np.clip(mean0.astype(np.float64), lo, hi)
    var = np.tile((hi - lo) ** 2 / 16.0, (H, 1))
    s = _derive(seed, STREAM_PLAN_SEED, call)
    elites = np.asarray(model.elites)
    for i in range(iters if optimizer == "cem" else 1):
        s_i = _derive(s, STREAM_PLAN_SEED + 1, i)
        if optimizer == "cem":
            sd = np.sqrt(np.minimum(var, np.minimum(((mu - lo) / 2) ** 2, ((hi - mu) / 2) ** 2)))
            z = np.clip(philox_fill_normal(s_i, STREAM_PLAN_ACTION, 0, N * H * A), -2, 2)
            x = np.clip((mu + sd * z.reshape(N, H, A)).astype(np.float32), low, high)
        else:
            u = (philox_fill_u32(s_i, STREAM_PLAN_ACTION, 0, N * H * A) >> 8) / 16777216.0
            x = np.clip(low + (high - low) * u.astype(np.float32).reshape(N, H, A), low, high)
        R = N * P
        o = np.tile(obs, (R, 1)).astype(np.float32)
        words = philox_fill_u32(s_i, STREAM_MEMBER_CHOICE, 0, R).astype(np.uint64)
        fixed = elites[((words * np.uint64(len(elites))) >> np.uint64(32)).astype(np.int64)]
        ret, alive = np.zeros(R), np.ones(R, bool)
        for t in range(H):
            seed_t = int(_backend.ops.rollout_step_seed(s_i, t))
            act = x[np.arange(R) // P, t]
            members = fixed if propagation == "ts_inf" else None
            nxt, rew_model = model.step(o, act, seed=seed_t, members=members)
            r = rew_model if reward is None else reward(o, act, nxt)
            ret[alive] += r[alive]
            alive &= ~term(o, act, nxt)
            o = nxt
        values = ret.reshape(N, P).mean(axis=1)
        order = np.lexsort((np.arange(N), -values))
        if optimizer == "random":
            return x[order[0], 0]
        xe = x[order[:K]].astype(np.float64)
        mu = alpha * mu + (1 - alpha) * xe.mean(axis=0)
        var = alpha * var + (1 - alpha) * xe.var(axis=0)
    return mu[0].astype(np.float32)


@pytest.mark.parametrize(
    "env_id,optimizer,propagation",
    [("Pendulum-v1", "cem", "ts_inf"), ("InvertedPendulum-v5", "cem", "ts_1"),
     ("Pendulum-v1", "random", "ts_1")],
)
def test_native_numba_and_reference_agree(rng, env_id, optimizer, propagation):
    obs_dim = 3 if env_id == "Pendulum-v1" else 4
    model = random_model(obs_dim, 1, seed=int(rng.integers(1000)))
    low, high = np.array([-2.0], np.float32), np.array([2.0], np.float32)
    obs = (rng.normal(size=obs_dim) * 0.1).astype(np.float32)
    kw = dict(reward_fn=env_id, termination=env_id, horizon=7, optimizer=optimizer,
              population=40, elites=5, iterations=3, alpha=0.2, particles=3,
              propagation=propagation, seed=int(rng.integers(2**63)))
    actions = {}
    for name in _backend.available():
        with _backend.use(name):
            mpc = mf.MPC(model, low, high, **kw)
            actions[name] = [mpc.plan(obs), mpc.plan(obs)]  # the second call warm-starts
            mean_after_two = mpc.mean
    ref_mpc_mean = np.tile(0.0, (7, 1)).astype(np.float32)
    reward, term = mf.reward_fn(env_id), mf.termination_fn(env_id)
    ref = reference_plan(model, obs, ref_mpc_mean, low, high, reward, term, optimizer, 40, 5, 3,
                         0.2, 3, propagation, kw["seed"], 0)
    for name, (first, second) in actions.items():
        np.testing.assert_allclose(first, ref, atol=2e-4, err_msg=name)
        np.testing.assert_allclose(second, actions["numba"][1], atol=2e-4, err_msg=name)
    assert mean_after_two.shape == (7, 1)


# ---------------------------------------------------------------------------- rewards


def test_builtin_rewards_match_float64_references(backend, rng):
    def rows(od, ad, n=64):
        return (rng.normal(size=(n, od)).astype(np.float32), rng.normal(size=(n, ad)).astype(
            np.float32), rng.normal(size=(n, od)).astype(np.float32))

    o, a, nx = rows(3, 1)
    a *= 3  # some beyond the torque limit
    th = np.arctan2(o[:, 1].astype(np.float64), o[:, 0].astype(np.float64))
    u = np.clip(a[:, 0].astype(np.float64), -2, 2)
    want = -(th**2 + 0.1 * o[:, 2].astype(np.float64) ** 2 + 0.001 * u**2)
    np.testing.assert_allclose(mf.reward_fn("Pendulum-v1")(o, a, nx), want, rtol=1e-6)

    o, a, nx = rows(4, 1)
    nx[:, 1] *= 0.2
    want = (np.abs(nx[:, 1].astype(np.float64)) <= 0.2).astype(np.float64)
    np.testing.assert_array_equal(mf.reward_fn("InvertedPendulum-v5")(o, a, nx), want)
    assert 0 < want.sum() < len(want)

    o, a, nx = rows(17, 6)
    want = nx[:, 8].astype(np.float64) - 0.1 * (a.astype(np.float64) ** 2).sum(1)
    np.testing.assert_allclose(mf.reward_fn("HalfCheetah-v5")(o, a, nx), want, rtol=1e-6)

    o, a, nx = rows(11, 3)
    nx[:, 0] = 1.0 + 0.5 * nx[:, 0]
    nx[:, 1] *= 0.2
    healthy = ~mf.termination_fn("Hopper-v5")(o, a, nx)
    want = nx[:, 5].astype(np.float64) + healthy - 1e-3 * (a.astype(np.float64) ** 2).sum(1)
    np.testing.assert_allclose(mf.reward_fn("Hopper-v5")(o, a, nx), want, rtol=1e-6, atol=1e-7)
    assert 0 < healthy.sum() < len(healthy)


def test_model_reward_is_the_ensembles_last_output(backend, rng):
    model = random_model(3, 1, seed=9)
    mpc = mf.MPC(model, [-2], [2], reward_fn=None, particles=2)
    obs = rng.normal(size=3).astype(np.float32)
    actions = rng.uniform(-2, 2, (4, 3, 1)).astype(np.float32)
    values, members = mpc.evaluate(obs, actions, seed=11)
    R = 8
    o, ret = np.tile(obs, (R, 1)), np.zeros(R)
    for t in range(3):
        seed_t = int(_backend.ops.rollout_step_seed(11, t))
        o, r = model.step(o, actions[np.arange(R) // 2, t], seed=seed_t, members=members[t])
        ret += r
    np.testing.assert_allclose(values, ret.reshape(4, 2).mean(1), rtol=1e-5)


# ---------------------------------------------------------------------------- state, errors


def test_reproducible_warm_start_and_state_dict(backend, rng):
    model = random_model(3, 1, seed=5)
    kw = dict(reward_fn="Pendulum-v1", horizon=6, population=30, elites=4, iterations=2,
              particles=2, seed=77)
    a, b = mf.MPC(model, [-2], [2], **kw), mf.MPC(model, [-2], [2], **kw)
    obs = rng.normal(size=3).astype(np.float32)
    for _ in range(2):
        np.testing.assert_array_equal(a.plan(obs), b.plan(obs))
    assert a.calls == 2 and a.mean[-1, 0] == 0.0
    state = a.state_dict()
    want = a.plan(obs)
    b.load_state_dict(state)
    np.testing.assert_array_equal(b.plan(obs), want)
    a.reset()
    np.testing.assert_array_equal(a.mean, 0.0)
    assert a.calls == 3


def test_bad_input_raises_and_changes_nothing(backend):
    model = random_model(3, 1, seed=6)
    mpc = mf.MPC(model, [-2], [2], reward_fn="Pendulum-v1", horizon=5, population=20, elites=4,
                 iterations=1, particles=2)
    mpc.plan(np.array([1.0, 0.0, 0.0], np.float32))
    before, calls = mpc.mean, mpc.calls
    with pytest.raises(ValueError, match=r"obs: expected shape \(3,\), got \(4,\)"):
        mpc.plan(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="obs: contains a non-finite value"):
        mpc.plan(np.array([1.0, np.nan, 0.0], np.float32))
    bad = mf.MPC(model, [-2], [2], reward_fn=lambda o, a, n: np.zeros(3), population=20,
                 elites=4, iterations=1, particles=2, horizon=5)
    with pytest.raises(ValueError, match=r"reward: the callable must return shape \(40,\)"):
        bad.plan(np.zeros(3, np.float32))
    assert bad.calls == 0
    np.testing.assert_array_equal(mpc.mean, before)
    assert mpc.calls == calls
    with pytest.raises(ValueError, match="elites: expected 1 <= elites <= population = 10, got 50"):
        mf.MPC(model, [-2], [2], population=10)
    with pytest.raises(ValueError, match="optimizer"):
        mf.MPC(model, [-2], [2], optimizer="mppi")
    with pytest.raises(ValueError, match="propagation"):
        mf.MPC(model, [-2], [2], propagation="ts_2")
    with pytest.raises(ValueError, match=r"action_low: expected shape \(1,\), got \(2,\)"):
        mf.MPC(model, [-2, -2], [2])
    with pytest.raises(ValueError, match="low < high"):
        mf.MPC(model, [2], [-2])
    with pytest.raises(ValueError, match="known env ids"):
        mf.MPC(model, [-2], [2], reward_fn="CartPole-v1")
    mismatch = mf.MPC(model, [-2], [2], reward_fn="Hopper-v5")
    with pytest.raises(ValueError, match="expects obs_dim 11 and act_dim 3"):
        mismatch.plan(np.zeros(3, np.float32))
