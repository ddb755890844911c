"""examples/cpp: a C++ pendulum simulator embedding mbpo_fast with no Python.

The example is built with CMake against the INSTALLED package (find_package(mbpo_fast) +
mbpo_fast::core) in a temporary directory, run on a model and an actor exported from Python,
and its outputs are compared with the Python API for the same files and seed: member choices
exactly, values to float rounding; its simulator is checked against gymnasium's Pendulum-v1.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import mbpo_fast as mf
from mbpo_fast import _backend
from mbpo_fast.rollout_native import actor_act

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "cpp"
SEED = 20260
EPISODES, EPISODE_STEPS, NUM_STARTS, HORIZON = 3, 200, 700, 6


@pytest.fixture(scope="module")
def example_exe(installed_cmake_prefix, cmake_build, tmp_path_factory) -> Path:
    build = tmp_path_factory.mktemp("example_build")
    cmake_build(EXAMPLE, build, f"-DCMAKE_PREFIX_PATH={installed_cmake_prefix}")
    exe = build / "pendulum_mbpo"
    assert exe.is_file()
    return exe


def _pendulum_data(n: int, rng: np.random.Generator):
    """Random-torque Pendulum-v1 transitions (gymnasium's equations in numpy)."""
    th = rng.uniform(-np.pi, np.pi, n)
    thdot = rng.uniform(-8.0, 8.0, n)
    u = rng.uniform(-2.0, 2.0, n)
    angle = ((th + np.pi) % (2 * np.pi)) - np.pi
    rew = -(angle**2 + 0.1 * thdot**2 + 0.001 * u**2)
    new_thdot = np.clip(thdot + (15.0 * np.sin(th) + 3.0 * u) * 0.05, -8.0, 8.0)
    new_th = th + new_thdot * 0.05
    obs = np.stack([np.cos(th), np.sin(th), thdot], 1)
    next_obs = np.stack([np.cos(new_th), np.sin(new_th), new_thdot], 1)
    return (obs.astype(np.float32), u[:, None].astype(np.float32), rew.astype(np.float32),
            next_obs.astype(np.float32))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A briefly fitted pendulum ensemble and a SAC actor, exported the documented way."""
    d = tmp_path_factory.mktemp("exported")
    torch.manual_seed(0)
    model = mf.EnsembleDynamics(3, 1, ensemble_size=7, num_elites=5, hidden_size=64,
                                num_layers=3, seed=3)
    model.fit(*_pendulum_data(1500, np.random.default_rng(4)), max_epochs=4, seed=5)
    agent = mf.SAC(3, 1, np.array([-2.0]), np.array([2.0]), hidden_size=64, seed=6)
    # A random actor is near-uniform; spread its head so actions and log_stds vary per state.
    with torch.no_grad():
        agent.actor.layers[-1].weight.mul_(4.0)
    model.save(d / "model.safetensors")
    agent.export_actor(d / "actor.safetensors")
    return d, model, agent


@pytest.fixture(scope="module")
def example_run(example_exe, exported, checked_run, tmp_path_factory):
    d, _, _ = exported
    out_dir = tmp_path_factory.mktemp("example_out")
    out = checked_run([str(example_exe), str(d / "model.safetensors"), str(d / "actor.safetensors"),
                "--episodes", str(EPISODES), "--episode-steps", str(EPISODE_STEPS),
                "--num-starts", str(NUM_STARTS), "--horizon", str(HORIZON), "--seed", str(SEED),
                "--dump", str(out_dir)])
    return out_dir, out.stdout


def _read(path: Path, dtype, shape) -> np.ndarray:
    a = np.fromfile(path, dtype=dtype)
    assert a.size == int(np.prod(shape)), f"{path.name}: {a.size} values, expected shape {shape}"
    return a.reshape(shape)


def test_model_step_and_actor_match_python(example_run, exported):
    out_dir, _ = example_run
    d, _, agent = exported
    model = mf.EnsembleDynamics.load(d / "model.safetensors")
    real = mf.ReplayPool.load(out_dir / "real_pool.bin")
    n = EPISODES * EPISODE_STEPS
    assert len(real) == n
    obs, act = real.transitions().obs, real.transitions().act

    members = _read(out_dir / "step_members.i64", "<i8", (n,))
    next_obs = _read(out_dir / "step_next_obs.f32", "<f4", (n, 3))
    rew = _read(out_dir / "step_reward.f32", "<f4", (n,))
    py_next, py_rew, py_members = model.step(obs, act, seed=SEED, return_members=True)
    np.testing.assert_array_equal(members, py_members)
    assert set(members.tolist()) == set(model.elites)  # every elite drawn, nothing else
    np.testing.assert_allclose(next_obs, py_next, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rew, py_rew, rtol=1e-5, atol=1e-6)
    assert not np.allclose(next_obs, model.step(obs, act, seed=SEED + 1)[0])  # the seed matters

    # Actor: deterministic vs the torch policy; stochastic vs a torch reference fed the
    # documented Philox noise (seed, STREAM_POLICY_NOISE, i * act_dim + j), and vs Python's
    # native actor.
    det = _read(out_dir / "actor_deterministic.f32", "<f4", (n, 1))
    sto = _read(out_dir / "actor_stochastic.f32", "<f4", (n, 1))
    np.testing.assert_allclose(det, agent.act(obs, deterministic=True), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        mean, log_std = agent._policy(torch.from_numpy(obs))
        eps = torch.from_numpy(_backend.ops.philox_fill_normal(
            SEED, _backend.ops.STREAM_POLICY_NOISE, 0, n).reshape(n, 1))
        ref = torch.clamp(torch.tanh(mean + log_std.exp() * eps) * 2.0, -2.0, 2.0).numpy()
    np.testing.assert_allclose(sto, ref, rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(sto, actor_act(agent, obs, seed=SEED)[0], rtol=1e-5, atol=1e-6)
    assert np.std(sto - det) > 0.05  # the noise is really there


def test_rollout_matches_python_native_engine(example_run, exported):
    out_dir, stdout = example_run
    d, _, agent = exported
    model = mf.EnsembleDynamics.load(d / "model.safetensors")
    real = mf.ReplayPool.load(out_dir / "real_pool.bin")
    cpp_pool = mf.ReplayPool.load(out_dir / "model_pool.bin")
    stats = json.loads((out_dir / "stats.json").read_text())

    py_pool = mf.ReplayPool(NUM_STARTS * HORIZON, 3, 1, seed=SEED)
    py = mf.BranchedRollout(model, agent, "Pendulum-v1", engine="native").run(
        real, py_pool, NUM_STARTS, HORIZON, SEED)
    assert stats["rows_added"] == py.rows_added == len(py_pool) == len(cpp_pool)
    assert stats["rows_added"] == NUM_STARTS * HORIZON  # Pendulum never terminates
    assert f"rows added {py.rows_added}" in stdout
    assert stats["nonfinite"] == py.nonfinite == 0
    assert stats["mean_length"] == pytest.approx(py.mean_length)
    assert stats["mean_disagreement"] == pytest.approx(py.mean_disagreement, rel=1e-5)
    assert stats["mean_disagreement"] > 0
    a, b = cpp_pool.transitions(), py_pool.transitions()
    for field in ("obs", "act", "rew", "next_obs"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-5, atol=1e-5,
                                   err_msg=field)
    np.testing.assert_array_equal(a.terminated, b.terminated)
    # Start states are simulator states: the first step's obs are rows of the real pool.
    real_obs = real.transitions().obs
    first = a.obs[:NUM_STARTS]
    assert all((np.abs(real_obs - row).max(axis=1) == 0).any() for row in first[:50])


def test_simulator_matches_gymnasium_pendulum(example_run):
    gym = pytest.importorskip("gymnasium")
    out_dir, _ = example_run
    t = mf.ReplayPool.load(out_dir / "real_pool.bin").transitions()
    assert not t.terminated.any()
    # Episodes chain: each next_obs is the following row's obs within an episode.
    ep = t.obs.reshape(EPISODES, EPISODE_STEPS, 3)
    np.testing.assert_array_equal(ep[:, 1:], t.next_obs.reshape(EPISODES, EPISODE_STEPS, 3)[:, :-1])
    env = gym.make("Pendulum-v1").unwrapped
    env.reset(seed=0)
    rows = np.random.default_rng(7).choice(len(t.rew), 100, replace=False)
    for i in rows:
        env.state = np.array([np.arctan2(t.obs[i, 1], t.obs[i, 0]), t.obs[i, 2]], dtype=np.float64)
        next_obs, rew, terminated, _, _ = env.step(t.act[i])
        assert not terminated
        np.testing.assert_allclose(t.next_obs[i], next_obs, atol=2e-5)
        assert t.rew[i] == pytest.approx(rew, abs=1e-4)
    env.close()


def test_example_reports_bad_inputs(example_exe, exported, tmp_path):
    d, _, _ = exported
    model, actor = str(d / "model.safetensors"), str(d / "actor.safetensors")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(example_exe), *args], capture_output=True, text=True, timeout=60)

    out = run(model)
    assert out.returncode == 2 and "usage:" in out.stderr and "MODEL and ACTOR" in out.stderr
    out = run(model, actor, "--horizon", "0")
    assert out.returncode == 2 and "--horizon" in out.stderr
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((d / "model.safetensors").read_bytes()[:500])
    out = run(str(truncated), actor)
    assert out.returncode == 1 and "truncated.safetensors" in out.stderr
    hopper = tmp_path / "hopper.safetensors"
    mf.EnsembleDynamics(11, 3, ensemble_size=2, num_elites=1, hidden_size=8, num_layers=2).save(
        hopper)
    out = run(str(hopper), actor)
    assert out.returncode == 1 and "obs_dim 3" in out.stderr and "obs_dim 11" in out.stderr


def test_uses_installed_package_not_source_tree(installed_cmake_prefix):
    """The consumer sees only installed files: the headers it includes live under the prefix."""
    root = Path(installed_cmake_prefix)
    while root != root.parent and not (root / "include" / "mbpo_fast").is_dir():
        root = root.parent
    assert (root / "include" / "mbpo_fast" / "branched_rollout.h").is_file()
    assert not (root / "include").samefile(REPO / "csrc" / "include")


# ---------------------------------------------------------------- pendulum_train: MBPO in C++


@pytest.fixture(scope="module")
def train_run(example_exe, checked_run, tmp_path_factory):
    """The whole MBPO loop in C++ (SacLearner + EnsembleTrainer + rollouts), briefly."""
    out_dir = tmp_path_factory.mktemp("train_out")
    out = checked_run([str(example_exe.parent / "pendulum_train"), "--steps", "600",
                       "--random-steps", "200", "--model-every", "200", "--updates", "2",
                       "--rollouts", "300", "--eval-every", "200", "--model-max-epochs", "30",
                       "--seed", "3", "--save-model", str(out_dir / "model.safetensors")])
    return out_dir, [json.loads(line) for line in out.stdout.splitlines()]


def test_pendulum_train_runs_the_mbpo_loop(train_run):
    _, rows = train_run
    assert [r["step"] for r in rows] == [200, 400, 600]
    first, *trained = rows
    assert first["critic_loss"] is None and first["model_epochs"] == 0  # random phase only
    for r in trained:
        assert np.isfinite([r["eval_return"], r["model_holdout_mse"], r["critic_loss"],
                            r["alpha"]]).all()
        assert -2000.0 < r["eval_return"] <= 0.0  # Pendulum-v1 returns over 200 steps
        assert 7 <= r["model_epochs"] <= 30  # epoch 1 kept, > 5 idle epochs, capped at 30
        assert r["model_pool"] > 0 and r["rollout_length"] == 1
    assert trained[-1]["alpha"] < 1.0  # the temperature moved from its initial 1.0


def test_pendulum_train_model_is_a_real_dynamics_model(train_run):
    # The saved file loads in Python, and its elites predict held-out true dynamics far better
    # than the trivial "nothing changes" model.
    out_dir, _ = train_run
    model = mf.EnsembleDynamics.load(out_dir / "model.safetensors")
    obs, act, rew, next_obs = _pendulum_data(2000, np.random.default_rng(11))
    keep = np.abs(obs[:, 2]) < 4.0  # the states a 600-step run has visited
    mean, _ = model.predict(obs[keep], act[keep])
    target = np.concatenate([next_obs[keep] - obs[keep], rew[keep, None]], 1)
    mse = ((mean[model.elites] - target) ** 2).mean()
    assert mse < 0.2 * (target**2).mean()
