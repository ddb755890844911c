"""The MBPO training loop (Janner et al. 2019), its logging and its checkpoints.

::

    cfg = mf.MBPOConfig.for_env("Hopper-v5")
    result = mf.MBPO(cfg, logdir="runs/hopper").train()     # {"eval_return_mean": ..., ...}
    algo = mf.MBPO.resume("runs/hopper"); algo.train()       # continue after a crash

Per real env step (after ``init_random_steps`` uniformly random ones):

1. every ``model_train_freq`` steps (the first time right after the random phase): fit the
   ensemble on the whole real pool, set the rollout length from the schedule
   (``epoch = config.epoch_at(env_steps)``, counted from the end of the random phase),
   resize the model pool to
   ``config.model_pool_capacity(length)`` (keeping the newest rows) when it changed, and
   run ``rollout_batch_size`` branched rollouts of that length into the model pool;
2. one step of the training env with the stochastic policy; the transition goes into the real
   pool (``terminated`` only for true terminations, never for time limits);
3. ``num_sac_updates`` SAC updates from ONE ``sample_mixed`` call (``real_ratio`` real rows
   inside every batch; only real rows while the model pool is still empty).

Every ``eval_freq`` steps: deterministic evaluation on a separate env, one row of
``progress.csv`` (also TensorBoard scalars and ``learning_curve.png``). Every
``checkpoint_freq`` steps and at the end: one atomic checkpoint (see :meth:`MBPO.save_checkpoint`).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import load_torch_file, verify_checkpoint, write_manifest
from .config import MBPOConfig
from .io import atomic_write, write_csv
from .plotting import write_learning_curve
from .rollout import BranchedRollout, RolloutStats

__all__ = ["PROGRESS_COLUMNS", "MBPO", "evaluate_checkpoint", "latest_checkpoint"]

#: Columns of ``progress.csv`` (one row per evaluation). ``seconds_*`` are cumulative
#: over the whole run (resumes included); ``wall_seconds`` likewise.
PROGRESS_COLUMNS: tuple[str, ...] = (
    "env_steps", "episodes", "eval_return_mean", "eval_return_std", "train_return",
    "model_holdout_mse", "model_epochs", "rollout_length", "model_pool_size",
    "rollout_mean_length", "rollout_nonfinite", "rollout_frac_terminated",
    "model_disagreement", "critic_loss", "actor_loss", "alpha", "entropy", "mean_q",
    "seconds_env", "seconds_model", "seconds_rollout", "seconds_sac", "seconds_eval",
    "wall_seconds", "rollout_frac_stopped", "rollout_mean_penalty",
    "termination_balanced_accuracy",
)
_PHASES = ("env", "model", "rollout", "sac", "eval")
_STATE_FORMAT = "mbpo_fast.mbpo_checkpoint/1"
_CKPT_FILES = ("agent.pt", "model.safetensors", "model_train.pt", "real_pool.bin",
               "model_pool.bin", "state.pt", "config.json")


def _derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed that is a pure function of (seed, keys): independent streams per purpose."""
    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(
        1, np.uint64)[0] >> np.uint64(1))


_STREAM_ENV, _STREAM_EVAL, _STREAM_MODEL_POOL, _STREAM_ROLLOUT, _STREAM_MODEL = 1, 2, 3, 4, 5
_STREAM_TERMINATION = 6


def _make_env(config: MBPOConfig) -> Any:
    import gymnasium as gym

    return gym.make(config.env_id, disable_env_checker=True, **config.env_kwargs)


class MBPO:
    """One MBPO run: envs, pools, ensemble, SAC agent, logging and checkpoints.

    Args:
        config: the hyperparameters (:class:`MBPOConfig`).
        logdir: output directory (overrides ``config.logdir``; both None ->
            ``runs/<env>-<seed>-<timestamp>``).
        termination: termination function of the model rollouts; None ->
            ``termination_fn(config.env_id)``.
        quiet: no progress bar.

    Attributes: ``env`` / ``eval_env`` (gymnasium), ``real_pool`` / ``model_pool``
    (:class:`ReplayPool`), ``model`` (:class:`EnsembleDynamics`), ``agent`` (:class:`SAC`),
    ``rollout`` (:class:`BranchedRollout`), ``env_steps``, ``episodes``, ``rollout_length``,
    ``progress`` (the rows of ``progress.csv`` as dicts).
    """

    def __init__(self, config: MBPOConfig, logdir: str | os.PathLike | None = None, *,
                 termination: Callable[..., Any] | str | None = None,
                 quiet: bool = False) -> None:
        from .collect import EnvCollector
        from .ensemble import EnsembleDynamics
        from .pool import ReplayPool
        from .sac import SAC
        from .termination import termination_fn

        config.validate()
        self.config = config
        self.logdir = resolve_logdir(config, logdir)
        self.quiet = quiet
        seed = config.seed
        _seed_globals(seed)

        self.env = _make_env(config)
        self.eval_env = _make_env(config)
        space = self.env.action_space
        obs_shape = self.env.observation_space.shape
        if space.shape is None or len(space.shape) != 1 or obs_shape is None or len(obs_shape) != 1:
            raise ValueError(f"{config.env_id}: MBPO needs flat Box observation and action "
                             f"spaces, got {self.env.observation_space} and {space}")
        self.obs_dim, self.act_dim = int(obs_shape[0]), int(space.shape[0])

        self.real_pool = ReplayPool(max(config.total_steps, 1), self.obs_dim, self.act_dim,
                                    seed=seed)
        # seeds the first reset and the action space (random exploration)
        self.collector = EnvCollector(self.env, self.real_pool,
                                      seed=_derive_seed(seed, _STREAM_ENV))
        self.rollout_length = config.rollout_length(0)
        self.model_pool = ReplayPool(config.model_pool_capacity(self.rollout_length),
                                     self.obs_dim, self.act_dim,
                                     seed=_derive_seed(seed, _STREAM_MODEL_POOL))
        self.model = EnsembleDynamics(self.obs_dim, self.act_dim,
                                      ensemble_size=config.ensemble_size,
                                      num_elites=config.num_elites,
                                      hidden_size=config.model_hidden_size,
                                      num_layers=config.model_num_layers,
                                      seed=_derive_seed(seed, _STREAM_MODEL),
                                      device=config.device, trainer=config.trainer,
                                      autocast_bf16=config.autocast_bf16)
        self.agent = SAC(self.obs_dim, self.act_dim, space.low, space.high,
                         hidden_size=config.sac_hidden_size, num_layers=config.sac_num_layers,
                         lr=config.sac_lr, gamma=config.gamma, tau=config.tau,
                         target_entropy=config.target_entropy, device=config.device, seed=seed,
                         trainer=config.trainer, autocast_bf16=config.autocast_bf16)
        self.termination_model = None  # config.termination == "learned"
        if config.termination == "learned":
            from .termination_model import TerminationModel

            if termination is not None:
                raise ValueError("termination: config.termination='learned' learns the "
                                 "termination function; pass termination= only with 'builtin'")
            self.termination_model = TerminationModel(
                self.obs_dim, self.act_dim, seed=_derive_seed(seed, _STREAM_TERMINATION) % 2**62)
            self.termination = self.termination_model
        else:
            self.termination = termination if termination is not None else termination_fn(
                config.env_id)
        self.rollout = BranchedRollout(self.model, self.agent, self.termination,
                                       max_disagreement=config.max_disagreement,
                                       uncertainty_penalty=config.uncertainty_penalty)

        # counters and the latest statistics (all saved in checkpoints)
        self.env_steps = 0
        self.episodes = 0
        self.num_model_trainings = 0
        self.seconds = {p: 0.0 for p in _PHASES}
        self.wall_seconds = 0.0
        self.progress: list[dict[str, float]] = []
        self.last_train_return = float("nan")
        self.last_eval: tuple[float, float] = (float("nan"), float("nan"))
        self.last_model: dict[str, float] = {"model_holdout_mse": float("nan"),
                                             "model_epochs": float("nan")}
        self.last_rollout = RolloutStats()
        self._last_sac: dict[str, torch.Tensor] | None = None
        # env RNG state the next episode's reset draws from (see _step and save_checkpoint)
        self._reset_rng: dict | None = None
        self._writer: Any = None
        self._resumed_at = 0  # env_steps of the checkpoint this object was resumed from

    # ================================================================== the loop
    def train(self) -> dict[str, float]:
        """Runs until ``config.total_steps`` env steps; returns the final evaluation
        (``eval_return_mean``, ``eval_return_std``, ``env_steps``, ``wall_seconds``)."""
        cfg = self.config
        self.logdir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.logdir / "config.json", lambda f: f.write(cfg.to_json().encode()))
        self._write_progress_csv()
        bar = _progress_bar(cfg.total_steps, self.env_steps, disable=self.quiet)
        last_wall = time.perf_counter()
        try:
            while self.env_steps < cfg.total_steps:
                self._step()
                now = time.perf_counter()
                self.wall_seconds += now - last_wall
                last_wall = now
                step = self.env_steps
                if step % cfg.eval_freq == 0 or step == cfg.total_steps:
                    self._log_row()
                    bar.set_postfix(eval=f"{self.last_eval[0]:.1f}", refresh=False)
                    now = time.perf_counter()
                    self.wall_seconds += now - last_wall
                    last_wall = now
                if step == cfg.total_steps or (cfg.checkpoint_freq
                                               and step % cfg.checkpoint_freq == 0):
                    self.save_checkpoint()
                bar.update(1)
        finally:
            bar.close()
            if self._writer is not None:
                self._writer.flush()
        if not self.progress or self.progress[-1]["env_steps"] != self.env_steps:
            self._log_row()
        return {"env_steps": self.env_steps, "eval_return_mean": self.last_eval[0],
                "eval_return_std": self.last_eval[1], "wall_seconds": self.wall_seconds}

    def _step(self) -> None:
        """One real env step with everything MBPO does around it."""
        cfg = self.config
        in_random_phase = self.env_steps < cfg.init_random_steps
        if not in_random_phase and len(self.real_pool) > 0 and \
                (self.env_steps - cfg.init_random_steps) % cfg.model_train_freq == 0:
            self.train_model_and_rollout()  # (not at step 0 of a run without random steps)
        t0 = time.perf_counter()
        # The collector resets the env as soon as an episode ends; that reset draws from the
        # env's RNG. Keep the RNG state from before the step so a checkpoint taken at an
        # episode boundary can replay exactly that reset on resume.
        rng_before = _np_random_state(self.env)
        info = self.collector.step(None if in_random_phase else self.agent)
        self.env_steps += 1
        if info.episodes:
            self.episodes += len(info.episodes)
            self.last_train_return = info.episodes[-1].episode_return
            self._reset_rng = rng_before
        else:
            self._reset_rng = None
        t1 = time.perf_counter()
        self.seconds["env"] += t1 - t0
        if not in_random_phase:
            self._sac_updates()
            self.seconds["sac"] += time.perf_counter() - t1

    def _sac_updates(self) -> None:
        from .pool import sample_mixed

        cfg = self.config
        if len(self.model_pool) == 0:
            batch = self.real_pool.sample(cfg.sac_batch_size, num_batches=cfg.num_sac_updates)
        else:
            batch = sample_mixed(self.real_pool, self.model_pool, cfg.sac_batch_size,
                                 cfg.real_ratio, num_batches=cfg.num_sac_updates)
        self._last_sac = self.agent.update(batch)

    def train_model_and_rollout(self) -> None:
        """Fits the ensemble on the whole real pool, then refills the model pool."""
        cfg = self.config
        t0 = time.perf_counter()
        data = self.real_pool.transitions()
        self.last_model = _refit_model(self.model, data, cfg)
        if self.termination_model is not None:  # learned with the model, on the same rows
            tfit = self.termination_model.fit(data.obs, data.act, data.next_obs, data.terminated,
                                              holdout_ratio=cfg.holdout_ratio)
            self.last_model["termination_balanced_accuracy"] = float(
                tfit["holdout_balanced_accuracy"])
        self.num_model_trainings += 1
        t1 = time.perf_counter()
        self.seconds["model"] += t1 - t0

        length = cfg.rollout_length(cfg.epoch_at(self.env_steps))
        capacity = cfg.model_pool_capacity(length)
        if capacity != self.model_pool.capacity:
            self.model_pool.resize(capacity)  # keeps the newest rows
        self.rollout_length = length
        self.last_rollout = self.rollout.run(
            self.real_pool, self.model_pool, cfg.rollout_batch_size, length,
            seed=_derive_seed(cfg.seed, _STREAM_ROLLOUT, self.env_steps))
        self.seconds["rollout"] += time.perf_counter() - t1

    # ================================================================== evaluation / logging
    def evaluate(self, episodes: int | None = None) -> tuple[float, float]:
        """Mean and std of the undiscounted return of `episodes` (default
        ``config.eval_episodes``) deterministic-policy episodes on the evaluation env.

        Episode i of evaluation number n starts from ``reset(seed=f(run seed, n, i))``, so an
        evaluation never touches the training RNG streams (the policy mean is deterministic).
        """
        episodes = self.config.eval_episodes if episodes is None else int(episodes)
        t0 = time.perf_counter()
        returns = _run_episodes(self.eval_env, self.agent, episodes,
                                _derive_seed(self.config.seed, _STREAM_EVAL, self.env_steps))
        self.seconds["eval"] += time.perf_counter() - t0
        return float(np.mean(returns)), float(np.std(returns))

    def _log_row(self) -> None:
        self.last_eval = self.evaluate()
        sac = {k: float("nan") for k in ("critic_loss", "actor_loss", "alpha", "entropy",
                                          "mean_q")}
        if self._last_sac is not None:
            sac = {k: float(v.float().mean()) for k, v in self._last_sac.items() if k in sac}
        r = self.last_rollout
        row: dict[str, float] = {
            "env_steps": self.env_steps, "episodes": self.episodes,
            "eval_return_mean": self.last_eval[0], "eval_return_std": self.last_eval[1],
            "train_return": self.last_train_return, **self.last_model,
            "rollout_length": self.rollout_length, "model_pool_size": len(self.model_pool),
            "rollout_mean_length": r.mean_length, "rollout_nonfinite": r.nonfinite,
            "rollout_frac_terminated": r.frac_terminated,
            "model_disagreement": r.mean_disagreement,
            "rollout_frac_stopped": r.frac_stopped, "rollout_mean_penalty": r.mean_penalty,
            **sac,
            **{f"seconds_{p}": self.seconds[p] for p in _PHASES},
            "wall_seconds": self.wall_seconds,
        }
        self.progress = [p for p in self.progress if p["env_steps"] < self.env_steps] + [row]
        self._write_progress_csv()
        writer = self._tb()
        if writer is not None:
            for key, value in row.items():
                if key != "env_steps" and value is not None and math.isfinite(float(value)):
                    writer.add_scalar(key, float(value), self.env_steps)
            writer.flush()
        self._plot()

    def _write_progress_csv(self) -> None:
        write_csv(self.logdir / "progress.csv", PROGRESS_COLUMNS, self.progress)

    def _tb(self) -> Any:
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a dependency, but do not die for a log
                return None
            # purge_step hides the events a killed run wrote after its last checkpoint
            self._writer = SummaryWriter(str(self.logdir / "tb"),
                                         purge_step=self._resumed_at + 1 if self._resumed_at
                                         else None)
        return self._writer

    def _plot(self) -> None:
        x = np.array([p["env_steps"] for p in self.progress], dtype=np.float64)
        y = np.array([p["eval_return_mean"] for p in self.progress], dtype=np.float64)
        s = np.array([p["eval_return_std"] for p in self.progress], dtype=np.float64)
        write_learning_curve(self.logdir / "learning_curve.png", x, y, sd=s,
                             label="eval return (deterministic)", xlabel="env steps",
                             title=f"MBPO {self.config.env_id} (seed {self.config.seed})")

    def close(self) -> None:
        """Closes the envs and the TensorBoard writer."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.env.close()
        self.eval_env.close()

    # ================================================================== checkpoints
    def save_checkpoint(self) -> Path:
        """Writes one complete checkpoint under ``logdir/checkpoints`` and returns its path.

        Protocol (a crash at any point leaves the previous checkpoint loadable): every file
        goes into ``ckpt-<step>.tmp/`` through fsynced atomic writes, then ``MANIFEST.json``
        (sizes and CRC-32s, see :mod:`mbpo_fast.checkpoint`); the directory is fsynced and
        renamed to ``ckpt-<step>``; the ``latest`` pointer file is replaced atomically; only
        then are older checkpoints deleted.

        Contents: ``agent.pt`` (SAC networks, targets, optimizers, alpha, noise generator),
        ``model.safetensors`` + ``model_train.pt`` (ensemble weights, normalizer, elites,
        optimizer and generator state), ``real_pool.bin`` / ``model_pool.bin`` (rows, write
        position, RNG), ``state.pt`` (step counters, python/numpy/torch RNG states, env and
        action-space RNG states, progress rows, latest stats), ``config.json``.
        """
        return commit_checkpoint(self.logdir / "checkpoints", f"ckpt-{self.env_steps}",
                                 self._write_checkpoint_files)

    def _write_checkpoint_files(self, d: Path) -> None:
        self.agent.save(d / "agent.pt")
        self.model.save(d / "model.safetensors")
        _torch_save(d / "model_train.pt", self.model.training_state())
        self.real_pool.save(d / "real_pool.bin")
        self.model_pool.save(d / "model_pool.bin")
        state = {
            "format": _STATE_FORMAT,
            "env_steps": self.env_steps, "episodes": self.episodes,
            "num_model_trainings": self.num_model_trainings,
            "rollout_length": self.rollout_length,
            "seconds": dict(self.seconds), "wall_seconds": self.wall_seconds,
            "progress": list(self.progress),
            "last_train_return": self.last_train_return, "last_eval": list(self.last_eval),
            "last_model": dict(self.last_model), "last_rollout": self.last_rollout.to_dict(),
            "last_sac": None if self._last_sac is None else {
                k: v.detach().cpu() for k, v in self._last_sac.items()},
            # the next reset must draw from here (episode boundary: replay the collector's reset)
            "env_rng": self._reset_rng if self._reset_rng is not None
            else _np_random_state(self.env),
            "env_started": self.env_steps > 0,
            "action_space_rng": self.env.action_space.np_random.bit_generator.state,
            "python_rng": random.getstate(),
            "numpy_rng": _numpy_rng_state(),
            "torch_rng": torch.get_rng_state(),
        }
        _torch_save(d / "state.pt", _plain(state))
        if self.termination_model is not None:
            self.termination_model.save(d / "termination_model.safetensors")
        atomic_write(d / "config.json", lambda f: f.write(self.config.to_json().encode()))

    @classmethod
    def resume(cls, logdir: str | os.PathLike, *, quiet: bool = False,
               termination: Callable[..., Any] | str | None = None,
               total_steps: int | None = None,
               overrides: list[str] | tuple[str, ...] = ()) -> MBPO:
        """Rebuilds the run from the latest complete checkpoint in `logdir`.

        Training continues exactly where the checkpoint was taken, except that an episode
        in flight restarts from a fresh reset (its stored transitions stay; the cut is a
        truncation, never a terminal). `total_steps` extends (or shortens) the run.
        `overrides` (``"key=value"`` strings, as :meth:`MBPOConfig.with_overrides`) change
        fields that do not alter the saved state's shapes, e.g. ``trainer=torch`` to continue
        a run on the other training backend, or ``autocast_bf16=true``.
        Raises FileNotFoundError when there is no complete checkpoint and ValueError when one
        is corrupt.
        """
        logdir = Path(logdir)
        ckpt = latest_checkpoint(logdir)
        verify_checkpoint(ckpt, _CKPT_FILES)
        config = _read_config(ckpt)
        if total_steps is not None:
            config.total_steps = int(total_steps)
            config.validate()
        if overrides:
            changed = config.with_overrides(list(overrides))
            fixed = _STATE_SHAPING_FIELDS
            bad = sorted(k for k in fixed if getattr(changed, k) != getattr(config, k))
            if bad:
                raise ValueError(f"resume: cannot override {bad}: the checkpoint's state was "
                                 f"built with them (start a new run instead)")
            config = changed
        _check_networks_fit_files(ckpt, config)
        try:
            self = cls(config, logdir=logdir, quiet=quiet, termination=termination)
        except Exception as exc:  # e.g. gymnasium's errors for an unknown env id
            raise ValueError(f"{ckpt / 'config.json'}: cannot build the run it describes "
                             f"({type(exc).__name__}: {exc})"[:500]) from None
        self._load_checkpoint_files(ckpt)
        return self

    def _load_checkpoint_files(self, d: Path) -> None:
        from .ensemble import EnsembleDynamics
        from .pool import ReplayPool
        from .sac import SAC

        state = _torch_load(d / "state.pt")
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            raise ValueError(f"{d / 'state.pt'}: not a {_STATE_FORMAT} file")
        agent = SAC.load(d / "agent.pt", device=self.config.device)
        with _naming(d / "agent.pt"):
            self.agent.load_state_dict(agent.state_dict(), source=str(d / "agent.pt"))
        model = EnsembleDynamics.load(d / "model.safetensors", device=self.config.device)
        with _naming(d / "model.safetensors"):
            self.model.load_state_dict(model.state_dict())
        with _naming(d / "model_train.pt"):
            self.model.load_training_state(_torch_load(d / "model_train.pt"),
                                           source=str(d / "model_train.pt"))
        with _naming(d / "state.pt"):
            self._restore_state(state)
        real_pool = ReplayPool.load(d / "real_pool.bin")
        model_pool = ReplayPool.load(d / "model_pool.bin")
        for name, pool in (("real_pool.bin", real_pool), ("model_pool.bin", model_pool)):
            if (pool.obs_dim, pool.act_dim) != (self.obs_dim, self.act_dim):
                raise ValueError(f"{d / name}: rows of obs_dim {pool.obs_dim}, act_dim "
                                 f"{pool.act_dim}; the env has {self.obs_dim}, {self.act_dim}")
        if real_pool.capacity < self.config.total_steps:  # a resume that extends the run
            real_pool.resize(self.config.total_steps)
        self.real_pool, self.model_pool = real_pool, model_pool
        self.collector.pool = real_pool
        if self.termination_model is not None:
            from .termination_model import TerminationModel

            path = d / "termination_model.safetensors"
            loaded = TerminationModel.load(path)
            if (loaded.obs_dim, loaded.act_dim) != (self.obs_dim, self.act_dim):
                raise ValueError(f"{path}: a model of obs_dim {loaded.obs_dim}, act_dim "
                                 f"{loaded.act_dim}; the env has {self.obs_dim}, {self.act_dim}")
            self.termination_model.__dict__.update(loaded.__dict__)  # the rollout holds it

    def _restore_state(self, state: dict) -> None:
        self.env_steps = self._resumed_at = int(state["env_steps"])
        self.episodes = int(state["episodes"])
        self.num_model_trainings = int(state["num_model_trainings"])
        self.rollout_length = int(state["rollout_length"])
        self.seconds = {p: float(state["seconds"][p]) for p in _PHASES}
        self.wall_seconds = float(state["wall_seconds"])
        self.progress = [dict(r) for r in state["progress"]]
        self.last_train_return = float(state["last_train_return"])
        self.last_eval = (float(state["last_eval"][0]), float(state["last_eval"][1]))
        self.last_model = dict(state["last_model"])
        self.last_rollout = RolloutStats(**state["last_rollout"])
        self._last_sac = state["last_sac"]
        if state["env_started"]:
            # The in-flight episode restarts (a truncation): the next reset continues the
            # env's saved RNG stream instead of re-seeding it.
            self.collector.seed = None
            self.env.unwrapped.np_random.bit_generator.state = state["env_rng"]
        self.env.action_space.np_random.bit_generator.state = state["action_space_rng"]
        random.setstate(state["python_rng"])
        _set_numpy_rng_state(state["numpy_rng"])
        torch.set_rng_state(state["torch_rng"])


# ====================================================================== helpers
def _refit_model(model: Any, data: Any, config: Any, batch_size: int = 256) -> dict[str, float]:
    """Fits the ensemble `model` on the transitions `data` with the holdout and caps of
    `config` (an MBPOConfig or PETSConfig), `batch_size` rows per member and Adam step;
    returns the progress fields ``model_holdout_mse`` (holdout MSE averaged over the new
    elites) and ``model_epochs``."""
    fit = model.fit(data.obs, data.act, data.rew, data.next_obs, batch_size=batch_size,
                    holdout_ratio=config.holdout_ratio, max_holdout=config.max_holdout,
                    max_epochs=config.model_max_epochs, max_seconds=config.model_max_seconds)
    mse = np.asarray(fit["holdout_mse"], dtype=np.float64)
    elites = list(fit.get("elites", model.elites))
    return {"model_holdout_mse": float(mse[elites].mean()) if mse.size else float("nan"),
            "model_epochs": float(fit.get("epochs", float("nan")))}


def resolve_logdir(config: Any, logdir: str | os.PathLike | None, prefix: str = "") -> Path:
    """The run directory: `logdir`, else ``config.logdir``, else
    ``runs/<prefix><env_id>-<seed>-<timestamp>``; recorded in ``config.logdir``."""
    if logdir is None:
        logdir = config.logdir
    if logdir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        logdir = Path("runs") / f"{prefix}{config.env_id}-{config.seed}-{stamp}"
    path = Path(logdir)
    config.logdir = str(path)
    return path


# Config fields that shape the saved state (network sizes, spaces, seeds): a resume keeps them.
_STATE_SHAPING_FIELDS = ("env_id", "env_kwargs", "seed", "device", "sac_hidden_size",
                         "sac_num_layers", "ensemble_size", "num_elites", "model_hidden_size",
                         "model_num_layers", "termination")

def commit_checkpoint(root: Path, name: str, write_files: Callable[[Path], None]) -> Path:
    """Writes checkpoint `name` under `root` with ``write_files(tmp_dir)`` and the protocol of
    :meth:`MBPO.save_checkpoint` (tmp dir, a checksummed ``MANIFEST.json`` of every file
    written, fsync, rename, atomic ``latest``, then delete the older ``ckpt-*`` and leftovers
    of crashed saves); returns the final directory. Shared with the PETS loop."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    if final.exists():
        if _read_latest(root) == name:
            _remove_stale(root, name)  # a crash may have stopped the last save's cleanup
            return final  # this exact state is already saved
        shutil.rmtree(final)  # a stale directory from a crash before `latest` moved
    tmp = root / f"{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    write_files(tmp)
    # the manifest (sizes, CRC-32) of every file written, last: resume verifies it first
    write_manifest(tmp, sorted(p.name for p in tmp.iterdir() if p.is_file()))
    _fsync_dir(tmp)
    os.replace(tmp, final)
    _fsync_dir(root)
    atomic_write(root / "latest", lambda f: f.write(name.encode()))
    _remove_stale(root, name)
    return final


def _check_networks_fit_files(ckpt: Path, config: MBPOConfig) -> None:
    """Limits before allocation: the networks ``config.json`` describes must fit in the files
    that hold their weights (agent.pt, model.safetensors), counted with 1-dim observations
    and actions (a lower bound), so building the run costs memory in proportion to the
    checkpoint's size, whatever the config claims. ValueError naming config.json otherwise."""
    from .sac import _num_network_floats

    h, n, e = config.model_hidden_size, config.model_num_layers, config.ensemble_size
    # [2 -> h] + (n - 1) x [h -> h] + [h -> 4] per member (weights and biases)
    ensemble = e * (3 * h + max(n - 1, 0) * (h * h + h) + 4 * h + 4) if n < 1 << 16 \
        else 1 << 62
    for name, floats in (("agent.pt", _num_network_floats(1, 1, config.sac_hidden_size,
                                                           config.sac_num_layers)),
                         ("model.safetensors", ensemble)):
        try:
            size = (ckpt / name).stat().st_size
        except FileNotFoundError:
            raise ValueError(f"{ckpt / name}: missing from the checkpoint") from None
        if 4 * floats > size:
            raise ValueError(f"{ckpt / name}: {size} bytes, too small for the networks "
                             f"{ckpt / 'config.json'} describes (at least {4 * floats} "
                             f"bytes): a truncated file or a config of another run")


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Re-raises a malformed file's KeyError/TypeError/ValueError/RuntimeError as a
    ValueError naming `path` (a file that parsed but does not hold what a checkpoint needs)."""
    try:
        yield
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError,
            OverflowError) as exc:
        if str(path) in str(exc):
            raise
        raise ValueError(f"{path}: corrupt checkpoint file ({type(exc).__name__}: "
                         f"{exc})"[:500]) from None


def _read_config(ckpt: Path) -> MBPOConfig:
    path = ckpt / "config.json"
    with _naming(path):
        try:
            return MBPOConfig.from_json(path.read_text())
        except (UnicodeDecodeError, RecursionError) as exc:
            raise ValueError(f"{type(exc).__name__}: {exc}") from None


def latest_checkpoint(logdir: str | os.PathLike) -> Path:
    """The newest complete checkpoint directory of a run (``latest`` pointer, else the
    highest-step ``ckpt-<step>`` directory). Raises FileNotFoundError when there is none."""
    root = Path(logdir) / "checkpoints"
    name = _read_latest(root)
    if name is not None and (root / name).is_dir():
        return root / name
    complete = []
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith("ckpt-") and p.name[5:].isdigit() and all(
                    (p / f).exists() for f in _CKPT_FILES):
                complete.append((int(p.name[5:]), p))
    if not complete:
        raise FileNotFoundError(f"{logdir}: no complete checkpoint under {root}")
    return max(complete)[1]


def evaluate_checkpoint(logdir: str | os.PathLike, episodes: int = 10,
                        seed: int | None = None) -> tuple[float, float, list[float]]:
    """Loads the agent of the latest checkpoint in `logdir` and runs `episodes` deterministic
    episodes on a fresh env; returns (mean, std, returns). `seed` defaults to the run's."""
    from .sac import SAC

    ckpt = latest_checkpoint(logdir)
    verify_checkpoint(ckpt, _CKPT_FILES)
    config = _read_config(ckpt)
    agent = SAC.load(ckpt / "agent.pt", device=config.device)
    env = _make_env(config)
    try:
        returns = _run_episodes(env, agent, episodes, _derive_seed(
            config.seed if seed is None else seed, _STREAM_EVAL, 1 << 40))
    finally:
        env.close()
    return float(np.mean(returns)), float(np.std(returns)), returns


def _run_episodes(env: Any, agent: Any, episodes: int, seed: int) -> list[float]:
    if episodes <= 0:
        raise ValueError(f"episodes: expected a positive int, got {episodes}")
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=_derive_seed(seed, i))
        total, done = 0.0, False
        while not done:
            action = agent.act(np.asarray(obs, dtype=np.float32), deterministic=True)
            obs, rew, terminated, truncated, _ = env.step(action)
            total += float(rew)
            done = bool(terminated or truncated)
        returns.append(total)
    return returns


def _seed_globals(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def _np_random_state(env: Any) -> dict | None:
    rng = getattr(env.unwrapped, "_np_random", None)
    return None if rng is None else rng.bit_generator.state


def _remove_stale(root: Path, keep: str) -> None:
    """Deletes every checkpoint directory but `keep` (older ones, ``.tmp`` ones of crashed
    saves) and temporary files of a crash while ``latest`` was written."""
    for old in root.iterdir():
        if old.name != keep and old.name.startswith("ckpt-"):
            shutil.rmtree(old, ignore_errors=True)
        elif old.name.startswith(".latest.") and old.name.endswith(".tmp"):
            old.unlink(missing_ok=True)


def _read_latest(root: Path) -> str | None:
    try:
        name = (root / "latest").read_bytes().decode("ascii").strip()
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return None  # missing or damaged pointer: fall back to the newest complete directory
    return name if name.startswith("ckpt-") and name[5:].isdigit() else None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _torch_save(path: Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, lambda f: f.write(buf.getbuffer()))


def _torch_load(path: Path) -> Any:
    """A checkpoint's ``*.pt`` file, read without running code from it (weights-only)."""
    return load_torch_file(path, map_location="cpu")


def _plain(obj: Any) -> Any:
    """`obj` with numpy arrays and scalars (inside dicts, lists, tuples) turned into lists and
    Python numbers: what ``torch.load(weights_only=True)`` reads back without numpy globals."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, (np.ndarray, np.generic)):
        return obj.tolist()
    return obj


def _numpy_rng_state() -> tuple:
    """``np.random.get_state()`` as plain values (the key a list of ints), so ``state.pt``
    holds no numpy object and loads with ``weights_only=True``."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    return (str(name), [int(k) for k in key], int(pos), int(has_gauss), float(gauss))


def _set_numpy_rng_state(state: Any) -> None:
    """Inverse of :func:`_numpy_rng_state`; also takes the tuple of older checkpoints (the key
    a uint32 array). Raises ValueError for anything that is not an MT19937 state."""
    if not isinstance(state, (tuple, list)) or len(state) != 5 or state[0] != "MT19937":
        raise ValueError("numpy_rng: expected ('MT19937', key[624], pos, has_gauss, gauss)")
    key = np.asarray(state[1])
    if key.shape != (624,) or key.dtype.kind not in "iu" or key.min() < 0 or \
            key.max() >= 2**32:
        raise ValueError(f"numpy_rng: expected 624 uint32 key words, got shape {key.shape} "
                         f"dtype {key.dtype}")
    np.random.set_state(("MT19937", key.astype(np.uint32), int(state[2]), int(state[3]),
                         float(state[4])))


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, *args: Any, **kwargs: Any) -> None: ...
    def close(self) -> None: ...


def _progress_bar(total: int, initial: int, disable: bool, *, unit: str = "step",
                  desc: str = "mbpo", smoothing: float = 0.05) -> Any:
    """A tqdm bar on a terminal (PETS: unit "episode"), else one that does nothing."""
    if disable or not sys.stderr.isatty():
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit=unit, dynamic_ncols=True,
                smoothing=smoothing, desc=desc)

