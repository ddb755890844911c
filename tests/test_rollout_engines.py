"""BranchedRollout picks the native single-call engine for real components, and both
engines implement the same semantics."""

from __future__ import annotations

import numpy as np
import pytest

import mbpo_fast as mf
from mbpo_fast.rollout_native import run_native_rollout

OBS, ACT = 11, 3


def _components(rng, n_real=500):
    model = mf.EnsembleDynamics(OBS, ACT, ensemble_size=4, num_elites=3, hidden_size=32,
                                num_layers=2, seed=3)
    agent = mf.SAC(OBS, ACT, -np.ones(ACT, np.float32), np.ones(ACT, np.float32), hidden_size=32,
                   seed=4)
    real = mf.ReplayPool(1000, OBS, ACT, seed=5)
    obs = rng.normal(0, 0.1, (n_real, OBS)).astype(np.float32)
    obs[:, 0] += 1.3  # Hopper: healthy height
    act = rng.uniform(-1, 1, (n_real, ACT)).astype(np.float32)
    next_obs = obs + rng.normal(0, 0.01, obs.shape).astype(np.float32)
    rew = rng.normal(size=n_real).astype(np.float32)
    real.add_batch(obs, act, rew, next_obs, np.zeros(n_real, bool))
    model.fit(obs, act, rew, next_obs, max_epochs=2)
    return model, agent, real


def test_auto_uses_native_engine_and_matches_it(backend, rng):
    model, agent, real = _components(rng)
    pool_a = mf.ReplayPool(10_000, OBS, ACT)
    pool_b = mf.ReplayPool(10_000, OBS, ACT)
    stats = mf.BranchedRollout(model, agent, "Hopper-v5").run(real, pool_a, 300, 4, seed=9)
    ref = run_native_rollout(model, agent, "Hopper-v5", real, pool_b, 300, 4, 9,
                             disagreement_rows="auto")
    assert stats.rows_added == ref["rows_added"] == len(pool_a) == len(pool_b)
    assert stats.frac_terminated == ref["frac_terminated"]
    assert stats.mean_length == pytest.approx(ref["mean_length"])
    a, b = pool_a.transitions(), pool_b.transitions()
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert np.isfinite(stats.mean_disagreement) and stats.mean_disagreement > 0


def test_python_and_native_engines_agree_in_distribution(rng):
    """Different random streams, same semantics: same row counts, termination rates and
    transition statistics within sampling error."""
    model, agent, real = _components(rng)
    out = {}
    for engine in ("native", "python"):
        pool = mf.ReplayPool(100_000, OBS, ACT)
        stats = mf.BranchedRollout(model, agent, "Hopper-v5", engine=engine).run(
            real, pool, 4000, 3, seed=1)
        out[engine] = (stats, pool.transitions())
    (sn, tn), (sp, tp) = out["native"], out["python"]
    assert abs(sn.rows_added - sp.rows_added) < 0.05 * sn.rows_added
    assert abs(sn.frac_terminated - sp.frac_terminated) < 0.05
    for field in ("act", "rew", "next_obs"):
        xn, xp = getattr(tn, field), getattr(tp, field)
        se = np.sqrt(xn.var(axis=0) / len(xn) + xp.var(axis=0) / len(xp)) + 1e-6
        assert np.all(np.abs(xn.mean(axis=0) - xp.mean(axis=0)) < 6 * se), field
    assert np.all(np.abs(tn.act) <= 1.0)


def test_engine_selection_errors(rng):
    model, agent, real = _components(rng, n_real=50)
    with pytest.raises(ValueError, match="engine"):
        mf.BranchedRollout(model, agent, "Hopper-v5", engine="gpu")
    with pytest.raises(TypeError, match="engine='native'"):
        mf.BranchedRollout(model, lambda o: np.zeros((len(o), ACT), np.float32), "Hopper-v5",
                           engine="native")
