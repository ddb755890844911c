"""Seeds and hyperparameter grids of MBPO runs, scheduled by Ray Tune: ``mbpo-fast sweep``.

::

    mbpo-fast sweep --env Hopper-v5 --seeds 0-4 --logdir sweeps/hopper            # 5 seeds
    mbpo-fast sweep --env Hopper-v5 --seeds 0-2 --grid num_sac_updates=10,20 \\
        --set total_steps=60000 --logdir sweeps/hopper-updates --cpus-per-trial 2    # 2 x 3 trials
    mbpo-fast sweep ... --address auto                  # on a running Ray cluster

    from mbpo_fast import sweep
    trials = sweep.plan_trials(["Pendulum-v1"], [0, 1], "sweeps/p", grid=["sac_lr=1e-4,3e-4"])
    sweep.run_sweep(trials, "sweeps/p")                  # needs Ray Tune
    print(sweep.summarize(trials, "sweeps/p").markdown)

Every trial is one ordinary MBPO run (:class:`mbpo_fast.MBPO`) in its own directory
``<logdir>/<env id>/<setting>/seed<k>`` (config.json, progress.csv, checkpoints, TensorBoard),
scheduled by Ray Tune with ``cpus_per_trial`` CPUs (the trial's torch and native thread count)
and ``gpus_per_trial`` GPUs. A *setting* is one point of the ``--grid`` product (``base`` when
there is no grid); ``--set`` applies to every trial.

The trial directories are the sweep's state. Before training, a trial looks at its directory:
no complete checkpoint -> a new run; a checkpoint short of ``total_steps`` -> resumed from it
(:meth:`MBPO.resume`); a checkpoint at or past ``total_steps`` -> finished, skipped. So running
the same command again after an interruption (Ctrl-C, a killed head node, a failed trial)
continues every unfinished trial and skips the finished ones, whatever Ray Tune remembers;
Ray Tune's experiment state (``<logdir>/_ray``) is only its log. A checkpoint whose config
differs from the requested one in anything but ``total_steps``, ``checkpoint_freq`` and
``logdir`` is an error
(a sweep never silently mixes settings in one directory). A lock file in each trial directory
keeps two processes from training the same trial at once.

Outputs in ``<logdir>`` (written at the end of every invocation, from the trial directories):
``<env>/<setting>/summary.md`` and ``curves.png`` (seed mean ± sd against MBPO's published
curve, by :mod:`mbpo_fast.compare`), ``summary.md`` (final evaluation per setting and a table
of every trial: status, env steps, final return, wall time) and ``trials.csv``.

Ray is an optional dependency (``pip install "mbpo_fast[sweep]"``); only :func:`run_sweep`
imports it. See docs/sweep.md.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import itertools
import json
import math
import os
import re
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import MBPOConfig

__all__ = [
    "INSTALL_HINT", "RayNotInstalledError", "Trial", "TrialState", "SweepOutcome", "TrialRow",
    "SettingRow", "SweepSummary", "parse_seeds", "split_values", "parse_grid", "setting_name",
    "plan_trials", "trial_state", "run_trial", "run_sweep", "summarize", "settings_table",
    "trials_table", "add_parser", "cli",
]

#: How to get the optional dependency (printed when Ray is missing).
INSTALL_HINT = 'pip install "mbpo_fast[sweep]"  (or: pip install "ray[tune]")'

#: Config fields a sweep sets itself: --env, --seeds and the trial directory.
_SWEEP_OWNED = {"env_id": "--env", "seed": "--seeds", "logdir": "--logdir"}
#: Fields that may differ between a trial's checkpoint and the requested config (a resume
#: applies the requested ones).
_RESUMABLE_DIFFERENCES = {"total_steps", "logdir", "checkpoint_freq"}
_BASE_SETTING = "base"
_LOCK_NAME = ".sweep.lock"


class RayNotInstalledError(ImportError):
    """Ray Tune is not importable; the message says how to install it."""


# ====================================================================== planning


@dataclass(frozen=True)
class Trial:
    """One run of a sweep: environment, grid point (``setting`` is its directory name,
    ``overrides`` its ``key=value`` strings), seed, directory and the full config
    (``config.logdir`` is ``logdir``)."""

    env_id: str
    setting: str
    overrides: tuple[str, ...]
    seed: int
    logdir: Path
    config: MBPOConfig

    @property
    def trial_id(self) -> str:
        """``<env>/<setting>/seed<k>``: the trial directory relative to the sweep directory."""
        return f"{self.env_id}/{self.setting}/seed{self.seed}"

    def spec(self, threads: int) -> dict[str, Any]:
        """What :func:`run_trial` needs, as plain JSON-able data (sent to a Ray worker)."""
        return {"trial_id": self.trial_id, "logdir": str(self.logdir),
                "config": self.config.to_dict(), "threads": int(threads)}


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,3,7"``; ``"0-2,10"``. Seeds are non-negative, each
    at most once. Raises ValueError naming ``--seeds`` and the text otherwise."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if m is None:
            raise ValueError(f"--seeds: expected non-negative integers and ranges such as "
                             f"'0-4' or '0,2,5', got {text!r}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise ValueError(f"--seeds: range {part!r} is empty (expected LO-HI with LO <= HI), "
                             f"in {text!r}")
        seeds.extend(range(lo, hi + 1))
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise ValueError(f"--seeds: seed(s) {dup} listed more than once in {text!r}")
    return seeds


def split_values(text: str) -> list[str]:
    """Splits ``V1,V2,...`` at the commas outside brackets, braces and quotes, so JSON values
    stay whole: ``"[20,150,1,15],[20,150,1,1]"`` -> ``["[20,150,1,15]", "[20,150,1,1]"]``.
    Raises ValueError for unbalanced brackets or quotes."""
    values, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced {ch!r} in {text!r}")
        elif ch == "," and depth == 0:
            values.append(text[start:i].strip())
            start = i + 1
    if depth or quote:
        raise ValueError(f"unbalanced brackets or quotes in {text!r}")
    values.append(text[start:].strip())
    return values


def _override_key(item: str, option: str) -> tuple[str, str]:
    if not isinstance(item, str) or "=" not in item:
        raise ValueError(f"{option}: expected KEY=VALUE, got {item!r}")
    key, value = (s.strip() for s in item.split("=", 1))
    if key in _SWEEP_OWNED:
        raise ValueError(f"{option}: {key!r} is set by the sweep itself; use "
                         f"{_SWEEP_OWNED[key]} instead (got {item!r})")
    return key, value


def parse_grid(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["num_sac_updates=10,20", "sac_lr=1e-4,3e-4"]`` -> ``[(key, [values...]), ...]``.

    Raises ValueError for a missing ``=``, an empty value, a value listed twice, a key given
    twice or a key the sweep owns (``env_id``, ``seed``, ``logdir``). Whether the key and the
    values fit :class:`MBPOConfig` is checked by :func:`plan_trials`.
    """
    grid: list[tuple[str, list[str]]] = []
    for item in items:
        key, raw = _override_key(item, "--grid")
        try:
            values = split_values(raw)
        except ValueError as exc:
            raise ValueError(f"--grid {item!r}: {exc}") from None
        if any(not v for v in values):
            raise ValueError(f"--grid {item!r}: empty value; expected KEY=V1,V2,...")
        if len(set(values)) != len(values):
            raise ValueError(f"--grid {item!r}: a value is listed more than once")
        if any(k == key for k, _ in grid):
            raise ValueError(f"--grid: key {key!r} given more than once")
        grid.append((key, values))
    return grid


def setting_name(overrides: Sequence[str]) -> str:
    """Directory name of a grid point: its ``key=value`` strings joined by ``+``, with
    brackets, braces, quotes and spaces dropped and other characters unsafe in a path
    replaced (``rollout_schedule=[20,150,1,15]`` -> ``rollout_schedule=20,150,1,15``);
    ``base`` for no overrides."""
    if not overrides:
        return _BASE_SETTING
    parts = []
    for item in overrides:
        text = re.sub(r"[\[\]{}()\"' ]", "", item)
        parts.append(re.sub(r"[^A-Za-z0-9._=,:+-]", "-", text).replace(":", "-"))
    name = "+".join(parts)
    if len(name) > 150:  # keep paths usable; the full overrides are in sweep.json
        import hashlib

        name = name[:140] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return name


def plan_trials(envs: Sequence[str], seeds: Sequence[int], logdir: str | os.PathLike,
                sets: Sequence[str] = (), grid: Sequence[str] = (),
                steps: int | None = None, device: str | None = None) -> list[Trial]:
    """Every (env, grid point, seed) trial of a sweep, in that order, with its full config:
    :meth:`MBPOConfig.for_env` (env, seed), then `steps` (``total_steps``), then `sets` and the
    grid point's overrides (``key=value`` strings, as ``mbpo-fast train --set``), then
    `device` unless `sets`/`grid` set ``device``. Trial directories are
    ``<logdir>/<env>/<setting>/seed<k>`` (absolute).

    Raises ValueError naming the option for an empty `envs`/`seeds`, a bad or duplicated
    override, an env without a preset, a value that does not fit its config field, or two
    grid points whose directory names coincide.
    """
    envs, seeds = list(envs), list(seeds)
    if not envs:
        raise ValueError("--env: give at least one environment")
    if len(set(envs)) != len(envs):
        raise ValueError(f"--env: an environment is listed more than once: {envs}")
    if not seeds:
        raise ValueError("--seeds: give at least one seed")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ValueError(f"--seeds: seeds must be non-negative ints, got {s!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)
                              or steps < 1):
        raise ValueError(f"--steps: expected a positive int, got {steps!r}")
    set_keys: dict[str, str] = {}
    for item in sets:
        key, _ = _override_key(item, "--set")
        if key in set_keys:
            raise ValueError(f"--set: key {key!r} given more than once ({set_keys[key]!r}, "
                             f"{item!r})")
        set_keys[key] = item
    axes = parse_grid(grid)
    for key, _ in axes:
        if key in set_keys:
            raise ValueError(f"--grid {key}=... and --set {set_keys[key]!r} both set {key!r}; "
                             "give it once")
    root = Path(logdir).absolute()
    points = [tuple(f"{k}={v}" for (k, _), v in zip(axes, combo, strict=True))
              for combo in itertools.product(*(values for _, values in axes))]
    names: dict[str, tuple[str, ...]] = {}
    for point in points:
        name = setting_name(point)
        if name in names:
            raise ValueError(f"--grid: settings {list(names[name])} and {list(point)} would "
                             f"share the directory {name!r}; write the values differently")
        names[name] = point
    device_set = "device" in set_keys or any(k == "device" for k, _ in axes)
    trials = []
    for env in envs:
        for point in points:
            for seed in seeds:
                cfg = MBPOConfig.for_env(env, seed=seed)
                if steps is not None:
                    cfg.total_steps = steps
                if device is not None and not device_set:
                    cfg.device = device
                cfg = cfg.with_overrides([*sets, *point])
                name = setting_name(point)
                trial_dir = root / env / name / f"seed{seed}"
                cfg.logdir = str(trial_dir)
                trials.append(Trial(env, name, point, seed, trial_dir, cfg))
    return trials


# ====================================================================== one trial


@dataclass(frozen=True)
class TrialState:
    """Where a trial directory stands: ``state`` is "new" (no complete checkpoint), "resume"
    (a checkpoint at ``steps`` < ``total_steps``) or "finished" (``steps`` >= ``total_steps``)."""

    state: str
    steps: int
    total_steps: int


def _checkpoint_step(logdir: Path) -> tuple[Path, int] | None:
    from .mbpo import latest_checkpoint

    try:
        ckpt = latest_checkpoint(logdir)
    except FileNotFoundError:
        return None
    return ckpt, int(ckpt.name.removeprefix("ckpt-"))


def trial_state(logdir: str | os.PathLike, config: MBPOConfig) -> TrialState:
    """What a trial with `config` has to do in `logdir` (see :class:`TrialState`).

    Raises ValueError when the latest checkpoint was written with a config that differs from
    `config` in anything but ``total_steps``, ``checkpoint_freq`` and ``logdir``, naming the
    fields and values.
    """
    logdir = Path(logdir)
    found = _checkpoint_step(logdir)
    if found is None:
        return TrialState("new", 0, config.total_steps)
    ckpt, step = found
    try:
        saved = MBPOConfig.from_json((ckpt / "config.json").read_text()).to_dict()
    except (OSError, ValueError) as exc:
        raise ValueError(f"{ckpt / 'config.json'}: unreadable checkpoint config ({exc})") \
            from None
    wanted = config.to_dict()
    diff = sorted(k for k in wanted if k not in _RESUMABLE_DIFFERENCES
                  and json.dumps(saved.get(k), sort_keys=True) !=
                  json.dumps(wanted[k], sort_keys=True))
    if diff:
        detail = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, sweep {wanted[k]!r}"
                           for k in diff)
        raise ValueError(f"{logdir}: the trial's checkpoint was written with a different config "
                         f"({detail}); rerun with the settings it was started with, or use a "
                         "new --logdir")
    return TrialState("finished" if step >= config.total_steps else "resume", step,
                      config.total_steps)


@contextlib.contextmanager
def _trial_lock(logdir: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``<logdir>/.sweep.lock`` (released when the process dies);
    RuntimeError naming the holder's pid if another process holds it."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no protection against a concurrent twin
        yield
        return
    path = logdir / _LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text().strip() or "?"
            raise RuntimeError(f"{logdir} is being trained by another process ({holder}); "
                               "wait for it or stop it, then rerun the sweep") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def run_trial(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs one trial to ``config.total_steps`` in the calling process (a Ray worker, or any
    process): sets the thread count, takes the trial directory's lock, then starts a new run,
    resumes the latest checkpoint, or does nothing if the trial is finished (see
    :func:`trial_state`).

    `spec` is :meth:`Trial.spec`: ``trial_id``, ``logdir``, ``config`` (an
    :meth:`MBPOConfig.to_dict`), ``threads``. Returns ``trial`` (the trial id; Ray Tune owns
    the ``trial_id`` key of a result), ``action`` ("started", "resumed" or "skipped"),
    ``backend`` (:func:`mbpo_fast.backend` in this process), ``started_at`` (env steps of the
    checkpoint it resumed, 0 when new), ``env_steps``, ``eval_return_mean``,
    ``eval_return_std``, ``wall_seconds`` (the run's cumulative training time) and
    ``seconds`` (this call's wall-clock time).
    """
    import torch

    import mbpo_fast

    from .mbpo import MBPO

    t0 = time.perf_counter()
    threads = spec.get("threads")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: expected a positive int, got {threads!r}")
    torch.set_num_threads(threads)
    mbpo_fast.set_num_threads(threads)
    config = MBPOConfig.from_dict(spec["config"])
    logdir = Path(spec["logdir"])
    logdir.mkdir(parents=True, exist_ok=True)
    with _trial_lock(logdir):
        state = trial_state(logdir, config)
        out: dict[str, Any] = {"trial": spec.get("trial_id", str(logdir)),
                               "started_at": state.steps, "backend": mbpo_fast.backend()}
        if state.state == "finished":
            last = _last_progress(logdir)
            out.update(action="skipped", env_steps=state.steps,
                       eval_return_mean=last.get("eval_return_mean", math.nan),
                       eval_return_std=last.get("eval_return_std", math.nan),
                       wall_seconds=last.get("wall_seconds", math.nan))
        else:
            if state.state == "resume":
                algo = MBPO.resume(logdir, quiet=True, total_steps=config.total_steps,
                                   overrides=[f"checkpoint_freq={config.checkpoint_freq}"])
            else:
                algo = MBPO(config, logdir=logdir, quiet=True)
            try:
                result = algo.train()
            finally:
                algo.close()
            out.update(action="resumed" if state.state == "resume" else "started", **result)
    out["seconds"] = time.perf_counter() - t0
    return out


def _last_progress(logdir: Path) -> dict[str, float]:
    """The last row of ``progress.csv`` as floats ({} when there is none)."""
    try:
        rows = list(csv.DictReader(io.StringIO((logdir / "progress.csv").read_text())))
    except (OSError, UnicodeDecodeError):
        return {}
    if not rows:
        return {}
    out = {}
    for k, v in rows[-1].items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            out[k] = math.nan
    return out


# ====================================================================== Ray Tune


def _import_tune() -> tuple[Any, Any]:
    try:
        import ray
        from ray import tune
    except ImportError as exc:
        raise RayNotInstalledError(f"mbpo-fast sweep needs Ray Tune, which is not installed "
                                   f"({exc}). Install it with: {INSTALL_HINT}") from None
    return ray, tune


def _tune_trainable(config: dict[str, Any], specs: dict[str, dict[str, Any]]) -> None:
    """The Ray Tune function trainable: one :func:`run_trial`, its result reported once."""
    from ray import tune

    tune.report(run_trial(specs[config["trial"]]))


def _worker_runtime_env() -> dict[str, Any] | None:
    """Makes the workers import the same ``mbpo_fast`` as this process. When it was found
    through a plain ``sys.path`` entry (PYTHONPATH=. or the working directory, e.g. an
    in-place build), that directory goes first on the workers' PYTHONPATH: Ray Tune changes
    their working directory, so a relative entry would not do. An installed package (also an
    editable install, found by its import hook) needs nothing: the workers run the same
    interpreter."""
    import site

    root = Path(__file__).resolve().parent.parent
    entries = {Path(p or os.getcwd()).resolve() for p in sys.path if isinstance(p, str)}
    site_dirs = {Path(p).resolve() for p in [*site.getsitepackages(),
                                             site.getusersitepackages()]}
    if root not in entries or root in site_dirs:
        return None
    return {"env_vars": {"PYTHONPATH": os.pathsep.join([str(root), "${PYTHONPATH}"])}}


@dataclass
class SweepOutcome:
    """What :func:`run_sweep` did: per trial id, ``results`` (the :func:`run_trial` dict of a
    trial that completed in this call) or ``errors`` (the error text of one that failed);
    ``skipped``: trials already finished before the call (never scheduled);
    ``interrupted``: the run was stopped (Ctrl-C) before every trial ended."""

    results: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    errors: dict[str, str] = dataclasses.field(default_factory=dict)
    skipped: list[str] = dataclasses.field(default_factory=list)
    interrupted: bool = False


def _check_resources(address: str | None, cpus_per_trial: int, gpus_per_trial: float,
                     num_cpus: int | None, max_failures: int) -> None:
    """ValueError naming the option for a resource request :func:`run_sweep` cannot run."""
    if isinstance(cpus_per_trial, bool) or not isinstance(cpus_per_trial, int) \
            or cpus_per_trial < 1:
        raise ValueError(f"--cpus-per-trial: expected a positive int, got {cpus_per_trial!r}")
    if not (isinstance(gpus_per_trial, (int, float)) and math.isfinite(gpus_per_trial)
            and gpus_per_trial >= 0):
        raise ValueError(f"--gpus-per-trial: expected a number >= 0, got {gpus_per_trial!r}")
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 0:
        raise ValueError(f"--max-failures: expected an int >= 0, got {max_failures!r}")
    if num_cpus is not None:
        if address is not None:
            raise ValueError(f"--num-cpus sizes the local Ray instance; with --address "
                             f"{address!r} the cluster's own CPUs are used")
        if isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 1:
            raise ValueError(f"--num-cpus: expected a positive int, got {num_cpus!r}")
    if address is None:
        local = num_cpus if num_cpus is not None else (os.cpu_count() or 1)
        if cpus_per_trial > local:
            raise ValueError(f"--cpus-per-trial {cpus_per_trial} exceeds the local Ray "
                             f"instance's {local} CPUs (--num-cpus / this machine)")


def run_sweep(trials: Sequence[Trial], sweep_dir: str | os.PathLike, *,
              address: str | None = None, cpus_per_trial: int = 1,
              gpus_per_trial: float = 0.0, num_cpus: int | None = None,
              max_failures: int = 0, verbose: int = 1) -> SweepOutcome:
    """Runs the unfinished `trials` on Ray Tune and returns what happened.

    `address`: None starts a local Ray instance (with `num_cpus` CPUs, default all); "auto"
    or "HOST:PORT" joins a running cluster. Each trial reserves `cpus_per_trial` CPUs (its
    torch/native thread count) and `gpus_per_trial` GPUs. A failed trial is retried up to
    `max_failures` times (each retry resumes its checkpoint). Finished trials are not
    scheduled; if none is left, Ray is not even started (but must be installed).

    Raises RayNotInstalledError without Ray, ValueError for bad arguments or resources the
    local instance does not have (Tune would wait for them forever).
    """
    _check_resources(address, cpus_per_trial, gpus_per_trial, num_cpus, max_failures)
    ray, tune = _import_tune()
    sweep_dir = Path(sweep_dir).absolute()
    outcome = SweepOutcome()
    pending = []
    for t in trials:
        if trial_state(t.logdir, t.config).state == "finished":
            outcome.skipped.append(t.trial_id)
        else:
            pending.append(t)
    if not pending:
        return outcome

    init: dict[str, Any] = {"address": address, "include_dashboard": False,
                            "runtime_env": _worker_runtime_env(),
                            "log_to_driver": verbose > 0}
    if num_cpus is not None:
        init["num_cpus"] = num_cpus
    ray.init(**init)
    try:
        gpus = ray.cluster_resources().get("GPU", 0.0)
        if gpus_per_trial > gpus:
            msg = (f"--gpus-per-trial {gpus_per_trial:g}: the Ray cluster has {gpus:g} GPU(s)")
            if address is None:
                raise ValueError(msg)
            print(f"mbpo-fast sweep: warning: {msg} now; trials wait for an autoscaler",
                  file=sys.stderr)
        specs = {t.trial_id: t.spec(cpus_per_trial) for t in pending}
        trainable = tune.with_resources(tune.with_parameters(_tune_trainable, specs=specs),
                                        {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
        tuner = tune.Tuner(
            trainable, param_space={"trial": tune.grid_search(list(specs))},
            run_config=tune.RunConfig(
                name=time.strftime("tune-%Y%m%d-%H%M%S"), storage_path=str(sweep_dir / "_ray"),
                verbose=verbose, failure_config=tune.FailureConfig(max_failures=max_failures)))
        try:
            grid = tuner.fit()
        except KeyboardInterrupt:
            outcome.interrupted = True
            return outcome
        for result in grid:
            trial_id = (result.config or {}).get("trial")
            if trial_id is None:
                continue
            if result.error is not None:
                outcome.errors[trial_id] = _error_text(result.error)
            elif result.metrics and "action" in result.metrics:
                outcome.results[trial_id] = dict(result.metrics)
            else:  # stopped before it reported (e.g. Ctrl-C, which Tune turns into a stop)
                outcome.interrupted = True
    finally:
        ray.shutdown()
    return outcome


def _error_text(exc: BaseException) -> str:
    """``Type: message`` of the error a trial raised, unwrapped from Ray's wrappers (a
    RayTaskError's ``cause``, chained ``__cause__``); the last line when the text is a
    traceback."""
    inner, seen = exc, set()
    while id(inner) not in seen:
        seen.add(id(inner))
        cause = getattr(inner, "cause", None) or inner.__cause__
        if not isinstance(cause, BaseException):
            break
        inner = cause
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    if len(lines) > 1:  # a formatted traceback: its last line is "Type: message"
        return lines[-1]
    return f"{type(inner).__name__}: {lines[0] if lines else ''}"


# ====================================================================== summary


@dataclass(frozen=True)
class TrialRow:
    """One line of the trial table, read from the trial directory: ``env_steps`` of its latest
    checkpoint; ``final_return`` ± ``final_return_std`` of its last evaluation in
    progress.csv, at ``eval_step`` (later than the checkpoint after a crash: those steps are
    redone on resume); ``wall_seconds`` the run's training time there. NaN/0 where unknown."""

    env_id: str
    setting: str
    seed: int
    status: str
    env_steps: int
    total_steps: int
    final_return: float
    final_return_std: float
    eval_step: int
    wall_seconds: float
    logdir: Path


@dataclass(frozen=True)
class SettingRow:
    """The last grid row of one (env, setting) comparison (the longest seed's last
    evaluation): ``n`` seeds there, their mean and sd, the published mean ± sd and z (NaN
    without a reference); ``summary`` the setting's summary.md (None if no seed has logged)."""

    env_id: str
    setting: str
    overrides: tuple[str, ...]
    seeds_done: int
    seeds: int
    step: int
    n: int
    mean: float
    sd: float
    ref_mean: float
    ref_sd: float
    z: float
    summary: Path | None


@dataclass(frozen=True)
class SweepSummary:
    """What :func:`summarize` wrote: the per-trial and per-setting rows, the markdown of the
    sweep's ``summary.md``, and every file written."""

    trials: list[TrialRow]
    settings: list[SettingRow]
    markdown: str
    files: list[Path]


def _auto_every(trials: Sequence[Trial]) -> int:
    """A grid spacing of about 10-20 rows: the smallest 1/2/5 x 10^k >= total_steps / 20,
    at least the smallest eval_freq."""
    total = max(t.config.total_steps for t in trials)
    floor = min(t.config.eval_freq for t in trials)
    want = max(total / 20, floor)
    k = 10 ** max(0, math.floor(math.log10(want)))
    for m in (1, 2, 5, 10):
        if m * k >= want:
            return int(m * k)
    return int(10 * k)  # (unreachable: 10 * k >= want)


def _status(t: Trial, outcome: SweepOutcome | None, started: dict[str, TrialState]) -> str:
    if outcome is not None:
        if t.trial_id in outcome.errors:
            return "error: " + outcome.errors[t.trial_id].splitlines()[0][:200]
        if t.trial_id in outcome.skipped:
            return "skipped (finished before)"
        res = outcome.results.get(t.trial_id)
        if res is not None:
            if res.get("action") == "resumed":
                return f"resumed at step {int(res.get('started_at', 0))}"
            return {"started": "ran from scratch",
                    "skipped": "skipped (finished before)"}.get(res.get("action"), "ran")
    state = started.get(t.trial_id)
    if state is None:
        return "unknown"
    return {"finished": "finished", "resume": f"unfinished (checkpoint at {state.steps})",
            "new": "not started"}[state.state]


def _fmt(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else ""


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def summarize(trials: Sequence[Trial], sweep_dir: str | os.PathLike,
              outcome: SweepOutcome | None = None, *, reference: str | os.PathLike | None
              = "mbpo", every: int | None = None,
              windows: Sequence[tuple[int, int]] = (), plots: bool = True) -> SweepSummary:
    """Writes the sweep's results from its trial directories and returns them.

    Per (env, setting): ``<env>/<setting>/summary.md`` (:func:`mbpo_fast.compare.compare` of
    its seeds: seed mean ± sd every `every` env steps against the `reference` curve, default
    MBPO's published ones, None for none; `windows` averages) and ``curves.png``
    (:func:`mbpo_fast.compare.plot`). In `sweep_dir`: ``summary.md`` (final evaluation per
    setting, then every trial: status, env steps, final return, wall time) and
    ``trials.csv``. Seeds that have not logged an evaluation yet are left out of the curves.
    `outcome` (from :func:`run_sweep`) only fills the status column. `every` None picks
    about 10-20 grid rows.
    """
    from . import compare

    if not trials:
        raise ValueError("trials: expected at least one trial")
    root = Path(sweep_dir).absolute()
    if reference == "mbpo":
        reference = compare.MBPO_REFERENCE
    if every is None:
        every = _auto_every(trials)
    files: list[Path] = []
    states = {}
    for t in trials:
        try:
            states[t.trial_id] = trial_state(t.logdir, t.config)
        except ValueError:
            pass  # a mismatched checkpoint: reported by the run, shown as "unknown" here

    rows = []
    for t in trials:
        last = _last_progress(t.logdir)
        found = _checkpoint_step(t.logdir)
        rows.append(TrialRow(t.env_id, t.setting, t.seed, _status(t, outcome, states),
                             found[1] if found else 0, t.config.total_steps,
                             last.get("eval_return_mean", math.nan),
                             last.get("eval_return_std", math.nan),
                             int(last.get("env_steps", 0) or 0),
                             last.get("wall_seconds", math.nan), t.logdir))

    settings: list[SettingRow] = []
    groups: dict[tuple[str, str], list[Trial]] = {}
    for t in trials:
        groups.setdefault((t.env_id, t.setting), []).append(t)
    for (env, name), members in groups.items():
        logged = [t.logdir for t in members if (t.logdir / "progress.csv").is_file()
                  and _last_progress(t.logdir)]
        done = sum(1 for t in members if states.get(t.trial_id) is not None
                   and states[t.trial_id].state == "finished")
        if not logged:
            settings.append(SettingRow(env, name, members[0].overrides, done, len(members), 0,
                                       0, *([math.nan] * 5), None))
            continue
        (c,) = compare.compare(logged, reference, every=every, windows=windows)
        group_dir = root / env / name
        text = (f"# MBPO sweep: {env}, setting `{name}`\n\n"
                f"Overrides of this setting: {', '.join(members[0].overrides) or 'none'}; "
                f"seeds with evaluations: {len(logged)} of {len(members)}.\n\n"
                + compare.format_markdown([c]))
        path = group_dir / "summary.md"
        _write_text(path, text)
        files.append(path)
        if plots:
            try:
                files.append(compare.plot(c, group_dir / "curves.png"))
            except ImportError:  # matplotlib is a dependency; a broken one costs the plot only
                pass
        last = c.rows[-1]
        settings.append(SettingRow(env, name, members[0].overrides, done, len(members),
                                   last.step, last.n, last.mean, last.sd, last.ref_mean,
                                   last.ref_sd, last.z, path))

    markdown = _summary_markdown(root, trials, rows, settings, outcome)
    path = root / "summary.md"
    _write_text(path, markdown)
    files.append(path)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["env", "setting", "seed", "status", "env_steps", "total_steps",
                "final_return_mean", "final_return_std", "eval_step", "wall_seconds", "logdir"])
    for r in rows:
        w.writerow([r.env_id, r.setting, r.seed, r.status, r.env_steps, r.total_steps,
                    r.final_return, r.final_return_std, r.eval_step, r.wall_seconds,
                    _rel(r.logdir, root)])
    path = root / "trials.csv"
    _write_text(path, buf.getvalue())
    files.append(path)
    return SweepSummary(rows, settings, markdown, files)


def settings_table(settings: Sequence[SettingRow], root: Path) -> str:
    """Markdown table of the final evaluation of every (env, setting)."""
    out = ["| env | setting | seeds finished | env steps | n | seed mean | sd | "
           "published mean ± sd | z | summary |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for s in settings:
        ref = f"{s.ref_mean:.1f} ± {s.ref_sd:.1f}" if math.isfinite(s.ref_mean) else ""
        link = f"[{_rel(s.summary, root)}]({_rel(s.summary, root)})" if s.summary else ""
        out.append(f"| {s.env_id} | {s.setting} | {s.seeds_done}/{s.seeds} | {s.step or ''} | "
                   f"{s.n} | {_fmt(s.mean)} | {_fmt(s.sd)} | {ref} | {_fmt(s.z, 2)} | {link} |")
    return "\n".join(out)


def trials_table(rows: Sequence[TrialRow]) -> str:
    """Markdown table of every trial: status, env steps, final return, wall time."""
    out = ["| env | setting | seed | status | env steps | final return | wall time |",
           "|---|---|---:|---|---:|---:|---:|"]
    for r in rows:
        ret = (f"{r.final_return:.1f} ± {r.final_return_std:.1f}"
               if math.isfinite(r.final_return) else "")
        if ret and r.eval_step != r.env_steps:
            ret += f" (at {r.eval_step})"
        out.append(f"| {r.env_id} | {r.setting} | {r.seed} | {r.status} | "
                   f"{r.env_steps}/{r.total_steps} | {ret} | {_duration(r.wall_seconds)} |")
    return "\n".join(out)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m{s:02d}s" if hours else f"{m}m{s:02d}s"


def _summary_markdown(root: Path, trials: Sequence[Trial], rows: Sequence[TrialRow],
                      settings: Sequence[SettingRow], outcome: SweepOutcome | None) -> str:
    envs = sorted({t.env_id for t in trials})
    seeds = sorted({t.seed for t in trials})
    out = [f"# MBPO sweep `{root}`", "",
           f"{len(trials)} trials: env {', '.join(envs)}; {len(settings) // len(envs)} "
           f"setting(s); seeds {', '.join(map(str, seeds))}.", ""]
    if outcome is not None and outcome.interrupted:
        out += ["**Interrupted**: run the same command again to resume.", ""]
    out += ["## Final evaluation per setting", "",
            "At the longest seed's last evaluation: n seeds there, their mean and sd "
            "(ddof = 1), the published MBPO mean ± sd and z = (mean − published) / "
            "published sd (see docs/comparing_runs.md).", "",
            settings_table(settings, root), "", "## Trials", "",
            "Final return: the last evaluation (mean ± sd over its episodes); wall time: the "
            "run's training time, over all its resumes.", "", trials_table(rows), ""]
    return "\n".join(out)


def _write_text(path: Path, text: str) -> None:
    from .io import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(text.encode()))


# ====================================================================== command line


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Registers ``mbpo-fast sweep`` on an argparse subparsers object."""
    s = sub.add_parser(
        "sweep", help="seeds and grids of runs on Ray Tune (local or a Ray cluster); "
        "rerun the same command to resume",
        description="Runs every (env, --grid point, seed) as one MBPO run in "
        "<logdir>/<env>/<setting>/seed<k>, scheduled by Ray Tune, then writes per setting a "
        "seed mean ± sd summary against the published curves and a table of every trial. "
        "Running the same command again resumes unfinished trials from their checkpoints and "
        f"skips finished ones. Needs Ray: {INSTALL_HINT}. See docs/sweep.md.")
    s.add_argument("--env", dest="envs", action="append", default=[], metavar="ENV_ID",
                   help="gymnasium id with a preset (MBPOConfig.for_env); repeatable "
                   "(default Pendulum-v1)")
    s.add_argument("--seeds", default="0", help="seeds: '0-4', '0,2,5', '0-2,7' (default 0)")
    s.add_argument("--steps", type=int, default=None,
                   help="total env steps of every trial (default: the preset's)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every trial, repeatable (as in train)")
    s.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="one grid axis, repeatable: every combination of the axes is a "
                   "setting (JSON values keep their commas: rollout_schedule=[20,150,1,15],"
                   "[20,150,1,1])")
    s.add_argument("--logdir", required=True, help="the sweep directory (on a multi-node "
                   "cluster: a filesystem every node and the driver share)")
    s.add_argument("--address", default=None,
                   help="Ray cluster to join: 'auto' or HOST:PORT (default: a local instance)")
    s.add_argument("--num-cpus", type=int, default=None,
                   help="CPUs of the local Ray instance (default: all of this machine)")
    s.add_argument("--cpus-per-trial", type=int, default=1,
                   help="CPUs reserved per trial, also its thread count (default 1)")
    s.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="GPUs per trial, may be fractional (default 0); > 0 also sets "
                   "device=cuda unless --set/--grid set device")
    s.add_argument("--max-failures", type=int, default=0,
                   help="retries of a failed trial, each from its checkpoint (default 0)")
    s.add_argument("--reference", default="mbpo", metavar="CSV",
                   help="published curves for the summary (as in compare; default 'mbpo', "
                   "'none' for none)")
    s.add_argument("--every", type=int, default=None, metavar="STEPS",
                   help="summary grid spacing in env steps (default: about 10-20 rows)")
    s.add_argument("--window", action="append", default=[], metavar="LO:HI",
                   help="also average each seed's evaluations in LO..HI env steps (as in "
                   "compare); repeatable")
    s.add_argument("--quiet", action="store_true", help="no Ray Tune progress output")
    return s


def cli(args: argparse.Namespace) -> int:
    """``mbpo-fast sweep``: plans the trials, runs them on Ray Tune, writes and prints the
    summary. Exit status 0 when every trial is finished, 1 when one failed, 130 when
    interrupted, 2 for bad arguments or no Ray."""
    from . import compare

    windows = [compare.parse_window(w) for w in args.window]
    if args.every is not None and args.every < 1:
        raise ValueError(f"--every must be >= 1 env step, got {args.every}")
    reference = None if args.reference == "none" else args.reference
    if reference not in (None, "mbpo") and not Path(reference).is_file():
        raise FileNotFoundError(f"--reference {reference}: no such file")
    device = "cuda" if args.gpus_per_trial > 0 else None
    trials = plan_trials(args.envs or ["Pendulum-v1"], parse_seeds(args.seeds), args.logdir,
                         sets=args.overrides, grid=args.grid, steps=args.steps, device=device)
    for t in trials:  # a mismatched checkpoint is an error before anything runs
        trial_state(t.logdir, t.config)
    _check_resources(args.address, args.cpus_per_trial, args.gpus_per_trial, args.num_cpus,
                     args.max_failures)
    try:
        _import_tune()  # before anything is written: say at once what to install
    except RayNotInstalledError as exc:
        print(f"mbpo-fast sweep: error: {exc}", file=sys.stderr)
        return 2
    root = Path(args.logdir).absolute()
    _write_text(root / "sweep.json", json.dumps({
        "format": "mbpo_fast.sweep/1", "argv": sys.argv[1:],
        "trials": [{"trial_id": t.trial_id, "env_id": t.env_id, "setting": t.setting,
                    "overrides": list(t.overrides), "seed": t.seed,
                    "logdir": _rel(t.logdir, root)} for t in trials]}, indent=2) + "\n")
    print(f"mbpo-fast sweep: {len(trials)} trial(s) -> {root}", file=sys.stderr)
    outcome = run_sweep(trials, root, address=args.address, cpus_per_trial=args.cpus_per_trial,
                        gpus_per_trial=args.gpus_per_trial, num_cpus=args.num_cpus,
                        max_failures=args.max_failures, verbose=0 if args.quiet else 1)
    summary = summarize(trials, root, outcome, reference=reference, every=args.every,
                        windows=windows)
    print(settings_table(summary.settings, root) + "\n\n" + trials_table(summary.trials))
    print(f"mbpo-fast sweep: wrote {root / 'summary.md'}", file=sys.stderr)
    if outcome.errors:
        print(f"mbpo-fast sweep: {len(outcome.errors)} trial(s) failed (their errors: "
              f"{root / '_ray'}); rerun the same command to retry them", file=sys.stderr)
        return 1
    if outcome.interrupted or any(r.env_steps < r.total_steps for r in summary.trials):
        print("mbpo-fast sweep: interrupted; rerun the same command to resume",
              file=sys.stderr)
        return 130
    return 0
