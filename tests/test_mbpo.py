"""MBPO trainer: end-to-end CLI run, kill-and-resume, atomic checkpoints, exact resume."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mbpo_fast import cli
from mbpo_fast.config import MBPOConfig
from mbpo_fast.mbpo import MBPO, PROGRESS_COLUMNS, latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]

# Tiny but complete: every phase (random steps, model fits, rollouts, mixed SAC batches,
# evaluations, checkpoints) runs within a few hundred Pendulum steps.
TINY = ["init_random_steps=100", "model_train_freq=50", "rollout_batch_size=64",
        "rollout_schedule=[0,1,1,2]", "epoch_length=100", "retain_epochs=2",
        "num_sac_updates=1", "sac_hidden_size=32", "sac_batch_size=64", "model_hidden_size=16",
        "model_num_layers=2", "model_max_epochs=3", "eval_freq=100", "eval_episodes=1",
        "checkpoint_freq=100"]


def _tiny_config(**kw) -> MBPOConfig:
    cfg = MBPOConfig().with_overrides(TINY)
    for k, v in kw.items():
        setattr(cfg, k, v)
    cfg.validate()
    return cfg


def _read_progress(logdir: Path) -> list[dict[str, str]]:
    with open(logdir / "progress.csv", newline="") as f:
        return list(csv.DictReader(f))


def _check_outputs(logdir: Path, last_step: int) -> list[dict[str, str]]:
    rows = _read_progress(logdir)
    assert tuple(rows[0].keys()) == PROGRESS_COLUMNS
    steps = [int(r["env_steps"]) for r in rows]
    assert steps == sorted(set(steps)), f"duplicate or unordered rows: {steps}"
    assert steps[-1] == last_step
    for r in rows:
        assert np.isfinite(float(r["eval_return_mean"]))
        assert float(r["wall_seconds"]) > 0
    cfg = json.loads((logdir / "config.json").read_text())
    assert cfg["env_id"] == "Pendulum-v1"
    assert list((logdir / "tb").glob("events.out.tfevents.*"))
    assert (logdir / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = latest_checkpoint(logdir)
    assert ckpt.name == f"ckpt-{last_step}"
    assert [p.name for p in (logdir / "checkpoints").iterdir() if p.is_dir()] == [ckpt.name]
    return rows


def test_cli_train_outputs_and_eval(tmp_path, one_torch_thread, capsys):
    logdir = tmp_path / "run"
    rc = cli.main(["train", "--env", "Pendulum-v1", "--steps", "300", "--seed", "3",
                   "--logdir", str(logdir), "--quiet", *[a for s in TINY for a in ("--set", s)]])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["env_steps"] == 300
    rows = _check_outputs(logdir, 300)
    assert [int(r["env_steps"]) for r in rows] == [100, 200, 300]
    last = rows[-1]
    # the model and SAC phases ran and were logged
    assert float(last["model_holdout_mse"]) > 0 and int(float(last["model_epochs"])) >= 1
    assert int(last["model_pool_size"]) > 0 and int(last["rollout_length"]) == 2
    for key in ("critic_loss", "actor_loss", "alpha", "entropy", "mean_q", "seconds_sac",
                "seconds_model", "seconds_rollout", "seconds_env", "seconds_eval"):
        assert np.isfinite(float(last[key])), key
    assert float(rows[0]["seconds_sac"]) == 0.0  # the first 100 steps are random exploration
    assert int(last["episodes"]) == 1  # Pendulum episodes are 200 steps
    assert json.loads((logdir / "config.json").read_text())["seed"] == 3

    assert cli.main(["eval", str(logdir), "--episodes", "2"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["episodes"] == 2 and np.isfinite(out["eval_return_mean"])


def test_kill_and_resume(tmp_path, one_torch_thread):
    """SIGKILL a training subprocess at a random moment after its first checkpoint, resume."""
    logdir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "mbpo_fast", "train", "--steps", "400", "--seed", "5",
           "--logdir", str(logdir), "--quiet", "--threads", "1",
           *[a for s in TINY for a in ("--set", s)]]
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 120
        while not (logdir / "checkpoints" / "latest").exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        time.sleep(random.Random().uniform(0.0, 1.5))  # anywhere: mid-step, mid-save, ...
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    killed_at = int(latest_checkpoint(logdir).name.split("-")[1])
    assert killed_at >= 100

    assert cli.main(["resume", str(logdir), "--quiet"]) == 0
    rows = _check_outputs(logdir, 400)
    assert [int(r["env_steps"]) for r in rows] == [100, 200, 300, 400]
    assert not list((logdir / "checkpoints").glob("*.tmp"))
    walls = [float(r["wall_seconds"]) for r in rows]
    assert walls == sorted(walls)  # the clock continues across the resume


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, one_torch_thread, monkeypatch):
    algo = MBPO(_tiny_config(total_steps=200, checkpoint_freq=100), logdir=tmp_path, quiet=True)
    algo.train()
    good = latest_checkpoint(tmp_path)
    assert good.name == "ckpt-200"
    saved_steps = algo.env_steps
    params_before = {k: v.clone() for k, v in algo.agent.actor.state_dict().items()}

    # keep going a little, then "crash" in the middle of writing the next checkpoint
    algo.config.total_steps = 250
    for _ in range(50):
        algo._step()

    def boom(path):
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(algo.model_pool, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        algo.save_checkpoint()
    partial = tmp_path / "checkpoints" / "ckpt-250.tmp"
    assert (partial / "agent.pt").exists() and not (partial / "model_pool.bin").exists()
    assert latest_checkpoint(tmp_path) == good
    algo.close()

    resumed = MBPO.resume(tmp_path, quiet=True)
    assert resumed.env_steps == saved_steps
    for k, v in resumed.agent.actor.state_dict().items():
        torch.testing.assert_close(v, params_before[k], rtol=0, atol=0)
    # the next successful save replaces the partial directory and the old checkpoint
    resumed.config.total_steps = 300
    resumed.train()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["ckpt-300", "latest"]
    resumed.close()


def test_corrupt_checkpoint_raises(tmp_path, one_torch_thread):
    algo = MBPO(_tiny_config(total_steps=100, init_random_steps=100), logdir=tmp_path, quiet=True)
    algo.train()
    algo.close()
    ckpt = latest_checkpoint(tmp_path)
    blob = (ckpt / "state.pt").read_bytes()
    (ckpt / "state.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="state.pt"):
        MBPO.resume(tmp_path, quiet=True)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        MBPO.resume(tmp_path / "nothing", quiet=True)


def _run_state(algo: MBPO) -> dict[str, torch.Tensor]:
    state = {f"agent.{k}": v for k, v in algo.agent.actor.state_dict().items()}
    state.update({f"critic.{k}": v for k, v in algo.agent.critic.state_dict().items()})
    state.update({f"target.{k}": v for k, v in algo.agent.critic_target.state_dict().items()})
    state["log_alpha"] = algo.agent.log_alpha.detach()
    state.update({f"model.{k}": v for k, v in algo.model.state_dict().items()})
    for name, pool in (("real", algo.real_pool), ("model_pool", algo.model_pool)):
        fields = ("obs", "act", "rew", "next_obs", "terminated")
        for field, arr in zip(fields, pool.transitions(), strict=True):
            state[f"{name}.{field}"] = torch.from_numpy(np.ascontiguousarray(arr))
    return state


def test_resume_is_exact(tmp_path, one_torch_thread):
    """N steps in one go == N/2 steps, checkpoint, resume in a new object, N/2 more (CPU)."""
    overrides = dict(total_steps=400, checkpoint_freq=200, num_sac_updates=2)
    full = MBPO(_tiny_config(**overrides), logdir=tmp_path / "full", quiet=True)
    full.train()
    full.close()

    half = MBPO(_tiny_config(**overrides), logdir=tmp_path / "half", quiet=True)
    half.config.total_steps = 200
    half.train()
    half.close()
    resumed = MBPO.resume(tmp_path / "half", quiet=True, total_steps=400)
    assert resumed.env_steps == 200
    resumed.train()
    resumed.close()

    a, b = _run_state(full), _run_state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    assert resumed.episodes == full.episodes == 2
    pa = [r["eval_return_mean"] for r in full.progress]
    pb = [r["eval_return_mean"] for r in resumed.progress]
    assert pa == pb
    assert [r["env_steps"] for r in resumed.progress] == [100, 200, 300, 400]


def test_resume_switches_training_backend(tmp_path, one_torch_thread):
    """A run can continue on the other trainer: same checkpoint, --set trainer=..., and the
    switch is close to never switching (the trainers agree to float rounding)."""
    overrides = dict(total_steps=300, checkpoint_freq=200, num_sac_updates=2, trainer="native")
    straight = MBPO(_tiny_config(**overrides), logdir=tmp_path / "straight", quiet=True)
    assert (straight.agent.trainer, straight.model.trainer) == ("native", "native")
    straight.train()
    straight.close()
    half = MBPO(_tiny_config(**overrides), logdir=tmp_path / "half", quiet=True)
    half.config.total_steps = 200
    half.train()
    half.close()
    assert cli.main(["resume", str(tmp_path / "half"), "--steps", "300", "--quiet",
                     "--set", "trainer=torch"]) == 0
    resumed = MBPO.resume(tmp_path / "half", quiet=True)
    assert resumed.config.trainer == "torch"  # the checkpoint at 300 records the switch
    assert (resumed.agent.trainer, resumed.model.trainer) == ("torch", "torch")
    resumed.close()
    a, b = _run_state(straight), _run_state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
        else:
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)


def test_resume_refuses_overrides_that_shape_the_state(tmp_path, one_torch_thread):
    algo = MBPO(_tiny_config(total_steps=100, checkpoint_freq=100), logdir=tmp_path, quiet=True)
    algo.train()
    algo.close()
    with pytest.raises(ValueError, match=r"cannot override \['sac_hidden_size'\]"):
        MBPO.resume(tmp_path, quiet=True, overrides=["sac_hidden_size=64"])
    with pytest.raises(ValueError, match="trainer"):
        MBPO.resume(tmp_path, quiet=True, overrides=["trainer=fast"])


def test_resume_mid_episode_restarts_episode(tmp_path, one_torch_thread):
    algo = MBPO(_tiny_config(total_steps=150, checkpoint_freq=150), logdir=tmp_path, quiet=True)
    algo.train()
    algo.close()
    resumed = MBPO.resume(tmp_path, quiet=True, total_steps=160)
    n_before = len(resumed.real_pool)
    resumed.train()
    resumed.close()
    data = resumed.real_pool.transitions()
    assert len(resumed.real_pool) == n_before + 10 == 160
    # the cut episode is a truncation: nothing terminal, and the new episode starts from a
    # reset (its first obs is not the previous next_obs)
    assert not data.terminated.any()
    assert not np.allclose(data.obs[150], data.next_obs[149])
    assert resumed.config.total_steps == 160


def test_seed_determines_the_run(tmp_path, one_torch_thread):
    runs = []
    for name in ("a", "b"):
        algo = MBPO(_tiny_config(total_steps=160, checkpoint_freq=0), logdir=tmp_path / name,
                    quiet=True)
        algo.train()
        algo.close()
        runs.append(_run_state(algo))
    for k in runs[0]:
        torch.testing.assert_close(runs[1][k], runs[0][k], rtol=0, atol=0, msg=k)
    other = MBPO(_tiny_config(total_steps=160, checkpoint_freq=0, seed=1),
                 logdir=tmp_path / "c", quiet=True)
    other.train()
    other.close()
    assert not torch.equal(_run_state(other)["real.obs"], runs[0]["real.obs"])


def test_model_pool_resized_on_schedule_change(tmp_path, one_torch_thread):
    cfg = _tiny_config(total_steps=360, checkpoint_freq=0, rollout_schedule=(1, 2, 1, 3))
    algo = MBPO(cfg, logdir=tmp_path, quiet=True)
    capacities = []
    orig = algo.train_model_and_rollout

    def spy():
        orig()
        capacities.append((algo.env_steps, algo.rollout_length, algo.model_pool.capacity))

    algo.train_model_and_rollout = spy
    algo.train()
    algo.close()
    # fits every 50 steps after the 100 random ones; epochs count from the end of the random
    # phase (epoch = (steps - 100) // 100: 0, 0, 1, 1, 2, 2), as in the original MBPO
    assert [c[0] for c in capacities] == [100, 150, 200, 250, 300, 350]
    assert [c[1] for c in capacities] == [1, 1, 1, 1, 3, 3]
    assert [c[2] for c in capacities] == [cfg.model_pool_capacity(k) for k in (1, 1, 1, 1, 3, 3)]


def test_cli_errors(tmp_path, capsys):
    assert cli.main(["train", "--env", "NoSuchEnv-v0", "--logdir", str(tmp_path)]) == 2
    assert "no preset" in capsys.readouterr().err
    assert cli.main(["train", "--logdir", str(tmp_path), "--set", "bogus=1"]) == 2
    assert "unknown key 'bogus'" in capsys.readouterr().err
    assert cli.main(["resume", str(tmp_path / "missing")]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([])


def test_python_m_cmake_dir_flag():
    from mbpo_fast.__main__ import main

    rc = main(["--cmake-dir"])
    assert rc in (0, 1)  # 1 with a clear error when the CMake package is not installed


def test_cli_bench_runs(capsys, one_torch_thread):
    assert cli.main(["bench", "--rows", "64", "--pool-rows", "1000", "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    for key in ("backend", "pool.sample", "ensemble.step 64 rows", "sac.update", "rollout step"):
        assert key in out


def test_no_random_phase(tmp_path, one_torch_thread):
    """init_random_steps=0: the policy acts from step 0, the first fit waits for data."""
    cfg = _tiny_config(total_steps=120, init_random_steps=0, checkpoint_freq=0, eval_freq=60)
    algo = MBPO(cfg, logdir=tmp_path, quiet=True)
    algo.train()
    algo.close()
    assert algo.num_model_trainings == 2  # at steps 50 and 100
    assert algo.agent.num_updates == 120 * cfg.num_sac_updates


def test_uncertainty_extensions_in_the_loop(tmp_path, one_torch_thread):
    """config.termination='learned', max_disagreement and uncertainty_penalty reach the
    rollouts (stopped rows, penalized rewards, the termination model's accuracy in
    progress.csv) and resume exactly (the termination model is checkpointed)."""
    ext = dict(total_steps=400, checkpoint_freq=200, termination="learned",
               max_disagreement="q0.5", uncertainty_penalty=0.5)
    full = MBPO(_tiny_config(**ext), logdir=tmp_path / "full", quiet=True)
    full.train()
    full.close()
    rows = _read_progress(tmp_path / "full")
    late = [r for r in rows if int(r["env_steps"]) > 100]  # after the first rollouts
    assert late and all(float(r["rollout_frac_stopped"]) > 0 for r in late)
    assert all(float(r["rollout_mean_penalty"]) > 0 for r in late)
    assert all(0.0 <= float(r["termination_balanced_accuracy"]) <= 1.0 for r in late)
    assert (latest_checkpoint(tmp_path / "full") / "termination_model.safetensors").is_file()

    half = MBPO(_tiny_config(**ext), logdir=tmp_path / "half", quiet=True)
    half.config.total_steps = 200
    half.train()
    half.close()
    resumed = MBPO.resume(tmp_path / "half", quiet=True, total_steps=400)
    resumed.train()
    resumed.close()
    for t_full, t_res in zip(full.termination_model.weights, resumed.termination_model.weights,
                             strict=True):
        torch.testing.assert_close(t_res, t_full, rtol=0, atol=0)
    assert [r["eval_return_mean"] for r in resumed.progress] == \
        [r["eval_return_mean"] for r in full.progress]
    # the learned termination shapes the saved state: a resume cannot switch it off
    with pytest.raises(ValueError, match="termination"):
        MBPO.resume(tmp_path / "half", quiet=True, overrides=["termination=builtin"])


def test_uncertainty_config_validation():
    for field, value in (("termination", "sometimes"), ("uncertainty_penalty", -1.0),
                         ("max_disagreement", "q2"), ("max_disagreement", -0.5)):
        with pytest.raises(ValueError, match=f"MBPOConfig.{field}"):
            _tiny_config(**{field: value})
    cfg = MBPOConfig().with_overrides(["max_disagreement=q0.9", "uncertainty_penalty=1"])
    assert cfg.max_disagreement == "q0.9" and cfg.uncertainty_penalty == 1.0
    assert MBPOConfig.from_json(cfg.to_json()).max_disagreement == "q0.9"
