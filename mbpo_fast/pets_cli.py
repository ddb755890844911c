"""The ``mbpo-fast pets`` subcommand (registered by cli.py)::

    mbpo-fast pets --env Pendulum-v1 --episodes 15 --seed 0 --logdir runs/pets-pendulum \\
        --set population=200 --set particles=10
    mbpo-fast pets --resume runs/pets-pendulum              # continue from the latest checkpoint
"""

from __future__ import annotations

import argparse
from typing import Any

from .cli import add_new_run_args, add_progress_args, new_config, train_to_end

__all__ = ["add_pets_parser", "run_pets"]


def add_pets_parser(sub: Any) -> None:
    """Adds the ``pets`` subparser to the ``mbpo-fast`` subparsers `sub`."""
    p = sub.add_parser("pets", help="PETS: MPC with the learned ensemble (CEM, TS-inf)",
                       description="Collects each episode with MPC after refitting the ensemble "
                       "on all real data (docs/planning.md). Same outputs as `train`: "
                       "config.json, progress.csv (one row per episode), learning_curve.png, "
                       "checkpoints/.")
    add_new_run_args(p, env_help="gymnasium id (default Pendulum-v1)", length="--episodes",
                     length_help="total episodes (default: PETSConfig.for_env)",
                     logdir_help="output directory (default "
                     "runs/pets-<env>-<seed>-<timestamp>)", set_help="override a PETSConfig "
                     "field, repeatable (e.g. --set population=200)")
    p.add_argument("--resume", default=None, metavar="LOGDIR",
                   help="continue the run in LOGDIR from its latest checkpoint (--episodes "
                   "extends it; --env/--seed/--set are ignored)")
    add_progress_args(p)


def run_pets(args: argparse.Namespace) -> int:
    from .pets import PETS, PETSConfig

    if args.resume is not None:
        algo = PETS.resume(args.resume, quiet=args.quiet, episodes=args.episodes)
        return train_to_end(algo, f"mbpo-fast pets: resuming {algo.logdir} at episode "
                            f"{algo.episode} of {algo.config.episodes}")
    cfg = new_config(PETSConfig, args, "episodes", args.episodes)
    algo = PETS(cfg, logdir=args.logdir, quiet=args.quiet)
    return train_to_end(algo, f"mbpo-fast pets: {cfg.env_id} seed {cfg.seed}, {cfg.episodes} "
                        f"episodes -> {algo.logdir}")
