"""BranchedRollout semantics against a per-row reference, with small fakes."""

from __future__ import annotations

import numpy as np
import pytest

from mbpo_fast.rollout import BranchedRollout, RolloutStats, step_seed

OBS_DIM, ACT_DIM = 4, 2


class ListPool:
    """Minimal pool: records every add_batch call; sample_obs draws uniformly with its own RNG."""

    def __init__(self, obs_dim=OBS_DIM, act_dim=ACT_DIM, seed=0):
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.calls = []
        self.rng = np.random.default_rng(seed)
        self.start_obs = None  # set on a source pool

    def add_batch(self, obs, act, rew, next_obs, terminated):
        for a, dt in ((obs, np.float32), (act, np.float32), (rew, np.float32),
                      (next_obs, np.float32), (terminated, np.bool_)):
            assert a.dtype == dt
        self.calls.append(tuple(np.array(a, copy=True) for a in
                                (obs, act, rew, next_obs, terminated)))

    def rows(self):
        if not self.calls:
            return None
        return [np.concatenate(parts) for parts in zip(*self.calls, strict=True)]

    def __len__(self):
        if self.start_obs is not None:
            return len(self.start_obs)
        return sum(len(c[0]) for c in self.calls)

    def sample_obs(self, n):
        obs = self.start_obs
        return obs[self.rng.integers(0, len(obs), n)].astype(np.float32)


class CounterModel:
    """next_obs = obs + [1, 0, 0.5*act0, 0]; reward = obs[0] + id; NaN for chosen (id, step)."""

    def __init__(self, nan_at=()):
        self.nan_at = set(nan_at)  # (row id, step t) pairs whose prediction is NaN
        self.seeds = []
        self.t = 0

    def step(self, obs, act, seed=0, deterministic=False, members=None):
        self.seeds.append(seed)
        nxt = obs.copy()
        nxt[:, 0] += 1.0
        nxt[:, 2] += 0.5 * act[:, 0]
        rew = (obs[:, 0] + obs[:, 1]).astype(np.float32)
        for i, row_id in enumerate(obs[:, 1].astype(int)):
            if (row_id, self.t) in self.nan_at:
                if row_id % 2:
                    nxt[i, 3] = np.nan
                else:
                    rew[i] = np.inf
        self.t += 1
        return nxt, rew

    def disagreement(self, obs, act):
        return np.abs(obs[:, 0]).astype(np.float32)


class FixedAgent:
    def __init__(self):
        self.calls = 0

    def act(self, obs, deterministic=False):
        assert not deterministic  # rollouts use the stochastic policy
        self.calls += 1
        return np.stack([np.tanh(obs[:, 3]), -np.tanh(obs[:, 3])], axis=1).astype(np.float32)


def terminate_at_5(obs, act, next_obs):
    return next_obs[:, 0] >= 5.0


def _starts(n, rng):
    obs = rng.standard_normal((n, OBS_DIM)).astype(np.float32)
    obs[:, 0] = rng.integers(0, 6, n)        # counter: terminates when it reaches 5
    obs[:, 1] = np.arange(n)                 # row id, carried unchanged by the dynamics
    return obs


def _reference(starts, horizon, nan_at):
    """Per-row simulation: list of (step t, obs, act, rew, next_obs, terminated) rows stored."""
    agent = FixedAgent()
    stored, nonfinite, terminated = [], 0, 0
    for s in starts:
        obs = s.copy()
        for t in range(horizon):
            act = agent.act(obs[None])[0]
            nxt = obs.copy()
            nxt[0] += 1.0
            nxt[2] += 0.5 * act[0]
            rew = np.float32(obs[0] + obs[1])
            if (int(obs[1]), t) in nan_at:
                nonfinite += 1
                break
            done = nxt[0] >= 5.0
            stored.append((t, obs, act, rew, nxt, done))
            if done:
                terminated += 1
                break
            obs = nxt
    return stored, nonfinite, terminated


@pytest.mark.parametrize("horizon", [0, 1, 3, 8])
def test_rollout_matches_per_row_reference(rng, horizon):
    n = 200
    real = ListPool()
    real.start_obs = _starts(n, rng)
    # identity sampling: make sample_obs return each start row exactly once, in order
    real.sample_obs = lambda k: real.start_obs[:k].copy()
    ids, steps = rng.integers(0, n, 30), rng.integers(0, 4, 30)
    nan_at = {(int(i), int(t)) for i, t in zip(ids, steps, strict=True)}
    model, pool = CounterModel(nan_at), ListPool()
    stats = BranchedRollout(model, FixedAgent(), terminate_at_5).run(real, pool, n, horizon,
                                                                     seed=11)
    ref, ref_nonfinite, ref_term = _reference(real.start_obs, horizon, nan_at)

    assert isinstance(stats, RolloutStats)
    assert stats.rows_added == len(ref) == len(pool)
    assert stats.nonfinite == ref_nonfinite
    assert stats.frac_terminated == pytest.approx(ref_term / n)
    assert stats.mean_length == pytest.approx(len(ref) / n)
    assert model.seeds == [step_seed(11, t) for t in range(len(model.seeds))]
    if horizon == 0:
        assert pool.calls == [] and stats.rows_added == 0
        return
    # one add_batch per step, holding exactly the alive rows of that step
    for t, call in enumerate(pool.calls):
        want = [r for r in ref if r[0] == t]
        order = np.argsort(call[0][:, 1])
        got = [c[order] for c in call]
        want = sorted(want, key=lambda r: r[1][1])
        assert len(got[0]) == len(want)
        np.testing.assert_allclose(got[0], np.stack([r[1] for r in want]), rtol=1e-6)
        np.testing.assert_allclose(got[1], np.stack([r[2] for r in want]), rtol=1e-6)
        np.testing.assert_allclose(got[2], np.array([r[3] for r in want]), rtol=1e-6)
        np.testing.assert_allclose(got[3], np.stack([r[4] for r in want]), rtol=1e-6)
        np.testing.assert_array_equal(got[4], np.array([r[5] for r in want]))
    rows = pool.rows()
    assert np.isfinite(rows[0]).all() and np.isfinite(rows[2]).all() and \
        np.isfinite(rows[3]).all()  # non-finite predictions never stored
    # a terminated row never appears again; the horizon end is stored as not terminated
    ended = set(rows[0][rows[4], 1].astype(int).tolist())
    for t, call in enumerate(pool.calls[1:], start=1):
        ids = set(call[0][:, 1].astype(int).tolist())
        ended_before = {int(r[1][1]) for r in ref if r[5] and r[0] < t}
        assert not ids & ended_before
    last = pool.calls[-1] if len(pool.calls) == horizon else None
    if last is not None:
        expect_term = last[3][:, 0] >= 5.0
        np.testing.assert_array_equal(last[4], expect_term)
    assert ended == {int(r[1][1]) for r in ref if r[5]}


def test_all_rows_terminate_stops_early(rng):
    real = ListPool()
    real.start_obs = _starts(50, rng)
    real.start_obs[:, 0] = 4.0  # every row terminates at its first step
    model, agent, pool = CounterModel(), FixedAgent(), ListPool()
    stats = BranchedRollout(model, agent, terminate_at_5).run(real, pool, 50, 10, seed=0)
    assert stats.frac_terminated == 1.0 and stats.mean_length == 1.0
    assert len(model.seeds) == 1 and agent.calls == 1
    assert pool.rows()[4].all()


def test_disagreement_is_averaged_over_visited_rows(rng):
    real = ListPool()
    real.start_obs = _starts(64, rng)
    real.start_obs[:, 0] = 0.0
    real.sample_obs = lambda k: real.start_obs[:k].copy()
    stats = BranchedRollout(CounterModel(), FixedAgent(), terminate_at_5,
                            disagreement_rows=16).run(real, ListPool(), 64, 3)
    # CounterModel.disagreement = |counter|, which is t at step t for every row: (0+1+2)/3
    assert stats.mean_disagreement == pytest.approx(1.0)
    off = BranchedRollout(CounterModel(), FixedAgent(), terminate_at_5, disagreement_rows=0)
    assert np.isnan(off.run(real, ListPool(), 64, 3).mean_disagreement)
    for rule in ("auto", "all"):  # the same mean: every row has the same disagreement per step
        stats = BranchedRollout(CounterModel(), FixedAgent(), terminate_at_5,
                                disagreement_rows=rule).run(real, ListPool(), 64, 3)
        assert stats.mean_disagreement == pytest.approx(1.0)
    for bad in (-1, "some", 1.5, True):
        with pytest.raises(ValueError, match="disagreement_rows"):
            BranchedRollout(CounterModel(), FixedAgent(), terminate_at_5, disagreement_rows=bad)


def test_termination_by_env_id_and_callable_agent(rng):
    real = ListPool(obs_dim=17, act_dim=6)
    real.start_obs = np.concatenate([_starts(20, rng), rng.standard_normal((20, 13))], 1)
    real.start_obs[:, 0] = 100.0  # would end the counter model's rows if terminate_at_5 ran
    rollout = BranchedRollout(CounterModel(), lambda o: np.zeros((len(o), 6), np.float32),
                              "HalfCheetah-v5")  # never terminates
    pool = ListPool(obs_dim=17, act_dim=6)
    stats = rollout.run(real, pool, 20, 4, seed=1)
    assert stats.rows_added == 80 and stats.frac_terminated == 0.0
    assert not pool.rows()[4].any()


def test_bad_arguments(rng):
    real = ListPool()
    real.start_obs = _starts(5, rng)
    rollout = BranchedRollout(CounterModel(), FixedAgent(), terminate_at_5)
    with pytest.raises(ValueError, match="num_starts"):
        rollout.run(real, ListPool(), 0, 3)
    with pytest.raises(ValueError, match="horizon"):
        rollout.run(real, ListPool(), 5, -1)
    empty = ListPool()
    with pytest.raises(ValueError, match="empty"):
        rollout.run(empty, ListPool(), 5, 1)
    with pytest.raises(TypeError, match="model"):
        BranchedRollout(object(), FixedAgent(), terminate_at_5)
    with pytest.raises(TypeError, match="agent"):
        BranchedRollout(CounterModel(), 3, terminate_at_5)
    with pytest.raises(ValueError, match="termination"):
        BranchedRollout(CounterModel(), FixedAgent(), "NoSuchEnv-v0")
    bad_term = BranchedRollout(CounterModel(), FixedAgent(), lambda o, a, n: np.zeros(3, bool))
    with pytest.raises(ValueError, match="termination returned shape"):
        bad_term.run(real, ListPool(), 5, 1)


def test_step_seed_distinct():
    seeds = {step_seed(s, t) for s in range(50) for t in range(50)}
    assert len(seeds) == 2500 and all(0 <= x < 2**63 for x in seeds)


def _real_components(obs_dim, act_dim, seed):
    from mbpo_fast.ensemble import EnsembleDynamics
    from mbpo_fast.pool import ReplayPool
    from mbpo_fast.sac import SAC

    rng = np.random.default_rng(seed)
    n = 300
    obs = rng.standard_normal((n, obs_dim)).astype(np.float32)
    act = rng.uniform(-1, 1, (n, act_dim)).astype(np.float32)
    nxt = (obs + 0.1 * np.tanh(act).sum(1, keepdims=True)).astype(np.float32)
    rew = obs[:, 0].astype(np.float32)
    real = ReplayPool(n, obs_dim, act_dim, seed=seed)
    real.add_batch(obs, act, rew, nxt, np.zeros(n, bool))
    model = EnsembleDynamics(obs_dim, act_dim, ensemble_size=3, num_elites=2, hidden_size=16,
                             num_layers=2, seed=seed)
    model.fit(obs, act, rew, nxt, max_epochs=2)
    agent = SAC(obs_dim, act_dim, -np.ones(act_dim), np.ones(act_dim), hidden_size=16, seed=seed)
    return real, model, agent


def test_real_components_deterministic_and_consistent():
    from mbpo_fast.pool import ReplayPool

    results = []
    for _ in range(2):
        real, model, agent = _real_components(5, 2, seed=4)
        pool = ReplayPool(10_000, 5, 2, seed=0)
        stats = BranchedRollout(model, agent, lambda o, a, n: np.abs(n[:, 0]) > 2.0).run(
            real, pool, 500, 4, seed=9)
        results.append((stats, pool.transitions()))
    (s0, t0), (s1, t1) = results
    for a, b in zip(t0, t1, strict=True):
        np.testing.assert_array_equal(a, b)
    assert s0.rows_added == s1.rows_added == len(t0.obs)
    assert s0.nonfinite == 0 and np.isfinite(s0.mean_disagreement) and s0.mean_disagreement > 0
    # terminated rows are exactly those the termination function flags, and stop there
    np.testing.assert_array_equal(t0.terminated, np.abs(t0.next_obs[:, 0]) > 2.0)
    assert s0.frac_terminated == pytest.approx(t0.terminated.sum() / 500)
    assert 1.0 <= s0.mean_length <= 4.0
    assert s0.mean_length == pytest.approx(len(t0.obs) / 500)
    assert (np.abs(t0.act) <= 1.0).all()
