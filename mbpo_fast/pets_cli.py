"""The ``mbpo-fast pets`` subcommand (registered by cli.py)::

    mbpo-fast pets --env Pendulum-v1 --episodes 15 --seed 0 --logdir runs/pets-pendulum \\
        --set population=200 --set particles=10
    mbpo-fast pets --resume runs/pets-pendulum              # continue from the latest checkpoint
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["add_pets_parser", "run_pets"]


def add_pets_parser(sub: Any, threads_arg: Any) -> None:
    """Adds the ``pets`` subparser to the ``mbpo-fast`` subparsers `sub`."""
    p = sub.add_parser("pets", help="PETS: MPC with the learned ensemble (CEM, TS-inf)",
                       description="Collects each episode with MPC after refitting the ensemble "
                       "on all real data (docs/planning.md). Same outputs as `train`: "
                       "config.json, progress.csv (one row per episode), learning_curve.png, "
                       "checkpoints/.")
    p.add_argument("--env", default="Pendulum-v1", help="gymnasium id (default Pendulum-v1)")
    p.add_argument("--episodes", type=int, default=None,
                   help="total episodes (default: PETSConfig.for_env)")
    p.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    p.add_argument("--logdir", default=None,
                   help="output directory (default runs/pets-<env>-<seed>-<timestamp>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a PETSConfig field, repeatable (e.g. --set population=200)")
    p.add_argument("--resume", default=None, metavar="LOGDIR",
                   help="continue the run in LOGDIR from its latest checkpoint (--episodes "
                   "extends it; --env/--seed/--set are ignored)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    threads_arg(p)


def run_pets(args: argparse.Namespace) -> int:
    from .pets import PETS, PETSConfig

    if args.resume is not None:
        algo = PETS.resume(args.resume, quiet=args.quiet, episodes=args.episodes)
        print(f"mbpo-fast pets: resuming {algo.logdir} at episode {algo.episode} of "
              f"{algo.config.episodes}", file=sys.stderr)
    else:
        cfg = PETSConfig.for_env(args.env, seed=args.seed)
        if args.episodes is not None:
            cfg.episodes = args.episodes
        cfg = cfg.with_overrides(args.overrides)
        algo = PETS(cfg, logdir=args.logdir, quiet=args.quiet)
        print(f"mbpo-fast pets: {cfg.env_id} seed {cfg.seed}, {cfg.episodes} episodes -> "
              f"{algo.logdir}", file=sys.stderr)
    try:
        result = algo.train()
    finally:
        algo.close()
    print(json.dumps(result))
    return 0
