"""The ``mbpo-fast`` command line.

::

    mbpo-fast train                                   # Pendulum-v1, quick defaults, a few minutes
    mbpo-fast train --env Hopper-v5 --steps 125000 --seed 1 --logdir runs/hopper \\
        --set num_sac_updates=10 --set model_max_epochs=50
    mbpo-fast resume runs/hopper                      # continue from the latest checkpoint
    mbpo-fast resume runs/hopper --set trainer=torch  # ... on the torch training backend
    mbpo-fast eval runs/hopper --episodes 10          # deterministic return of the saved policy
    mbpo-fast bench                                   # ms per op of the hot paths, and the backend
    mbpo-fast compare runs/hopper-s* --reference mbpo_official_curves.csv --out hopper.png \\
        --window 115000:125000                        # seeds vs the published curve
    mbpo-fast sweep --env Hopper-v5 --seeds 0-4 --logdir sweeps/hopper   # Ray Tune; rerun resumes
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from . import sweep as _sweep

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mbpo-fast", description="Model-Based Policy Optimization "
                                "with native hot paths.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a new run")
    add_new_run_args(t, env_help="gymnasium id; its preset from MBPOConfig.for_env (default "
                     "Pendulum-v1)", length="--steps", length_help="total env steps (default: "
                     "preset)", logdir_help="output directory (default "
                     "runs/<env>-<seed>-<timestamp>)", set_help="override a config field, "
                     "repeatable (e.g. --set num_sac_updates=10)")
    add_progress_args(t)

    r = sub.add_parser("resume", help="continue a run from its latest checkpoint")
    r.add_argument("logdir")
    r.add_argument("--steps", type=int, default=None,
                   help="new total env steps (default: the run's own)")
    _set_arg(r, "change a field that does not shape the saved state, repeatable (e.g. "
             "--set trainer=torch to continue on the other training backend)")
    add_progress_args(r)

    e = sub.add_parser("eval", help="evaluate the policy of a run's latest checkpoint")
    e.add_argument("logdir")
    e.add_argument("--episodes", type=int, default=10)
    e.add_argument("--seed", type=int, default=None, help="evaluation seed (default: run seed)")
    _threads_arg(e)

    b = sub.add_parser("bench", help="micro-benchmark of the hot paths (ms per op)")
    b.add_argument("--obs-dim", type=int, default=11)
    b.add_argument("--act-dim", type=int, default=3)
    b.add_argument("--rows", type=int, default=4096, help="rows of the ensemble/rollout step")
    b.add_argument("--pool-rows", type=int, default=100_000,
                   help="rows in the real pool (the model pool holds 4x as many)")
    b.add_argument("--repeat", type=int, default=20)
    _threads_arg(b)

    c = sub.add_parser("compare", help="runs (grouped by env, several seeds) against a "
                       "published curve: markdown tables, and PNGs with --out",
                       description="Groups runs by environment, interpolates each run and the "
                       "reference onto one grid of env steps (random phase included, never "
                       "extrapolated) and prints per grid point: seeds n, seed mean, sd, "
                       "published mean ± sd, z. See docs/comparing_runs.md.")
    c.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run directories (config.json + progress.csv)")
    c.add_argument("--reference", default="mbpo", metavar="CSV",
                   help="published curves, columns env,step,return_mean,return_std; default "
                   "'mbpo': MBPO's published curves shipped with the package "
                   "(mbpo_fast/data/mbpo_official_curves.csv); 'none': no reference columns")
    c.add_argument("--out", default=None, metavar="PNG",
                   help="write a plot: this file for one environment, <stem>-<env>.png for "
                   "several, <dir>/<env>.png for an existing directory or a path ending in /")
    c.add_argument("--every", type=int, default=10_000, metavar="STEPS",
                   help="table grid spacing in env steps (default 10000)")
    c.add_argument("--window", action="append", default=[], metavar="LO:HI",
                   help="also average each seed's evaluations with LO <= env steps <= HI "
                   "(e.g. 115000:125000); repeatable")
    from .pets_cli import add_pets_parser

    add_pets_parser(sub)
    _sweep.add_parser(sub)
    return p


def _threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch and the native kernels (default: torch's choice; "
                   "on a busy machine 1 avoids oversubscription)")


def _set_arg(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=help_text)


# ------------------------------------------------------- shared by train/resume and pets
def add_new_run_args(p: argparse.ArgumentParser, *, env_help: str, length: str,
                     length_help: str, logdir_help: str, set_help: str) -> None:
    """--env, the run length option `length` (e.g. "--steps"), --seed, --logdir and --set: the
    arguments of a command that starts a run (read back by :func:`new_config`)."""
    p.add_argument("--env", default="Pendulum-v1", help=env_help)
    p.add_argument(length, type=int, default=None, help=length_help)
    p.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    p.add_argument("--logdir", default=None, help=logdir_help)
    _set_arg(p, set_help)


def add_progress_args(p: argparse.ArgumentParser) -> None:
    """--quiet and --threads, last on every command that trains."""
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _threads_arg(p)


def new_config(config_cls: Any, args: argparse.Namespace, length_field: str,
               length: int | None) -> Any:
    """``config_cls.for_env(--env, seed=--seed)``, its `length_field` set to `length` when
    given, then the --set overrides (ValueError for a bad one)."""
    cfg = config_cls.for_env(args.env, seed=args.seed)
    if length is not None:
        setattr(cfg, length_field, length)
    return cfg.with_overrides(args.overrides)


def train_to_end(algo: Any, start: str) -> int:
    """Prints `start` (where the run goes, or where it resumes) to stderr, trains `algo` to
    its end, closes it even on an error, and prints the final result as JSON."""
    print(start, file=sys.stderr)
    try:
        result = algo.train()
    finally:
        algo.close()
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mbpo-fast`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    if getattr(args, "threads", None) is not None:
        import torch

        import mbpo_fast

        if args.threads < 1:
            print("mbpo-fast: error: --threads must be >= 1", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
        mbpo_fast.set_num_threads(args.threads)
    from .pets_cli import run_pets

    try:
        return {"train": _train, "resume": _resume, "eval": _eval, "bench": _bench,
                "compare": _compare, "pets": run_pets, "sweep": _sweep.cli}[args.command](args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"mbpo-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace) -> int:
    from .config import MBPOConfig
    from .mbpo import MBPO

    cfg = new_config(MBPOConfig, args, "total_steps", args.steps)
    algo = MBPO(cfg, logdir=args.logdir, quiet=args.quiet)
    return train_to_end(algo, f"mbpo-fast: {cfg.env_id} seed {cfg.seed}, {cfg.total_steps} "
                        f"steps -> {algo.logdir} ({_trainers(algo)})")


def _resume(args: argparse.Namespace) -> int:
    from .mbpo import MBPO

    algo = MBPO.resume(args.logdir, quiet=args.quiet, total_steps=args.steps,
                       overrides=args.overrides)
    return train_to_end(algo, f"mbpo-fast: resuming {algo.logdir} at step {algo.env_steps} of "
                        f"{algo.config.total_steps} ({_trainers(algo)})")


def _trainers(algo: Any) -> str:
    """Which training backends run (never a silent fallback: the user sees it at the start)."""
    bf16 = ", bf16" if algo.config.autocast_bf16 else ""
    return f"SAC trainer {algo.agent.trainer}, model trainer {algo.model.trainer}{bf16}"


def _eval(args: argparse.Namespace) -> int:
    from .mbpo import evaluate_checkpoint

    mean, std, returns = evaluate_checkpoint(args.logdir, args.episodes, seed=args.seed)
    print(json.dumps({"eval_return_mean": mean, "eval_return_std": std,
                      "episodes": len(returns), "returns": returns}))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from . import compare

    windows = [compare.parse_window(w) for w in args.window]
    if args.every < 1:
        raise ValueError(f"--every must be >= 1 env step, got {args.every}")
    reference = {"mbpo": compare.MBPO_REFERENCE, "none": None}.get(args.reference,
                                                                   args.reference)
    result = compare.compare(args.runs, reference, every=args.every, windows=windows)
    print(compare.format_markdown(result), end="")
    if args.out is not None:
        paths = compare.plot_paths(args.out, [c.env_id for c in result])
        for c in result:
            try:
                written = compare.plot(c, paths[c.env_id])
            except (ImportError, OSError) as exc:  # no matplotlib, unwritable --out
                print(f"mbpo-fast compare: error: cannot write {paths[c.env_id]}: {exc}",
                      file=sys.stderr)
                return 2
            print(f"mbpo-fast compare: wrote {written}", file=sys.stderr)
    return 0


def _time_ms(fn: Any, repeat: int) -> float:
    fn()  # warm-up (allocations, JIT)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return 1e3 * times[len(times) // 2]


def _bench(args: argparse.Namespace) -> int:
    """Median ms per op of the training loop's hot paths at Hopper-like sizes."""
    import numpy as np
    import torch

    import mbpo_fast as mf

    from .ensemble import EnsembleDynamics
    from .pool import ReplayPool, sample_mixed
    from .rollout import BranchedRollout
    from .sac import SAC

    o, a, n, rep = args.obs_dim, args.act_dim, args.rows, args.repeat
    rng = np.random.default_rng(0)

    def fill(pool: Any, rows: int) -> None:
        pool.add_batch(rng.standard_normal((rows, o), dtype=np.float32),
                       rng.uniform(-1, 1, (rows, a)).astype(np.float32),
                       rng.standard_normal(rows, dtype=np.float32),
                       rng.standard_normal((rows, o), dtype=np.float32),
                       rng.random(rows) < 0.01)

    pr = args.pool_rows
    real, model_pool = ReplayPool(pr, o, a, seed=0), ReplayPool(4 * pr, o, a, seed=1)
    fill(real, pr)
    fill(model_pool, 4 * pr)
    model = EnsembleDynamics(o, a, seed=0)
    agent = SAC(o, a, -np.ones(a), np.ones(a), seed=0)
    x = real.sample_obs(n)
    u = rng.uniform(-1, 1, (n, a)).astype(np.float32)
    batch = sample_mixed(real, model_pool, 256, 0.05)
    rollout = BranchedRollout(model, agent, lambda s, act, s2: np.zeros(len(s), dtype=bool))
    scratch = ReplayPool(n * 2, o, a, seed=2)
    results = {
        "backend": mf.backend(),
        "torch_threads": torch.get_num_threads(),
        "pool.sample 256 rows (ms)": _time_ms(lambda: real.sample(256), rep),
        "sample_mixed 20x256 rows (ms)": _time_ms(
            lambda: sample_mixed(real, model_pool, 256, 0.05, num_batches=20), rep),
        f"ensemble.step {n} rows (ms)": _time_ms(lambda: model.step(x, u, seed=1), rep),
        f"sac.act {n} rows (ms)": _time_ms(lambda: agent.act(x), rep),
        "sac.update batch 256 (ms)": _time_ms(lambda: agent.update(batch), rep),
        f"rollout step {n} rows (ms)": _time_ms(
            lambda: rollout.run(real, scratch, n, 1, seed=3), rep),
    }
    width = max(len(k) for k in results)
    for k, v in results.items():
        print(f"{k:<{width}}  {v:.3f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
