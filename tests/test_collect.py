"""EnvCollector: true final observations, terminated vs truncated, episode statistics,
policies, seeding and gymnasium vector envs in every autoreset mode."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mbpo_fast.collect import EnvCollector, EpisodeStats
from mbpo_fast.termination import termination_fn
from mbpo_fast.types import Transition

gym = pytest.importorskip("gymnasium")


class ListPool:
    """A list-backed stand-in for mf.ReplayPool with the same add/add_batch/len/transitions()."""

    def __init__(self, obs_dim: int | None = None, act_dim: int | None = None) -> None:
        self.rows: list[tuple] = []
        self.calls: list[int] = []  # rows per add/add_batch call
        if obs_dim is not None:
            self.obs_dim, self.act_dim = obs_dim, act_dim

    def add(self, obs, act, rew, next_obs, terminated) -> None:
        self.rows.append(
            (
                np.array(obs, np.float32),
                np.array(act, np.float32),
                np.float32(rew),
                np.array(next_obs, np.float32),
                bool(terminated),
            )
        )
        self.calls.append(1)

    def add_batch(self, obs, act, rew, next_obs, terminated) -> None:
        for row in zip(obs, act, rew, next_obs, terminated, strict=True):
            self.add(*row)
        del self.calls[-len(obs) :]
        self.calls.append(len(obs))

    def __len__(self) -> int:
        return len(self.rows)

    def transitions(self) -> Transition:
        cols = list(zip(*self.rows, strict=True))
        return Transition(
            np.stack(cols[0]),
            np.stack(cols[1]),
            np.asarray(cols[2], np.float32),
            np.stack(cols[3]),
            np.asarray(cols[4], bool),
        )


class RecordSteps(gym.Wrapper):
    """Records exactly what step() returns, independently of the collector."""

    def __init__(self, env):
        super().__init__(env)
        self.returned: list[tuple] = []

    def step(self, action):
        out = self.env.step(action)
        self.returned.append((np.array(out[0]), out[1], out[2], out[3]))
        return out


@pytest.fixture(autouse=True)
def _mujoco_log_elsewhere(tmp_path):
    """MuJoCo writes MUJOCO_LOG.TXT (compiler warnings) to the working directory."""
    old = os.getcwd()
    os.chdir(tmp_path)
    yield
    os.chdir(old)


def test_time_limit_truncation_is_not_terminal():
    env = RecordSteps(gym.make("Pendulum-v1", max_episode_steps=5))
    pool = ListPool()
    collector = EnvCollector(env, pool, seed=3)
    finished = collector.collect(None, 12)

    assert finished == [
        EpisodeStats(finished[0].episode_return, 5, False, 0),
        EpisodeStats(finished[1].episode_return, 5, False, 0),
    ]
    assert collector.episode_length == 2 and collector.num_episodes == 2
    assert len(pool) == 12 == collector.num_stored == collector.env_steps
    t = pool.transitions()
    assert not t.terminated.any()
    returned = env.returned
    truncated = np.flatnonzero([r[3] for r in returned])
    np.testing.assert_array_equal(truncated, [4, 9])
    for i, (next_obs, rew, _, _) in enumerate(returned):
        np.testing.assert_array_equal(t.next_obs[i], np.float32(next_obs))  # the true final obs
        assert t.rew[i] == np.float32(rew)
    # Within an episode the rows chain; across a reset the next obs is a fresh start.
    for i in range(11):
        if i in truncated:
            assert not np.array_equal(t.obs[i + 1], t.next_obs[i])
        else:
            np.testing.assert_array_equal(t.obs[i + 1], t.next_obs[i])
    np.testing.assert_allclose(
        [e.episode_return for e in finished], [t.rew[:5].sum(), t.rew[5:10].sum()], rtol=1e-5
    )


def test_true_termination_is_stored_and_episodes_are_contiguous():
    pool = ListPool(obs_dim=4, act_dim=1)
    env = RecordSteps(gym.make("InvertedPendulum-v5"))
    collector = EnvCollector(env, pool, seed=0)
    finished = collector.collect(None, 300)
    t = pool.transitions()
    assert len(pool) == 300
    ends = np.cumsum([e.length for e in finished]) - 1
    assert len(finished) >= 5 and all(e.terminated for e in finished)
    np.testing.assert_array_equal(np.flatnonzero(t.terminated), ends)
    # The stored flag is the env's, and the stored final obs shows why it terminated.
    np.testing.assert_array_equal(t.terminated, [r[2] for r in env.returned])
    np.testing.assert_array_equal(
        termination_fn("InvertedPendulum-v5")(t.obs, t.act, t.next_obs), t.terminated
    )
    starts = np.concatenate([[0], ends[:-1] + 1])
    for s, e, stats in zip(starts, ends, finished, strict=True):
        np.testing.assert_array_equal(t.obs[s + 1 : e + 1], t.next_obs[s:e])  # contiguous
        assert stats.length == e - s + 1
        assert stats.episode_return == pytest.approx(float(t.rew[s : e + 1].sum()), rel=1e-6)
    assert np.abs(t.act).max() <= 3.0


def test_policies_seeding_and_validation():
    def run(policy, seed=1):
        pool = ListPool()
        EnvCollector(gym.make("Pendulum-v1", max_episode_steps=20), pool, seed=seed).collect(
            policy, 30
        )
        return pool.transitions()

    a, b, c = run(None), run(None), run(None, seed=2)
    np.testing.assert_array_equal(a.obs, b.obs)
    np.testing.assert_array_equal(a.act, b.act)  # seeded random actions
    assert not np.array_equal(a.act, c.act)

    seen = []

    def fn(obs):
        seen.append(obs)
        return np.array([0.5 * np.tanh(obs[0])])

    class Agent:
        def act(self, obs):
            return fn(obs)

    x, y = run(fn), run(Agent())
    np.testing.assert_array_equal(x.act, y.act)
    torch = pytest.importorskip("torch")
    z = run(lambda o: torch.from_numpy(fn(o)).float())  # torch actions are accepted too
    np.testing.assert_array_equal(x.act, z.act)
    np.testing.assert_allclose(x.act[:, 0], 0.5 * np.tanh(x.obs[:, 0]), rtol=1e-6)
    assert all(o.dtype == np.float32 and o.shape == (3,) for o in seen)

    env = gym.make("Pendulum-v1")
    collector = EnvCollector(env, ListPool(), seed=0)
    with pytest.raises(ValueError, match=r"policy.*\(2,\).*\(1,\)"):
        collector.step(lambda o: np.zeros(2))
    with pytest.raises(TypeError, match="policy"):
        collector.step(42)
    with pytest.raises(ValueError, match="obs_dim"):
        EnvCollector(env, ListPool(obs_dim=4, act_dim=1))
    with pytest.raises(TypeError, match="pool"):
        EnvCollector(env, object())
    with pytest.raises(ValueError, match="num_steps"):
        collector.collect(None, -1)


def test_nonfinite_transitions_are_counted_not_stored():
    class NaNAtThirdStep(gym.Wrapper):
        def __init__(self, env):
            super().__init__(env)
            self.t = 0

        def step(self, action):
            self.t += 1
            obs, rew, term, trunc, info = self.env.step(action)
            return obs, (float("nan") if self.t == 3 else rew), term, trunc, info

    pool = ListPool()
    collector = EnvCollector(NaNAtThirdStep(gym.make("Pendulum-v1")), pool, seed=0)
    with pytest.warns(RuntimeWarning, match="NaN/Inf"):
        collector.collect(None, 5)
    assert len(pool) == 4 and collector.num_nonfinite == 1 and collector.env_steps == 5
    assert np.isfinite(pool.transitions().rew).all()


# ----------------------------------------------------------------------------------------------
# Vector envs: every stored row must equal the single-env rollout of its sub-env.

HORIZON = 8  # time limit: episodes end both by termination and by truncation


def chaotic_policy(obs):
    """Deterministic in obs (so sub-env i reproduces a single env seeded seed + i)."""
    obs = np.asarray(obs, np.float64)
    return (1.0 * np.sin(50.0 * obs.sum(axis=-1, keepdims=True) + 1.0)).astype(np.float32)


def single_env_reference(seed: int, transitions: int):
    env = gym.make("InvertedPendulum-v5", max_episode_steps=HORIZON)
    obs, _ = env.reset(seed=seed)
    rows, episodes = [], []
    ret, length = 0.0, 0
    while len(rows) < transitions:
        obs32 = np.float32(obs)
        act = chaotic_policy(obs32)
        nxt, rew, term, trunc, _ = env.step(act)
        rows.append((obs32, act, np.float32(rew), np.float32(nxt), bool(term)))
        ret, length = ret + rew, length + 1
        if term or trunc:
            episodes.append((ret, length, bool(term)))
            ret, length = 0.0, 0
            obs, _ = env.reset()
        else:
            obs = nxt
    return rows, episodes


@pytest.mark.parametrize("mode", ["NextStep", "SameStep", "Disabled"])
def test_vector_env_autoreset_modes(mode):
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    n, seed, steps = 3, 7, 80
    venv = SyncVectorEnv(
        [lambda: gym.make("InvertedPendulum-v5", max_episode_steps=HORIZON)] * n,
        autoreset_mode=AutoresetMode(mode),
    )
    pool = ListPool(obs_dim=4, act_dim=1)
    collector = EnvCollector(venv, pool, seed=seed)
    per_env: list[list[int]] = [[] for _ in range(n)]  # pool row indices of each sub-env
    episodes: list[list[EpisodeStats]] = [[] for _ in range(n)]
    for _ in range(steps):
        start = len(pool)
        info = collector.step(chaotic_policy)
        rows = np.flatnonzero(info.transition)
        assert info.stored == len(rows) == len(pool) - start
        for k, i in enumerate(rows):
            per_env[i].append(start + k)
        for e in info.episodes:
            episodes[e.env_index].append(e)
    if mode == "NextStep":
        assert collector.env_steps < n * steps  # reset steps are not transitions
    else:
        assert collector.env_steps == n * steps
    t = pool.transitions()
    saw_term = saw_trunc = False
    for i in range(n):
        ref_rows, ref_eps = single_env_reference(seed + i, len(per_env[i]))
        for j, (o, a, r, nx, term) in zip(per_env[i], ref_rows, strict=True):
            np.testing.assert_array_equal(t.obs[j], o)
            np.testing.assert_array_equal(t.act[j], a)
            assert t.rew[j] == r and t.terminated[j] == term
            np.testing.assert_array_equal(t.next_obs[j], nx)  # the true final observation
        got = [(e.episode_return, e.length, e.terminated) for e in episodes[i]]
        assert len(got) == len(ref_eps[: len(got)]) and len(got) >= 3
        for g, w in zip(got, ref_eps, strict=False):
            assert g[1:] == w[1:] and g[0] == pytest.approx(w[0])
        saw_term |= any(e.terminated for e in episodes[i])
        saw_trunc |= any(not e.terminated for e in episodes[i])
    assert saw_term and saw_trunc
    venv.close()
