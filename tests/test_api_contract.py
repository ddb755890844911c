"""The public Python API of DESIGN §3: names and parameters other code depends on."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import mbpo_fast as mf


def _params(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


def test_top_level_functions():
    assert mf.backend() in ("native", "numba")
    assert isinstance(mf.has_cuda(), bool)
    info = mf.build_info()
    assert {"cuda_compiled", "cuda_architectures", "compiler", "simd", "version"} <= set(info)
    assert callable(mf.cmake_dir)


def test_transition_fields():
    assert mf.Transition._fields == ("obs", "act", "rew", "next_obs", "terminated")


def test_replay_pool_api():
    pool = mf.ReplayPool(10, 3, 2, seed=0)
    assert (pool.capacity, pool.obs_dim, pool.act_dim, len(pool)) == (10, 3, 2, 0)
    for name in ("add", "add_batch", "sample", "sample_obs", "transitions", "resize", "clear",
                 "save"):
        assert callable(getattr(pool, name)), name
    assert _params(mf.ReplayPool.add)[:5] == ["obs", "act", "rew", "next_obs", "terminated"]
    assert _params(mf.ReplayPool.add_batch)[:5] == ["obs", "act", "rew", "next_obs", "terminated"]
    assert callable(mf.ReplayPool.load)
    assert _params(mf.sample_mixed)[:4] == ["real_pool", "model_pool", "batch_size", "real_ratio"]


def test_ensemble_api():
    sig = inspect.signature(mf.EnsembleDynamics)
    defaults = {k: v.default for k, v in sig.parameters.items()}
    assert list(sig.parameters)[:2] == ["obs_dim", "act_dim"]
    assert defaults["ensemble_size"] == 7 and defaults["num_elites"] == 5
    assert defaults["hidden_size"] == 200 and defaults["num_layers"] == 4 and defaults["seed"] == 0
    model = mf.EnsembleDynamics(3, 2, ensemble_size=3, num_elites=2, hidden_size=8, num_layers=2)
    assert _params(model.fit)[:4] == ["obs", "act", "rew", "next_obs"]
    assert _params(model.step)[:5] == ["obs", "act", "seed", "deterministic", "members"]
    assert isinstance(model.elites, list)
    obs = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    act = np.random.default_rng(1).standard_normal((4, 2)).astype(np.float32)
    mean, var = model.predict(obs, act)
    assert mean.shape == var.shape == (3, 4, 4) and mean.dtype == np.float32
    next_obs, rew = model.step(obs, act, seed=0)
    assert next_obs.shape == (4, 3) and rew.shape == (4,)
    assert callable(model.save) and callable(mf.EnsembleDynamics.load)


def test_sac_api():
    names = _params(mf.SAC)
    assert names[:4] == ["obs_dim", "act_dim", "action_low", "action_high"]
    agent = mf.SAC(3, 2, -np.ones(2, np.float32), np.ones(2, np.float32))
    a = agent.act(np.zeros(3, np.float32) + 0.1)
    assert a.shape == (2,)
    assert agent.act(np.full((5, 3), 0.1, np.float32), deterministic=True).shape == (5, 2)
    for name in ("update", "export_actor"):
        assert callable(getattr(agent, name)), name


def test_termination_api():
    fn = mf.termination_fn("Hopper-v5")
    obs = np.zeros((2, 11), np.float32) + 0.01
    obs[:, 0] = 1.25
    out = fn(obs, np.zeros((2, 3), np.float32), obs)
    assert out.dtype == np.bool_ and out.shape == (2,)
    with pytest.raises(ValueError):
        mf.termination_fn("NoSuchEnv-v0")


def test_trainer_api():
    cfg = mf.MBPOConfig.for_env("Hopper-v5")
    assert cfg is not None
    assert callable(mf.MBPO) and callable(mf.BranchedRollout)
    assert _params(mf.BranchedRollout.run)[:5] == ["real_pool", "model_pool", "num_starts",
                                                     "horizon", "seed"]


def test_planning_api():
    sig = inspect.signature(mf.MPC)
    want = dict(reward_fn=None, termination=None, horizon=30, optimizer="cem", population=500,
                elites=50, iterations=5, alpha=0.1, particles=20, propagation="ts_inf", seed=0)
    assert list(sig.parameters)[:3] == ["model", "action_low", "action_high"]
    for name, default in want.items():
        assert sig.parameters[name].default == default, name
    assert callable(mf.MPC.plan) and callable(mf.MPC.reset)
    assert callable(mf.PETS) and callable(mf.PETSConfig)
