"""Native calls next to torch work in one process: what a user gets, with and without the
library's OpenMP setting (mbpo_fast/_openmp.py).

Run:  PYTHONPATH=. python benchmarks/bench_interference.py [--rounds 7] [--calls 200]
      PYTHONPATH=. pytest benchmarks/bench_interference.py --benchmark-only -s

Two fresh interpreters, nothing set in the environment by this benchmark:
* **mbpo_fast first** (``import mbpo_fast`` before torch — the CLI, and programs written as
  the docs show): the library sets ``GOMP_SPINCOUNT=20000`` before torch starts;
* **torch first** (``import torch`` before mbpo_fast): libgomp's default spin stays;
* **mbpo_fast first with ``MBPO_FAST_OPENMP_SPIN=0``** (the opt-out): the same import order
  as the first, libgomp's default spin (separates the setting from the import order).

In each, with torch on 2 threads and the native pool on 2 threads, Hopper sizes (ensemble
7 x 4 x 200 with 5 elites, SAC 2 x 256), two native calls are timed alone and right after a
torch op (a [256, 256] @ [256, 256] matmul, the size of a SAC layer), interleaved per round:
``BranchedRollout(...).run`` with 400 starts x 1 step (defaults), and the one-row
``EnsembleDynamics.step``. Reported: medians over rounds of per-round medians, and the ratio
"after torch / alone" (1.0 = no interference). The torch matmul itself is timed too, alone
and right after the native call.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r'''
import json, statistics, sys, time
FIRST = sys.argv[1]
if FIRST == "torch":
    import torch
import mbpo_fast as mf
import numpy as np
import torch
sys.path.insert(0, "benchmarks")
import bench_rollout as br

rounds, calls = int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(2)
mf.set_num_threads(2)
st = br.setup()
rollout = st["rollout"]
model = br.as_dynamics(st["model"])
rng = np.random.default_rng(0)
obs1 = rng.standard_normal((1, 11), dtype=np.float32)
act1 = rng.uniform(-1, 1, (1, 3)).astype(np.float32)
a = torch.randn(256, 256)
w = torch.randn(256, 256)
seed = iter(range(10**9))

def roll():
    rollout.run(st["real"], st["model_pool"], 400, 1, next(seed))

def step():
    model.step(obs1, act1, seed=next(seed))

def mm():
    torch.mm(a, w)

def timed(f):
    t0 = time.perf_counter_ns(); f(); return (time.perf_counter_ns() - t0) / 1e3

for _ in range(50):
    roll(); step(); mm()
res = {k: [] for k in ("roll_alone", "roll_after", "step_alone", "step_after",
                       "mm_alone", "mm_after_native")}
for _ in range(rounds):
    r = {k: [] for k in res}
    for _ in range(calls):
        r["roll_alone"].append(timed(roll))
        r["roll_alone"].append(timed(roll))
        mm(); r["roll_after"].append(timed(roll))
        r["step_alone"].append(timed(step))
        r["step_alone"].append(timed(step))
        mm(); r["step_after"].append(timed(step))
        r["mm_alone"].append(timed(mm))
        r["mm_alone"].append(timed(mm))
        roll(); r["mm_after_native"].append(timed(mm))
    for k in res:
        res[k].append(statistics.median(r[k]))
out = {k: statistics.median(v) for k, v in res.items()}
out["openmp_spin"] = mf.build_info()["openmp_spin"]
print(json.dumps(out))
'''


def run_child(first: str, rounds: int, calls: int, **extra_env: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "MBPO_FAST_OPENMP_SPIN")}
    env.update(extra_env)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", CHILD, first, str(rounds), str(calls)],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: dict[str, dict]) -> str:
    lines = ["| import order | openmp_spin | rollout 400 x 1 alone / after torch.mm (µs) | ratio "
             "| one-row step alone / after (µs) | ratio | torch.mm alone / after native (µs) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['openmp_spin'].split(' (')[0]} | {r['roll_alone']:.0f} / "
            f"{r['roll_after']:.0f} | {r['roll_after'] / r['roll_alone']:.2f} | "
            f"{r['step_alone']:.1f} / {r['step_after']:.1f} | "
            f"{r['step_after'] / r['step_alone']:.2f} | {r['mm_alone']:.0f} / "
            f"{r['mm_after_native']:.0f} |")
    return "\n".join(lines)


def measure(rounds: int, calls: int, repeats: int = 2) -> dict[str, dict]:
    """Each interpreter `repeats` times, alternating, so a slow period hits both; every run
    is reported (its own row)."""
    results: dict[str, dict] = {}
    variants = (("mbpo_fast", "mbpo_fast first", {}), ("torch", "torch first", {}),
                ("mbpo_fast", "mbpo_fast first, MBPO_FAST_OPENMP_SPIN=0",
                 {"MBPO_FAST_OPENMP_SPIN": "0"}))
    for i in range(repeats):
        for first, name, extra in variants:
            results[f"{name} (run {i + 1})"] = run_child(first, rounds, calls, **extra)
    return results


def test_interference(benchmark):
    res = measure(rounds=3, calls=50, repeats=1)
    benchmark.extra_info.update({f"{n}:{k}": v for n, r in res.items() for k, v in r.items()})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print("\n" + table(res))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args()
    print(table(measure(args.rounds, args.calls)))
