"""mf.PETS and `mbpo-fast pets`: the loop's outputs, and a resume that continues exactly as an
uninterrupted run (same episode returns, model and pool)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

import mbpo_fast as mf
from mbpo_fast.cli import main

pytest.importorskip("gymnasium")

SMALL = ["population=40", "elites=5", "particles=2", "horizon=8", "iterations=2",
         "model_hidden_size=24", "model_num_layers=2", "max_episode_steps=30",
         "model_max_epochs=5"]


def small_config(episodes: int) -> mf.PETSConfig:
    cfg = mf.PETSConfig.for_env("Pendulum-v1", seed=3)
    cfg.episodes = episodes
    return cfg.with_overrides(SMALL)


def rows(logdir) -> list[dict]:
    with open(logdir / "progress.csv") as f:
        return list(csv.DictReader(f))


def test_resume_continues_as_an_uninterrupted_run(tmp_path):
    straight = mf.PETS(small_config(3), logdir=tmp_path / "a", quiet=True)
    straight.train()
    first = mf.PETS(small_config(2), logdir=tmp_path / "b", quiet=True)
    first.train()
    resumed = mf.PETS.resume(tmp_path / "b", quiet=True, episodes=3)
    assert resumed.episode == 2
    resumed.train()
    a, b = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert [r["episode"] for r in b] == ["1", "2", "3"]
    for key in ("episode_return", "env_steps", "model_holdout_mse", "random_actions"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    np.testing.assert_array_equal(straight.real_pool.transitions().obs,
                                  resumed.real_pool.transitions().obs)
    assert (tmp_path / "b" / "learning_curve.png").exists()
    assert float(a[-1]["plan_ms_mean"]) > 0 and a[0]["random_actions"] == "1"


def test_cli_pets_and_errors(tmp_path, capsys):
    args = ["pets", "--env", "Pendulum-v1", "--episodes", "2", "--logdir", str(tmp_path / "r"),
            "--quiet", "--threads", "1"]
    for item in SMALL:
        args += ["--set", item]
    assert main(args) == 0
    assert len(rows(tmp_path / "r")) == 2
    assert main(["pets", "--resume", str(tmp_path / "r"), "--episodes", "3", "--quiet"]) == 0
    assert len(rows(tmp_path / "r")) == 3
    assert main(["pets", "--set", "population=5", "--set", "elites=9"]) == 2
    assert "elites: expected <= population = 5, got 9" in capsys.readouterr().err
    assert main(["pets", "--resume", str(tmp_path / "missing")]) == 2


def test_model_batch_size_reaches_the_fit_and_old_configs_keep_256(monkeypatch, tmp_path):
    """PETSConfig.model_batch_size (PETS / mbrl-lib: 32) is the refit's batch; a config.json
    written before the field existed resumes with the 256 it ran with."""
    import json

    from mbpo_fast import pets as pets_mod

    seen = []
    real_fit = mf.EnsembleDynamics.fit

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("batch_size"))
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(mf.EnsembleDynamics, "fit", spy)
    cfg = small_config(2)
    assert cfg.model_batch_size == 32
    mf.PETS(cfg.with_overrides(["model_batch_size=7"]), logdir=tmp_path / "a", quiet=True).train()
    assert seen == [7]
    old = json.loads(cfg.to_json())
    del old["model_batch_size"]
    assert mf.PETSConfig.from_json(json.dumps(old)).model_batch_size == 256
    assert pets_mod._ABSENT_MEANS == {"model_batch_size": 256}
    with pytest.raises(ValueError, match="model_batch_size: expected an int >= 1, got 0"):
        cfg.with_overrides(["model_batch_size=0"])
    ip = mf.PETSConfig.for_env("InvertedPendulum-v5")
    assert (ip.init_random_episodes, ip.episodes) == (25, 35)


def test_state_bounds_end_planned_trajectories_beyond_the_bounds(tmp_path, rng):
    """PETSConfig.state_bounds: the planning termination is the env's OR |next_obs[i]| > bound,
    validated, and a run with it plans (and resumes with it from config.json)."""
    from mbpo_fast.pets import _bounded_termination

    base = mf.termination_fn("InvertedPendulum-v5")
    term = _bounded_termination(base, {"0": 0.9, "2": 1.5}, 4)
    o = rng.normal(size=(300, 4)).astype(np.float32)
    a = rng.normal(size=(300, 1)).astype(np.float32)
    n = rng.normal(size=(300, 4)).astype(np.float32)
    n[:, 1] *= 0.15
    want = base(o, a, n) | (np.abs(n[:, 0]) > 0.9) | (np.abs(n[:, 2]) > 1.5)
    got = term(o, a, n)
    np.testing.assert_array_equal(got, want)
    assert 0 < got.sum() < len(got) and (got != base(o, a, n)).any()
    with pytest.raises(ValueError, match="state_bounds: observation indices must be < obs_dim = 4"):
        _bounded_termination(base, {"4": 1.0}, 4)

    cfg = small_config(2)
    for bad, msg in [("{}", "non-empty dict"), ('{"x": 1}', "keys must be observation indices"),
                     ('{"0": 0}', r"state_bounds\['0'\]: expected a finite bound > 0"),
                     ('{"0": true}', "expected a finite bound")]:
        with pytest.raises(ValueError, match=msg):
            cfg.with_overrides([f"state_bounds={bad}"])
    run = mf.PETS(cfg.with_overrides(['state_bounds={"2": 6.0}']), logdir=tmp_path / "b",
                  quiet=True)
    assert callable(run.mpc._termination)  # not the native id: the bounded callable
    run.train()
    resumed = mf.PETS.resume(tmp_path / "b", quiet=True)
    assert resumed.config.state_bounds == {"2": 6.0} and callable(resumed.mpc._termination)
    assert isinstance(mf.PETS(small_config(1), logdir=tmp_path / "d", quiet=True).mpc._termination,
                      int)
    with pytest.raises(ValueError, match="obs_dim = 3"):
        mf.PETS(cfg.with_overrides(['state_bounds={"3": 1.0}']), logdir=tmp_path / "c",
                quiet=True)
