"""Ensemble training speed: one epoch of the native trainer (float32, bf16) against the torch
trainer, the two backends of EnsembleDynamics.fit (mbpo_fast/ensemble_trainer.py).

Hopper sizes: obs 11, act 3, 100,000 training rows, E = 7 members of 4 x 200 SiLU, batch 256,
Adam 1e-3 with MBPO's per-layer weight decay, 2 threads (mbpo_fast.set_num_threads(2) and
torch.set_num_threads(2)). One "epoch" is the trainer's hot path alone: every member's
bootstrap rows in shuffled 256-row batches, forward, Gaussian NLL with the soft logvar bounds,
backward and one Adam step per batch (the fit's per-epoch holdout evaluation and the per-fit
split/normalizer are not included).

* torch: ``TorchEnsembleTrainer.train_epoch`` -- per batch one gather, batched [E, in, out]
  baddbmm layers, autograd, fused torch.optim.Adam.
* native / native bf16: ``NativeEnsembleTrainer.train_epoch`` -- the whole epoch in one
  GIL-free C++ call on the same torch parameters and Adam state (bf16: hidden-layer matmul
  inputs rounded to bf16, float32 accumulation).

The three run interleaved (torch, native, native bf16, torch, ...) in one process on
separate models with the same data and index order; we report medians, ratios against torch,
effective GFLOP/s (matmul FLOPs of forward, weight and input gradients), and the matmul canary
before and after (distrust a run where it dropped). Library defaults only: no tuning
variables.

    PYTHONPATH=. python benchmarks/bench_ensemble_fit.py [--rows 100000] [--reps 3] [--write]
"""

from __future__ import annotations

# First, as in a user's program: importing mbpo_fast sets how long torch's idle OpenMP
# workers spin before torch starts (mbpo_fast/_openmp.py). No tuning variable is set here.
import mbpo_fast  # noqa: F401

# isort: split

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import mbpo_fast as mf
from mbpo_fast.ensemble import EnsembleDynamics

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _canary import canary_gflops  # noqa: E402

OBS, ACT, E, HIDDEN, LAYERS, BATCH, THREADS = 11, 3, 7, 200, 4, 256, 2
_RESULTS = Path(__file__).resolve().parent / "RESULTS_ensemble_fit.md"


def epoch_flops(rows: int) -> float:
    """Matmul FLOPs of one training epoch: forward, weight gradients, input gradients (not of
    layer 0), for every member on `rows` bootstrap rows."""
    widths = [OBS + ACT] + [HIDDEN] * LAYERS + [2 * (OBS + 1)]
    macs = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))
    return 2.0 * E * rows * (3 * macs - widths[0] * widths[1])


def make_inputs(rows: int, seed: int = 0):
    """Normalized inputs x [rows, 14], targets y [rows, 12] of a smooth made-up system, and
    one shuffled bootstrap order per member idx [E, rows]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, OBS + ACT, generator=g)
    a = torch.randn(OBS + ACT, OBS + 1, generator=g) / 4
    y = 0.1 * torch.tanh(x @ a) + 0.01 * torch.randn(rows, OBS + 1, generator=g)
    idx = torch.randint(rows, (E, rows), generator=g)
    return x.contiguous(), y.contiguous(), idx


def make_trainer(kind: str):
    trainer = "torch" if kind == "torch" else "native"
    model = EnsembleDynamics(
        OBS,
        ACT,
        ensemble_size=E,
        num_elites=5,
        hidden_size=HIDDEN,
        num_layers=LAYERS,
        seed=0,
        trainer=trainer,
        autocast_bf16=kind == "native_bf16",
    )
    backend = model._trainer_backend()
    opt = model._ensure_optimizer()
    return lambda x, y, idx: backend.train_epoch(opt, x, y, idx, BATCH)


def run(rows: int = 100_000, reps: int = 3) -> dict:
    mf.set_num_threads(THREADS)
    torch.set_num_threads(THREADS)
    x, y, idx = make_inputs(rows)
    kinds = ["torch", "native", "native_bf16"]
    epoch = {k: make_trainer(k) for k in kinds}
    wx, wy, widx = make_inputs(2048, seed=1)  # warm-up: allocator, Adam state, thread pool
    for k in kinds:
        epoch[k](wx, wy, widx)
    canary_before = canary_gflops()
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(reps):
        for k in kinds:
            t0 = time.perf_counter()
            epoch[k](x, y, idx)
            times[k].append(time.perf_counter() - t0)
    canary_after = canary_gflops()
    flops = epoch_flops(rows)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "rows": rows,
        "reps": reps,
        "median_s": med,
        "all_s": times,
        "ratio": {k: med["torch"] / med[k] for k in kinds},
        "gflops": {k: flops / med[k] / 1e9 for k in kinds},
        "canary_before": canary_before,
        "canary_after": canary_after,
    }


def format_table(res: dict) -> str:
    names = {
        "torch": "torch trainer (float32)",
        "native": "native float32",
        "native_bf16": "native bf16",
    }
    lines = [
        f"| {res['rows']:,} rows, E={E}, {LAYERS}x{HIDDEN}, batch {BATCH}, {THREADS} threads "
        f"| s / epoch (median of {res['reps']}) | vs torch | effective GFLOP/s |",
        "|---|---|---|---|",
    ]
    for k, name in names.items():
        lines.append(
            f"| {name} | {res['median_s'][k]:.3f} | {res['ratio'][k]:.2f}x "
            f"| {res['gflops'][k]:.0f} |"
        )
    runs = ", ".join(f"{k} {[round(t, 3) for t in v]}" for k, v in res["all_s"].items())
    lines += [
        "",
        f"matmul canary {res['canary_before']:.0f} -> {res['canary_after']:.0f} GFLOP/s; "
        f"all runs (s): {runs}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--write", action="store_true", help=f"append the table to {_RESULTS}")
    args = parser.parse_args()
    table = format_table(run(args.rows, args.reps))
    print(table)
    if args.write:
        with _RESULTS.open("a") as f:
            f.write(f"\n### {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n{table}\n")


if __name__ == "__main__":
    main()
