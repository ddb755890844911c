"""The MPC planner with a CUDA model (csrc/cuda/planner.cu, issue 17): the particle rollouts
on the device, the CPU planner's optimizer loop on the host.

`gpu` tests: for the same seed the device planner draws the CPU planner's candidates, member
choices (TS-inf / TS-1) and noise, so members agree exactly and values / actions to float
rounding; built-in rewards, the model's reward and terminations; the clear errors for what
runs only on the CPU (Python callables).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_planner import random_model

import mbpo_fast as mf
from mbpo_fast import _backend

pytestmark = pytest.mark.skipif(
    "native" not in _backend.available(), reason="needs the native extension"
)


def _cuda_copy(model: mf.EnsembleDynamics) -> mf.EnsembleDynamics:
    gpu = mf.EnsembleDynamics(model.obs_dim, model.act_dim, ensemble_size=model.ensemble_size,
                              num_elites=len(model.elites), hidden_size=24, num_layers=3,
                              device="cuda")
    gpu.load_state_dict(model.state_dict())
    assert gpu.elites == model.elites
    return gpu


@pytest.mark.gpu
@pytest.mark.parametrize("propagation", ["ts_inf", "ts_1"])
@pytest.mark.parametrize("env_id", ["Pendulum-v1", "InvertedPendulum-v5", None])
def test_cuda_evaluate_matches_cpu(rng, propagation, env_id):
    obs_dim = 4 if env_id == "InvertedPendulum-v5" else 3
    cpu = random_model(obs_dim, 1, seed=11, elites=(4, 1, 3))
    gpu = _cuda_copy(cpu)
    kw = dict(reward_fn=env_id, termination=env_id if env_id else None, particles=6,
              propagation=propagation)
    N, H = 33, 9
    actions = rng.uniform(-2, 2, (N, H, 1)).astype(np.float32)
    obs = (0.1 * rng.normal(size=obs_dim)).astype(np.float32)
    seed = int(rng.integers(2**63))
    want_v, want_m = mf.MPC(cpu, [-2], [2], **kw).evaluate(obs, actions, seed=seed)
    got_v, got_m = mf.MPC(gpu, [-2], [2], **kw).evaluate(obs, actions, seed=seed)
    np.testing.assert_array_equal(got_m, want_m)
    finite = np.isfinite(want_v)
    np.testing.assert_array_equal(np.isfinite(got_v), finite)
    np.testing.assert_allclose(got_v[finite], want_v[finite], rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "env_id,optimizer,propagation",
    [("Pendulum-v1", "cem", "ts_inf"), ("InvertedPendulum-v5", "cem", "ts_1"),
     ("Pendulum-v1", "random", "ts_1"), (None, "cem", "ts_inf"), (None, "random", "ts_inf")],
)
def test_cuda_plan_matches_cpu(rng, env_id, optimizer, propagation):
    obs_dim = 4 if env_id == "InvertedPendulum-v5" else 3
    cpu = random_model(obs_dim, 1, seed=int(rng.integers(1000)))
    gpu = _cuda_copy(cpu)
    obs = (0.1 * rng.normal(size=obs_dim)).astype(np.float32)
    kw = dict(reward_fn=env_id, termination=env_id, horizon=7, optimizer=optimizer,
              population=40, elites=5, iterations=3, alpha=0.2, particles=3,
              propagation=propagation, seed=int(rng.integers(2**63)))
    m_cpu, m_gpu = mf.MPC(cpu, [-2], [2], **kw), mf.MPC(gpu, [-2], [2], **kw)
    for _ in range(2):  # the second call warm-starts from the shifted mean
        want, got = m_cpu.plan(obs), m_gpu.plan(obs)
        np.testing.assert_allclose(got, want, atol=2e-4)
        np.testing.assert_allclose(m_gpu.mean, m_cpu.mean, atol=2e-4)
        for key in ("best_value", "elite_value"):
            assert m_gpu.last_stats[key] == pytest.approx(m_cpu.last_stats[key], rel=1e-4, abs=1e-4)
        assert m_gpu.last_stats["failed"] == m_cpu.last_stats["failed"]
        assert m_gpu.last_stats["iterations"] == m_cpu.last_stats["iterations"]
    assert m_gpu.calls == 2 and m_gpu.state_dict()["calls"] == 2


@pytest.mark.gpu
def test_cuda_planner_errors(rng):
    cpu = random_model(3, 1, seed=5)
    gpu = _cuda_copy(cpu)
    with pytest.raises(TypeError, match="CPU model for callables"):
        mf.MPC(gpu, [-2], [2], reward_fn=lambda o, a, n: np.zeros(len(o)))
    with pytest.raises(TypeError, match="CPU model for callables"):
        mf.MPC(gpu, [-2], [2], reward_fn="Pendulum-v1", termination=lambda o, a, n: o[:, 0] > 9)
    m = mf.MPC(gpu, [-2], [2], reward_fn="Pendulum-v1", horizon=4, population=10, elites=2)
    with pytest.raises(ValueError, match="non-finite"):
        m.plan(np.array([np.nan, 0, 0], np.float32))
    with pytest.raises(ValueError, match="shape"):
        m.plan(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="actions: contains a non-finite"):
        m.evaluate(np.zeros(3, np.float32), np.full((2, 4, 1), np.nan, np.float32))
    with pytest.raises(ValueError, match="obs: contains a non-finite"):
        m.evaluate(np.array([0, np.inf, 0], np.float32), np.zeros((2, 4, 1), np.float32))
    assert m.calls == 0
    with pytest.raises(ValueError, match="reward"):  # Hopper's reward needs obs_dim 11
        mf.MPC(gpu, [-2], [2], reward_fn="Hopper-v5", horizon=4, population=10, elites=2).plan(
            np.zeros(3, np.float32))


# ---------------------------------------------------------------------------- CPU: wiring


class _FakeCudaModel:
    """Stands in for a CUDA EnsembleDynamics (device.type == "cuda") over a CPU model, so the
    MPC's device routing is testable without a GPU; cuda_ops' planner entry points are
    monkeypatched to the CPU planner."""

    def __init__(self, cpu):
        import torch

        self.cpu, self.device = cpu, torch.device("cuda")
        self.obs_dim, self.act_dim = cpu.obs_dim, cpu.act_dim


def test_mpc_routes_a_cuda_model_to_the_device_planner(monkeypatch, rng):
    from mbpo_fast import cuda_ops

    cpu = random_model(3, 1, seed=2)
    calls = []

    def fake_plan(model, obs, mean, low, high, reward, termination, optimizer, population,
                  num_elites, iterations, alpha, particles, propagation, horizon, seed, call):
        calls.append(("plan", reward, termination, optimizer, propagation, seed, call))
        ref = mf.MPC(model.cpu, low, high, reward_fn="Pendulum-v1", horizon=horizon,
                     optimizer=optimizer, population=population, elites=num_elites,
                     iterations=iterations, alpha=alpha, particles=particles,
                     propagation=propagation, seed=seed)
        ref.load_state_dict({"mean": mean, "calls": call})
        action = ref.plan(obs)
        return action, ref._last_final_mean, ref.last_stats

    def fake_evaluate(model, obs, actions, reward, termination, particles, propagation, seed):
        calls.append(("evaluate", reward, termination, particles, propagation, seed))
        return np.zeros(len(actions)), np.zeros((actions.shape[1], len(actions) * particles))

    monkeypatch.setattr(cuda_ops, "mpc_plan", fake_plan)
    monkeypatch.setattr(cuda_ops, "mpc_evaluate", fake_evaluate)
    monkeypatch.setattr(mf.MPC, "_advance", _record_final_mean(mf.MPC._advance))
    fake = _FakeCudaModel(cpu)
    with pytest.raises(TypeError, match="CPU model for callables"):
        mf.MPC(fake, [-2], [2], reward_fn=lambda o, a, n: np.zeros(len(o)))
    kw = dict(reward_fn="Pendulum-v1", horizon=4, population=20, elites=3, iterations=2,
              particles=2, propagation="ts_1", seed=9)
    m_dev, m_cpu = mf.MPC(fake, [-2], [2], **kw), mf.MPC(cpu, [-2], [2], **kw)
    obs = (0.1 * rng.normal(size=3)).astype(np.float32)
    for k in range(2):
        np.testing.assert_array_equal(m_dev.plan(obs), m_cpu.plan(obs))
        np.testing.assert_array_equal(m_dev.mean, m_cpu.mean)
        assert calls[-1] == ("plan", m_dev._reward, 0, "cem", "ts_1", 9, k)
    m_dev.evaluate(obs, np.zeros((5, 4, 1), np.float32), seed=3)
    assert calls[-1] == ("evaluate", m_dev._reward, 0, 2, "ts_1", 3)


def _record_final_mean(advance):
    def wrapped(self, action, mean, stats):
        self._last_final_mean = np.array(mean, np.float32)
        return advance(self, action, mean, stats)
    return wrapped
