"""PETS (Chua et al., NeurIPS 2018): probabilistic ensembles with trajectory sampling.

Each episode the ensemble is refit on ALL real data so far, then the episode is collected by
:class:`MPC` (CEM over action sequences scored by particle rollouts through the ensemble,
planning at every env step). The first ``init_random_episodes`` episodes use uniformly random
actions. Returns are the training episodes' own returns (the controller is the policy).

::

    cfg = mf.PETSConfig.for_env("Pendulum-v1", seed=0)
    mf.PETS(cfg, logdir="runs/pets-pendulum").train()
    mf.PETS.resume("runs/pets-pendulum").train()        # continue after a crash

Outputs in ``logdir`` (as ``mbpo-fast train``): ``config.json``, ``progress.csv`` (one row per
episode, :data:`PETS_PROGRESS_COLUMNS`), ``learning_curve.png`` and ``checkpoints/`` (one
atomic checkpoint after every episode: model, its training state, the real pool, counters,
RNG states and the planner's state; a resume continues with the next episode exactly as if
never stopped).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import verify_checkpoint
from .io import atomic_write, write_csv
from .mbpo import (
    _derive_seed,
    _numpy_rng_state,
    _plain,
    _progress_bar,
    _refit_model,
    _seed_globals,
    _set_numpy_rng_state,
    _torch_load,
    _torch_save,
    commit_checkpoint,
    latest_checkpoint,
    resolve_logdir,
)
from .plotting import write_learning_curve

__all__ = ["PETS", "PETSConfig", "PETS_PROGRESS_COLUMNS"]

_CKPT_FILES = ("model.safetensors", "model_train.pt", "real_pool.bin", "state.pt", "config.json")

#: Columns of a PETS ``progress.csv`` (one row per episode; seconds_* cumulative).
PETS_PROGRESS_COLUMNS: tuple[str, ...] = (
    "episode", "env_steps", "episode_return", "episode_length", "random_actions",
    "model_holdout_mse", "model_epochs", "plan_ms_mean", "plan_failed_particles",
    "seconds_env", "seconds_model", "seconds_plan", "wall_seconds",
)
_STATE_FORMAT = "mbpo_fast.pets_checkpoint/1"
# What a config.json without these fields ran with (written before they existed).
_ABSENT_MEANS: dict[str, Any] = {"model_batch_size": 256}
_STREAM_ENV, _STREAM_MODEL, _STREAM_PLAN, _STREAM_POOL = 11, 12, 13, 14


@dataclass
class PETSConfig:
    """Hyperparameters of a PETS run (defaults: the PETS paper's planner)."""

    env_id: str = "Pendulum-v1"
    """gymnasium env id (flat Box observations and actions)."""
    seed: int = 0
    """run seed: env resets, random episodes, model initialisation, planner."""
    episodes: int = 15
    """total episodes, random ones included."""
    init_random_episodes: int = 1
    """episodes with uniformly random actions before planning starts."""
    max_episode_steps: int | None = None
    """cap on steps per episode (None: the env's own time limit)."""
    reward: str = "env"
    """"env": the built-in reward of env_id (mf.reward_fn); "model": the reward the ensemble
    predicts."""
    horizon: int = 30
    """planning horizon."""
    optimizer: str = "cem"
    """"cem" or "random" (random shooting)."""
    population: int = 500
    """candidate sequences per CEM iteration."""
    elites: int = 50
    """CEM elites."""
    iterations: int = 5
    """CEM iterations per plan."""
    alpha: float = 0.1
    """CEM: weight of the previous distribution in each refit."""
    particles: int = 20
    """particles per candidate."""
    propagation: str = "ts_inf"
    """"ts_inf" or "ts_1"."""
    state_bounds: dict[str, float] | None = None
    """planning only: also end a planned trajectory where ``|next_obs[i]| > bound`` for any
    ``{"i": bound}`` (JSON keys are strings), e.g. ``{"0": 0.9}`` for InvertedPendulum's cart
    before the end of its rail, as cartpole ends at its track limit. None: the env's
    termination alone. With bounds the termination runs as a Python callable (once per
    horizon step of a plan) instead of natively."""
    ensemble_size: int = 5
    """ensemble members (PETS: 5 bootstraps)."""
    num_elites: int = 5
    """members the planner samples from (PETS: all)."""
    model_hidden_size: int = 200
    """hidden width of every member."""
    model_num_layers: int = 4
    """hidden layers of every member."""
    holdout_ratio: float = 0.2
    """share of the real data held out for early stopping."""
    max_holdout: int = 5000
    """cap on held-out rows."""
    model_batch_size: int = 32
    """rows per Adam step of each member in a refit (PETS and mbrl-lib: 32). The datasets are
    small early on (a few hundred rows): at MBPO's 256 a refit is only ~20 Adam steps."""
    model_max_epochs: int | None = None
    """cap on epochs per refit (None: early stopping only)."""
    model_max_seconds: float | None = None
    """cap on seconds per refit."""
    env_kwargs: dict = field(default_factory=dict)
    """keyword arguments of gym.make."""
    logdir: str | None = None
    """output directory (None: runs/pets-<env>-<seed>-<timestamp>)."""

    @classmethod
    def for_env(cls, env_id: str, seed: int = 0) -> PETSConfig:
        """The PETS planner on `env_id` with episode counts that show learning on the tasks
        PETS solves quickly (Pendulum-v1: 15 episodes; InvertedPendulum: 25 random episodes,
        then 10 planned ones).

        InvertedPendulum's random episodes last ~6 steps, so one gives the model ~6 rows and
        the first planned episodes, as short, add little more; 25 random episodes (~150 rows,
        as mbrl-lib's "one trial of random steps" gives cartpole 200) let planning start from
        a usable model (docs/results/pets-invertedpendulum-v5)."""
        cfg = cls(env_id=env_id, seed=seed)
        if env_id.startswith("InvertedPendulum"):
            cfg.init_random_episodes = 25
            cfg.episodes = 35
        elif env_id.startswith(("HalfCheetah", "Hopper", "Walker2d")):
            cfg.episodes = 50
            cfg.max_episode_steps = 1000
        return cfg

    def validate(self) -> None:
        """Raises ValueError naming the first invalid field."""
        positive = ("episodes", "horizon", "population", "elites", "iterations", "particles",
                    "ensemble_size", "num_elites", "model_hidden_size", "model_num_layers",
                    "model_batch_size", "max_holdout")
        for name in positive:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        if not 0 <= self.init_random_episodes <= self.episodes:
            raise ValueError(f"init_random_episodes: expected 0..episodes = {self.episodes}, got "
                             f"{self.init_random_episodes}")
        if self.num_elites > self.ensemble_size:
            raise ValueError(f"num_elites: expected <= ensemble_size = {self.ensemble_size}, "
                             f"got {self.num_elites}")
        if self.reward not in ("env", "model"):
            raise ValueError(f"reward: expected 'env' or 'model', got {self.reward!r}")
        if self.optimizer not in ("cem", "random"):
            raise ValueError(f"optimizer: expected 'cem' or 'random', got {self.optimizer!r}")
        if self.propagation not in ("ts_inf", "ts_1"):
            raise ValueError(f"propagation: expected 'ts_inf' or 'ts_1', got "
                             f"{self.propagation!r}")
        if self.optimizer == "cem" and self.elites > self.population:
            raise ValueError(f"elites: expected <= population = {self.population}, got "
                             f"{self.elites}")
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"alpha: expected 0 <= alpha < 1, got {self.alpha}")
        if not 0.0 < self.holdout_ratio < 1.0:
            raise ValueError(f"holdout_ratio: expected 0 < ratio < 1, got {self.holdout_ratio}")
        if self.state_bounds is not None:
            if not isinstance(self.state_bounds, dict) or not self.state_bounds:
                raise ValueError(f"state_bounds: expected None or a non-empty dict "
                                 f"{{\"index\": bound}}, got {self.state_bounds!r}")
            for key, bound in self.state_bounds.items():
                if not (isinstance(key, str) and key.isdigit()):
                    raise ValueError(f"state_bounds: keys must be observation indices written "
                                     f"as strings (\"0\"), got {key!r}")
                if isinstance(bound, bool) or not isinstance(bound, (int, float)) or \
                        not math.isfinite(bound) or bound <= 0:
                    raise ValueError(f"state_bounds[{key!r}]: expected a finite bound > 0, "
                                     f"got {bound!r}")
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise ValueError(f"max_episode_steps: expected None or >= 1, got "
                             f"{self.max_episode_steps}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PETSConfig:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"PETSConfig: unknown fields {unknown}")
        for key, value in _ABSENT_MEANS.items():  # a run recorded before the field existed
            data.setdefault(key, value)
        cfg = cls(**data)
        cfg.validate()
        return cfg

    def with_overrides(self, overrides: list[str]) -> PETSConfig:
        """A copy with ``key=value`` strings applied (values parsed as JSON, else text)."""
        data = asdict(self)
        types = {f.name: f.type for f in dataclasses.fields(self)}
        for item in overrides:
            key, sep, text = item.partition("=")
            if not sep or key not in types:
                raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY one of "
                                 f"{sorted(types)}")
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = text
            if types[key] in ("float", "float | None") and isinstance(value, int):
                value = float(value)
            data[key] = value
        cfg = PETSConfig(**data)
        cfg.validate()
        return cfg


def _make_env(config: PETSConfig) -> Any:
    import gymnasium as gym

    kwargs = dict(config.env_kwargs)
    if config.max_episode_steps is not None:
        kwargs["max_episode_steps"] = config.max_episode_steps
    return gym.make(config.env_id, disable_env_checker=True, **kwargs)


def _bounded_termination(base: Any, bounds: dict[str, float], obs_dim: int) -> Any:
    """``base`` (a termination callable or None) OR ``|next_obs[:, i]| > bound`` for every
    ``{"i": bound}`` of PETSConfig.state_bounds; ValueError for an index outside obs_dim."""
    index = np.array([int(k) for k in bounds], dtype=np.int64)
    if (index >= obs_dim).any():
        raise ValueError(f"state_bounds: observation indices must be < obs_dim = {obs_dim}, got "
                         f"{sorted(int(k) for k in bounds)}")
    limit = np.array([float(v) for v in bounds.values()], dtype=np.float32)

    def termination(obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
        out = (np.abs(next_obs[:, index]) > limit).any(axis=1)
        if base is not None:
            out |= np.asarray(base(obs, act, next_obs), dtype=bool)
        return out

    return termination


class PETS:
    """One PETS run: env, real pool, ensemble, MPC controller, logging and checkpoints.

    Attributes: ``env``, ``real_pool`` (:class:`ReplayPool`), ``model``
    (:class:`EnsembleDynamics`), ``mpc`` (:class:`MPC`), ``episode`` (episodes done),
    ``env_steps``, ``progress`` (the rows of progress.csv).
    """

    def __init__(self, config: PETSConfig, logdir: str | os.PathLike | None = None, *,
                 quiet: bool = False) -> None:
        from .ensemble import EnsembleDynamics
        from .mpc import MPC
        from .pool import ReplayPool
        from .termination import KNOWN_ENV_IDS, termination_fn

        config.validate()
        self.config = config
        self.logdir = resolve_logdir(config, logdir, prefix="pets-")
        self.quiet = quiet
        _seed_globals(config.seed)
        self.env = _make_env(config)
        space, obs_space = self.env.action_space, self.env.observation_space
        if space.shape is None or len(space.shape) != 1 or obs_space.shape is None or \
                len(obs_space.shape) != 1:
            raise ValueError(f"{config.env_id}: PETS needs flat Box observation and action "
                             f"spaces, got {obs_space} and {space}")
        self.obs_dim, self.act_dim = int(obs_space.shape[0]), int(space.shape[0])
        self.max_steps = int(config.max_episode_steps or self.env.spec.max_episode_steps or 0)
        if self.max_steps < 1:
            raise ValueError(f"{config.env_id}: no time limit; set max_episode_steps")
        self.real_pool = ReplayPool(config.episodes * self.max_steps, self.obs_dim,
                                    self.act_dim, seed=_derive_seed(config.seed, _STREAM_POOL))
        self.model = EnsembleDynamics(self.obs_dim, self.act_dim,
                                      ensemble_size=config.ensemble_size,
                                      num_elites=config.num_elites,
                                      hidden_size=config.model_hidden_size,
                                      num_layers=config.model_num_layers,
                                      seed=_derive_seed(config.seed, _STREAM_MODEL))
        termination = termination_fn(config.env_id) if config.env_id in KNOWN_ENV_IDS else None
        if config.state_bounds is not None:
            termination = _bounded_termination(termination, config.state_bounds, self.obs_dim)
        self.mpc = MPC(self.model, space.low, space.high,
                       reward_fn=config.env_id if config.reward == "env" else None,
                       termination=termination, horizon=config.horizon,
                       optimizer=config.optimizer, population=config.population,
                       elites=config.elites, iterations=config.iterations, alpha=config.alpha,
                       particles=config.particles, propagation=config.propagation,
                       seed=_derive_seed(config.seed, _STREAM_PLAN))
        self.episode = 0
        self.env_steps = 0
        self.seconds = {"env": 0.0, "model": 0.0, "plan": 0.0}
        self.wall_seconds = 0.0
        self.progress: list[dict[str, float]] = []
        self.last_model = {"model_holdout_mse": float("nan"), "model_epochs": float("nan")}

    # ================================================================== the loop
    def train(self) -> dict[str, float]:
        """Runs until ``config.episodes`` episodes; returns the last episode's return,
        ``env_steps`` and ``wall_seconds``."""
        cfg = self.config
        self.logdir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.logdir / "config.json", lambda f: f.write(cfg.to_json().encode()))
        self._write_progress_csv()
        # smoothing 0.3 is tqdm's default, which the PETS bar has always had
        bar = _progress_bar(cfg.episodes, self.episode, disable=self.quiet, unit="episode",
                            desc="pets", smoothing=0.3)
        try:
            while self.episode < cfg.episodes:
                t0 = time.perf_counter()
                row = self.run_episode()
                self.wall_seconds += time.perf_counter() - t0
                row["wall_seconds"] = self.wall_seconds
                self.progress.append(row)
                self._write_progress_csv()
                self._plot()
                self.save_checkpoint()
                bar.set_postfix(ret=f"{row['episode_return']:.1f}", refresh=False)
                bar.update(1)
        finally:
            bar.close()
        last = self.progress[-1] if self.progress else {}
        return {"episodes": self.episode, "env_steps": self.env_steps,
                "episode_return": float(last.get("episode_return", float("nan"))),
                "wall_seconds": self.wall_seconds}

    def fit_model(self) -> None:
        """Refits the ensemble on every real transition so far."""
        t0 = time.perf_counter()
        self.last_model = _refit_model(self.model, self.real_pool.transitions(), self.config,
                                       batch_size=self.config.model_batch_size)
        self.seconds["model"] += time.perf_counter() - t0

    def run_episode(self) -> dict[str, float]:
        """One episode (random, or refit + MPC); returns its progress row (no wall time)."""
        cfg = self.config
        random_phase = self.episode < cfg.init_random_episodes
        if not random_phase:
            self.fit_model()
        ep_seed = _derive_seed(cfg.seed, _STREAM_ENV, self.episode)
        obs, _ = self.env.reset(seed=ep_seed)
        self.env.action_space.seed(ep_seed)
        self.mpc.reset()
        total, length, failed, plan_s = 0.0, 0, 0, 0.0
        done = False
        while not done:
            obs32 = np.asarray(obs, dtype=np.float32)
            t0 = time.perf_counter()
            if random_phase:
                action = np.asarray(self.env.action_space.sample(), dtype=np.float32)
            else:
                action = self.mpc.plan(obs32)
                failed += int(self.mpc.last_stats.get("failed", 0))
            t1 = time.perf_counter()
            plan_s += t1 - t0
            next_obs, rew, terminated, truncated, _ = self.env.step(action)
            self.real_pool.add(obs32, action, float(rew), np.asarray(next_obs, np.float32),
                               bool(terminated))
            self.seconds["env"] += time.perf_counter() - t1
            total += float(rew)
            length += 1
            obs = next_obs
            done = bool(terminated or truncated)
        self.seconds["plan"] += plan_s
        self.episode += 1
        self.env_steps += length
        return {"episode": self.episode, "env_steps": self.env_steps, "episode_return": total,
                "episode_length": length, "random_actions": int(random_phase),
                **(self.last_model if not random_phase else
                   {"model_holdout_mse": float("nan"), "model_epochs": float("nan")}),
                "plan_ms_mean": 1e3 * plan_s / length if not random_phase else float("nan"),
                "plan_failed_particles": failed,
                **{f"seconds_{k}": v for k, v in self.seconds.items()}}

    # ================================================================== outputs
    def _write_progress_csv(self) -> None:
        write_csv(self.logdir / "progress.csv", PETS_PROGRESS_COLUMNS, self.progress)

    def _plot(self) -> None:
        n_random = self.config.init_random_episodes
        write_learning_curve(self.logdir / "learning_curve.png",
                             [p["episode"] for p in self.progress],
                             [p["episode_return"] for p in self.progress],
                             label="episode return (MPC)", xlabel="episode",
                             title=f"PETS {self.config.env_id} (seed {self.config.seed})",
                             shade=(0.5, n_random + 0.5, "random actions") if n_random else None)

    # ================================================================== checkpoints
    def save_checkpoint(self) -> Path:
        """One atomic checkpoint (the protocol of MBPO.save_checkpoint) after an episode."""
        return commit_checkpoint(self.logdir / "checkpoints", f"ckpt-{self.episode}",
                                 self._write_checkpoint_files)

    def _write_checkpoint_files(self, d: Path) -> None:
        self.model.save(d / "model.safetensors")
        _torch_save(d / "model_train.pt", self.model.training_state())
        self.real_pool.save(d / "real_pool.bin")
        state = {
            "format": _STATE_FORMAT, "episode": self.episode, "env_steps": self.env_steps,
            "seconds": dict(self.seconds), "wall_seconds": self.wall_seconds,
            "progress": list(self.progress), "last_model": dict(self.last_model),
            "mpc": self.mpc.state_dict(),
            "python_rng": random.getstate(), "numpy_rng": _numpy_rng_state(),
            "torch_rng": torch.get_rng_state(),
        }
        _torch_save(d / "state.pt", _plain(state))  # no numpy objects: weights-only
        atomic_write(d / "config.json", lambda f: f.write(self.config.to_json().encode()))

    @classmethod
    def resume(cls, logdir: str | os.PathLike, *, quiet: bool = False,
               episodes: int | None = None) -> PETS:
        """Rebuilds the run from its latest checkpoint; `episodes` extends (or shortens) it.
        Raises FileNotFoundError without a checkpoint, ValueError for a corrupt one."""
        from .ensemble import EnsembleDynamics
        from .pool import ReplayPool

        logdir = Path(logdir)
        ckpt = latest_checkpoint(logdir)
        verify_checkpoint(ckpt, _CKPT_FILES)
        config = PETSConfig.from_json((ckpt / "config.json").read_text())
        if episodes is not None:
            config.episodes = int(episodes)
            config.validate()
        self = cls(config, logdir=logdir, quiet=quiet)
        state = _torch_load(ckpt / "state.pt")
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            raise ValueError(f"{ckpt / 'state.pt'}: not a {_STATE_FORMAT} file")
        model = EnsembleDynamics.load(ckpt / "model.safetensors")
        self.model.load_state_dict(model.state_dict())
        self.model.load_training_state(_torch_load(ckpt / "model_train.pt"),
                                       source=str(ckpt / "model_train.pt"))
        pool = ReplayPool.load(ckpt / "real_pool.bin")
        if pool.capacity < config.episodes * self.max_steps:
            pool.resize(config.episodes * self.max_steps)
        self.real_pool = pool
        self.episode, self.env_steps = int(state["episode"]), int(state["env_steps"])
        self.seconds = {k: float(v) for k, v in state["seconds"].items()}
        self.wall_seconds = float(state["wall_seconds"])
        self.progress = [dict(r) for r in state["progress"]]
        self.last_model = dict(state["last_model"])
        self.mpc.load_state_dict(state["mpc"])
        random.setstate(state["python_rng"])
        _set_numpy_rng_state(state["numpy_rng"])
        torch.set_rng_state(state["torch_rng"])
        return self

    def close(self) -> None:
        self.env.close()
