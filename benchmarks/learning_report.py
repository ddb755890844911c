"""Summarizes MBPO training runs: learning curve points and wall-clock time per phase.

Usage::

    python benchmarks/learning_report.py RUN_DIR [RUN_DIR ...] [--threshold ENV=VALUE ...]
    python benchmarks/learning_report.py compare RUN_DIR [RUN_DIR ...] [--reference CSV] \\
        [--out PNG] [--every 10000] [--window LO:HI]

(from the repository root with ``PYTHONPATH=.`` unless mbpo_fast is installed). The second
form is ``mbpo-fast compare`` (mbpo_fast/compare.py): seeds grouped by environment against
a published curve; see docs/comparing_runs.md.

For each run directory written by ``mbpo-fast train`` it reads ``progress.csv`` and prints a
markdown table of the evaluations (env steps, eval return mean ± std, model holdout MSE,
rollout length) and one of the time split by phase (env, model training, rollouts, SAC
updates, evaluation; cumulative seconds from the last row) with env steps per wall-clock
hour. ``--threshold InvertedPendulum-v5=1000`` also prints the first evaluation at or above
that return. Used to produce the "Learning results" section of the README.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

PHASES = ("env", "model", "rollout", "sac", "eval")


def load(run: Path) -> tuple[dict, list[dict[str, float]]]:
    config = json.loads((run / "config.json").read_text())
    with open(run / "progress.csv", newline="") as f:
        rows = [{k: float(v) if v not in ("", None) else float("nan") for k, v in r.items()}
                for r in csv.DictReader(f)]
    if not rows:
        raise SystemExit(f"{run}: progress.csv has no rows yet")
    return config, rows


def report(run: Path, thresholds: dict[str, float]) -> str:
    config, rows = load(run)
    env = config["env_id"]
    out = [f"### {env} (seed {config['seed']}, `{run}`)", "",
           "| env steps | eval return | model holdout MSE | rollout length | model pool |",
           "|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['env_steps']:.0f} | {r['eval_return_mean']:.1f} ± "
                   f"{r['eval_return_std']:.1f} | {r['model_holdout_mse']:.4f} | "
                   f"{r['rollout_length']:.0f} | {r['model_pool_size']:.0f} |")
    if env in thresholds:
        hit = next((r for r in rows if r["eval_return_mean"] >= thresholds[env]), None)
        out += ["", f"First evaluation at or above {thresholds[env]:g}: "
                + (f"{hit['env_steps']:.0f} env steps" if hit else "not reached")]
    last = rows[-1]
    wall = last["wall_seconds"]
    steps = last["env_steps"]
    random_steps = config.get("init_random_steps", 0)
    # wall clock at the end of the random phase: the evaluation row at that step, if any
    start = next((r["wall_seconds"] for r in rows if r["env_steps"] == random_steps), 0.0)
    learning = max(steps - random_steps, 0)
    out += ["", "| phase | seconds | share |", "|---|---:|---:|"]
    for p in PHASES:
        s = last[f"seconds_{p}"]
        out.append(f"| {p} | {s:.0f} | {100 * s / wall:.1f} % |")
    other = wall - sum(last[f"seconds_{p}"] for p in PHASES)
    out.append(f"| other (logging, checkpoints) | {other:.0f} | {100 * other / wall:.1f} % |")
    out.append(f"| **total** | {wall:.0f} | |")
    out += ["", f"{steps:.0f} env steps in {wall / 3600:.2f} h: {3600 * steps / wall:.0f} env "
            f"steps per hour overall; after the {random_steps} random steps, "
            f"{3600 * learning / max(wall - start, 1e-9):.0f} per hour."]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Prints the per-run report; ``compare ...`` hands over to ``mbpo-fast compare``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["compare"]:
        from mbpo_fast.cli import main as cli_main

        return cli_main(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--threshold", action="append", default=[],
                        help="ENV=VALUE: report the first evaluation reaching VALUE")
    args = parser.parse_args(argv)
    thresholds = {}
    for item in args.threshold:
        env, _, value = item.partition("=")
        thresholds[env] = float(value)
    print("\n\n".join(report(run, thresholds) for run in args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
