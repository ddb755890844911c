"""Ensemble::step from C++ beside EnsembleDynamics.step from Python, same file (Hopper sizes).

Sizes: obs 11, act 3, E = 7 members, 5 elites, 4 x 200 SiLU, float32 (255.2 kFLOP per row
for the chosen member). The C++ side is benchmarks/cpp/bench_step.cpp (built with the C++
tests: ``build/<dir>/bench_step``), which loads the file with ``mbpo_fast::Ensemble::load`` and
times each call alone (steady_clock). The Python side times ``EnsembleDynamics.load(file)
.step(obs, act, seed=i)`` on the active backend (native), one call per sample
(perf_counter_ns): the default call (new output arrays), and beside it the same call into
preallocated outputs (``out=(next_obs, rew)``, what a control loop that allocates nothing
uses; the C++ side writes into preallocated buffers too). Every call uses a new seed. The two
alternate in rounds (C++ then Python, DESIGN §7); the reported value of each is the median
over rounds of the per-round medians, and the ratio is Python / C++ per round, medianed. A
torch matmul canary runs before and after (``../shared/tools/matmul_canary.py`` rates;
distrust a run where it dropped).

Run (prints a Markdown table; --out also writes it):
    PYTHONPATH=. python benchmarks/bench_cpp_step.py [--exe build/dev/bench_step] [--out FILE]
"""

from __future__ import annotations

# First, as in a user's program: importing mbpo_fast sets how long torch's idle OpenMP
# workers spin before torch starts (mbpo_fast/_openmp.py). No tuning variable is set here.
import mbpo_fast  # noqa: F401

# isort: split

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _canary import canary_gflops  # same canary as the other benchmarks

import mbpo_fast as mf

OBS, ACT, E, K, HIDDEN, LAYERS = 11, 3, 7, 5, 200, 4
WIDTHS = [OBS + ACT] + [HIDDEN] * LAYERS + [2 * (OBS + 1)]
FLOP_PER_ROW = 2 * sum(WIDTHS[i] * WIDTHS[i + 1] for i in range(len(WIDTHS) - 1))
BATCHES = (1, 32)
REPO = Path(__file__).resolve().parents[1]


def find_exe() -> Path:
    for d in ("build/dev", "build/cpp", "build/py"):
        exe = REPO / d / "bench_step"
        if exe.is_file():
            return exe
    raise SystemExit("bench_step not found under build/dev, build/cpp or build/py: build the C++ "
                     "tests first (cmake -S . -B build/cpp -DMBPO_FAST_PYTHON=OFF && cmake --build "
                     "build/cpp) or pass --exe")


def cpp_medians(exe: Path, model_path: Path, reps: int) -> dict[int, float]:
    out = subprocess.run([str(exe), str(model_path), "--batch", ",".join(map(str, BATCHES)),
                          "--reps", str(reps), "--warmup", str(max(reps // 10, 100))],
                         capture_output=True, text=True, check=True, timeout=600)
    return {r["batch"]: r["median_us"] for r in map(json.loads, out.stdout.splitlines())}


def python_median(model: mf.EnsembleDynamics, obs: np.ndarray, act: np.ndarray, reps: int,
                  seed0: int, out: tuple | None = None) -> float:
    """Median µs of ``model.step(obs, act, seed=...)`` (with ``out=out`` when given)."""
    for i in range(max(reps // 10, 100)):
        model.step(obs, act, seed=seed0 + i, out=out)
    samples = np.empty(reps)
    for i in range(reps):
        t0 = time.perf_counter_ns()
        model.step(obs, act, seed=seed0 + i, out=out)
        samples[i] = time.perf_counter_ns() - t0
    return float(np.median(samples)) / 1e3


def main() -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exe", type=Path, default=None, help="bench_step binary")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=3000, help="calls per batch size per round")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = ap.parse_args()
    exe = args.exe or find_exe()
    torch.set_num_threads(2)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hopper_model.safetensors"
        mf.EnsembleDynamics(OBS, ACT, ensemble_size=E, num_elites=K, hidden_size=HIDDEN,
                            num_layers=LAYERS, seed=0).save(path)
        model = mf.EnsembleDynamics.load(path)
        rng = np.random.default_rng(1)
        inputs = {b: (rng.standard_normal((b, OBS), dtype=np.float32),
                      rng.standard_normal((b, ACT), dtype=np.float32)) for b in BATCHES}
        canary_before = canary_gflops()
        outs = {b: (np.empty((b, OBS), np.float32), np.empty(b, np.float32)) for b in BATCHES}
        cpp: dict[int, list[float]] = {b: [] for b in BATCHES}
        py: dict[int, list[float]] = {b: [] for b in BATCHES}
        py_out: dict[int, list[float]] = {b: [] for b in BATCHES}
        for r in range(args.rounds):
            for b, t in cpp_medians(exe, path, args.reps).items():
                cpp[b].append(t)
            for b in BATCHES:
                py[b].append(python_median(model, *inputs[b], args.reps, seed0=r * args.reps))
                py_out[b].append(python_median(model, *inputs[b], args.reps, seed0=r * args.reps,
                                               out=outs[b]))
        canary_after = canary_gflops()

    lines = [
        f"Backend: {mf.backend()}; rounds {args.rounds} x {args.reps} calls per batch size; "
        f"matmul canary {canary_before:.0f} GFLOP/s before, {canary_after:.0f} after.",
        "",
        "| B | C++ Ensemble::step | Python EnsembleDynamics.step | Python / C++ | "
        "Python step(out=) | out= / C++ | C++ GFLOP/s | C++ round medians (µs) |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]

    def ratio(py_times: list[float], cpp_times: list[float]) -> float:
        return statistics.median(p / c for p, c in zip(py_times, cpp_times, strict=True))

    for b in BATCHES:
        c, p, po = (statistics.median(t[b]) for t in (cpp, py, py_out))
        spread = ", ".join(f"{t:.1f}" for t in cpp[b])
        lines.append(f"| {b} | {c:.2f} µs | {p:.2f} µs | {ratio(py[b], cpp[b]):.2f}× | "
                     f"{po:.2f} µs | {ratio(py_out[b], cpp[b]):.2f}× | "
                     f"{b * FLOP_PER_ROW / (c * 1e-6) / 1e9:.1f} | {spread} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return table


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
