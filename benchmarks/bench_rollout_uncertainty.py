"""What the uncertainty-aware rollout features cost against the plain rollout (issue 16).

Run:  PYTHONPATH=. python benchmarks/bench_rollout_uncertainty.py [--reps 5] [--horizon 5]

Sizes as benchmarks/bench_rollout.py (Hopper: obs 11, act 3, 7 x 4 x 200 SiLU ensemble with 5
elites, SAC actor 2 x 256). Variants, each ``mf.BranchedRollout(...).run(real, pool, n, h)``
with the library's defaults otherwise (the disagreement statistic on, as a user gets it;
``--statistic-off`` sets ``disagreement_rows=0`` in every variant, so only the features differ):
  plain    : both features off (today's code path: one elite per row)
  stop     : max_disagreement="q0.9" (every elite once per alive row)
  penalty  : uncertainty_penalty=1.0
  both     : "q0.9" and penalty 1.0
The variants are timed interleaved (plain, stop, penalty, both, plain, ...) in one process;
medians over the repetitions are reported, with the time per stepped row (the stop rule
removes rows, so a rollout with it steps fewer rows) and the ratio to plain, plus the matmul
canary GFLOP/s before and after (DESIGN §7: discard runs where it dropped).
"""

from __future__ import annotations

import mbpo_fast  # noqa: F401  (first: sets the OpenMP spin, as in a user's program)

# isort: split

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import mbpo_fast as mf  # noqa: E402
from mbpo_fast.sac import SAC  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _canary import canary_gflops  # noqa: E402
from bench_rollout import AD, OD, as_dynamics, hopper_states, make_model  # noqa: E402

VARIANTS = {
    "plain": {},
    "stop": {"max_disagreement": "q0.9"},
    "penalty": {"uncertainty_penalty": 1.0},
    "both": {"max_disagreement": "q0.9", "uncertainty_penalty": 1.0},
}


def measure(num_starts: int, horizon: int, reps: int, statistic: bool = True) -> list[dict]:
    rng = np.random.default_rng(0)
    model = as_dynamics(make_model(0))
    agent = SAC(OD, AD, -np.ones(AD), np.ones(AD), hidden_size=256, num_layers=2, seed=0)
    real = mf.ReplayPool(200_000, OD, AD, seed=1)
    s = hopper_states(rng, 200_000)
    real.add_batch(s, rng.uniform(-1, 1, (200_000, AD)).astype(np.float32),
                   np.zeros(200_000, np.float32), s, np.zeros(200_000, bool))
    pool = mf.ReplayPool(max(4 * num_starts * horizon, 1000), OD, AD)
    extra = {} if statistic else {"disagreement_rows": 0}
    rollouts = {k: mf.BranchedRollout(model, agent, "Hopper-v5", engine="native", **extra, **kw)
                for k, kw in VARIANTS.items()}
    for r in rollouts.values():  # warm-up (allocations, thread pool)
        r.run(real, pool, num_starts, horizon, seed=0)
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    stepped: dict[str, int] = {}
    last: dict[str, mf.RolloutStats] = {}
    for rep in range(reps):
        for k, r in rollouts.items():
            st = r.run(real, pool, num_starts, horizon, seed=rep + 1)
            times[k].append(st.seconds)
            # rows the step ran on: stored + stopped + dropped
            stepped[k] = int(round(st.rows_added + st.frac_stopped * num_starts)) + st.nonfinite
            last[k] = st
    base = statistics.median(times["plain"]) / stepped["plain"]
    out = []
    for k in VARIANTS:
        med = statistics.median(times[k])
        out.append(dict(variant=k, num_starts=num_starts, horizon=horizon, ms=1e3 * med,
                        us_per_row=1e6 * med / stepped[k],
                        ratio_per_row=(med / stepped[k]) / base,
                        ratio_call=med / statistics.median(times["plain"]),
                        mean_length=last[k].mean_length, frac_stopped=last[k].frac_stopped,
                        mean_penalty=last[k].mean_penalty))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--horizon", type=int, default=5)
    ap.add_argument("--starts", type=int, nargs="+", default=[400, 100_000])
    ap.add_argument("--statistic-off", action="store_true",
                    help="disagreement_rows=0 in every variant (not the default)")
    args = ap.parse_args()
    before = canary_gflops()
    rows = [r for n in args.starts
            for r in measure(n, args.horizon, args.reps, statistic=not args.statistic_off)]
    after = canary_gflops()
    print(f"matmul canary: {before:.0f} GFLOP/s before, {after:.0f} after; disagreement "
          f"statistic {'off' if args.statistic_off else 'on (default)'}")
    print("| starts | h | variant | median ms/call | us per stepped row | x plain (per row) "
          "| x plain (per call) | mean length | frac stopped | mean penalty |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['num_starts']} | {r['horizon']} | {r['variant']} | {r['ms']:.1f} | "
              f"{r['us_per_row']:.2f} | {r['ratio_per_row']:.2f} | {r['ratio_call']:.2f} | "
              f"{r['mean_length']:.2f} | {r['frac_stopped']:.3f} | {r['mean_penalty']:.4f} |")


if __name__ == "__main__":
    main()
