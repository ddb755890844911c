"""Side-by-side table of runs that differ in one setting (same env, same seed): evaluation
returns on a grid, the mean over a window, and the window means of chosen progress columns.

`mbpo-fast compare` groups runs of one environment as seeds of one configuration; this is
for the other question, "what does a setting change on the same seed" (issue 16's learned
termination and adaptive stop against the built-in termination and the paper's schedule).

    PYTHONPATH=. python benchmarks/compare_variants.py docs/results/hopper-native-s0 \\
        docs/results/hopper-learned-term-s0 docs/results/hopper-adaptive-s0 \\
        --every 5000 --window 10000:30000 \\
        --columns rollout_mean_length rollout_frac_terminated rollout_frac_stopped \\
                  model_pool_size termination_balanced_accuracy

Prints Markdown. A run that has not reached a grid point or the whole window shows "–".
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

#: config keys that name a variant (shown in the header); the rest is expected to match
_VARIANT_KEYS = ("termination", "max_disagreement", "uncertainty_penalty", "rollout_schedule",
                 "trainer", "autocast_bf16")


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "progress.csv", newline="") as f:
        return list(csv.DictReader(f))


def _num(v: str | None) -> float:
    try:
        return float(v) if v not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _fmt(x: float, digits: int) -> str:
    return "–" if not math.isfinite(x) else f"{x:,.{digits}f}"


def table(runs: list[Path], every: int, window: tuple[int, int], columns: list[str]) -> str:
    data = {r: _rows(r) for r in runs}
    cfg = {r: json.loads((r / "config.json").read_text()) for r in runs}
    lo, hi = window
    out = ["| run | variant | seed | last step |", "|---|---|---:|---:|"]
    for r in runs:
        variant = ", ".join(f"{k}={json.dumps(cfg[r][k])}" for k in _VARIANT_KEYS if k in cfg[r])
        last = data[r][-1]["env_steps"] if data[r] else "–"
        out.append(f"| `{r.name}` | {variant} | {cfg[r].get('seed')} | {last} |")
    out += ["", "Evaluation return (mean of the evaluation episodes) at each grid step:", ""]
    top = max((int(float(row["env_steps"])) for rows in data.values() for row in rows), default=0)
    grid = list(range(every, top + 1, every))
    out.append("| env steps | " + " | ".join(f"`{r.name}`" for r in runs) + " |")
    out.append("|---:|" + "---:|" * len(runs))
    for g in grid:
        cells = []
        for r in runs:
            hit = [row for row in data[r] if int(float(row["env_steps"])) == g]
            cells.append(_fmt(_num(hit[0]["eval_return_mean"]) if hit else math.nan, 1))
        out.append(f"| {g:,} | " + " | ".join(cells) + " |")
    out += ["", f"Means over {lo:,} <= env steps <= {hi:,} (a run that has not reached {hi:,}: –):",
            ""]
    names = ["eval_return_mean", *columns]
    out.append("| column | " + " | ".join(f"`{r.name}`" for r in runs) + " |")
    out.append("|---|" + "---:|" * len(runs))
    for c in names:
        cells = []
        for r in runs:
            rows = [row for row in data[r] if lo <= float(row["env_steps"]) <= hi]
            complete = bool(data[r]) and float(data[r][-1]["env_steps"]) >= hi
            vals = [_num(row.get(c)) for row in rows]
            vals = [v for v in vals if math.isfinite(v)]
            mean = sum(vals) / len(vals) if vals and complete else math.nan
            cells.append(_fmt(mean, 1 if abs(mean) >= 100 or not math.isfinite(mean) else 4))
        out.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path,
                    help="run directories (progress.csv, config.json)")
    ap.add_argument("--every", type=int, default=5000, help="grid spacing in env steps")
    ap.add_argument("--window", default="10000:30000", help="LO:HI env steps for the means")
    ap.add_argument("--columns", nargs="*", default=[], help="progress.csv columns to average")
    args = ap.parse_args(argv)
    lo, hi = (int(x) for x in args.window.split(":"))
    for r in args.runs:
        if not (r / "progress.csv").is_file() or not (r / "config.json").is_file():
            ap.error(f"{r}: expected a run directory with progress.csv and config.json")
    print(table(args.runs, args.every, (lo, hi), args.columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
