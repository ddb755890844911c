"""Ensemble training speed: EnsembleDynamics.fit against a plain per-member torch loop.

Hopper sizes: obs 11, act 3, 100,000 rows (holdout 20 % capped at 5,000 -> 95,000 training
rows), E = 7 members of 4 x 200 SiLU, batch 256, Adam 1e-3, the same loss and weight decay.

* candidate: ``EnsembleDynamics.fit(max_epochs=1)`` -- batched [E, in, out] layers (one
  baddbmm per layer for all members), one gather per batch from per-epoch shuffled index
  tensors, fused Adam with per-layer weight decay, no host sync per batch. Its time includes
  the per-fit work (split, normalizer, bootstrap, two holdout evaluations).
* reference: what MBPO ports commonly do -- 7 separate ``nn.Sequential`` models with their own
  Adam, trained member by member inside the batch loop, numpy fancy-indexing per batch, the
  L2 term added to the loss, and ``loss.item()`` logged per batch.

Both run interleaved (candidate, reference, candidate, ...) in one process; we report the
median seconds per epoch, the ratio, the effective matmul GFLOP/s, and the matmul canary
before and after (distrust a run where it dropped).

    PYTHONPATH=. python benchmarks/bench_ensemble_fit.py [--rows 100000] [--reps 3] [--threads N]
        [--write]
    PYTHONPATH=. pytest benchmarks/bench_ensemble_fit.py --benchmark-only
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mbpo_fast.ensemble import EnsembleDynamics, layer_weight_decays

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _canary import canary_gflops  # noqa: E402

OBS, ACT, E, HIDDEN, LAYERS, BATCH = 11, 3, 7, 200, 4, 256
_RESULTS = Path(__file__).resolve().parent / "RESULTS_ensemble_fit.md"




def make_data(rows: int, seed: int = 0):
    """A made-up smooth Hopper-size system: obs' = obs + 0.1 tanh(A obs + B act) + noise."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(OBS, OBS)) / np.sqrt(OBS)
    B = rng.normal(size=(OBS, ACT))
    obs = rng.normal(size=(rows, OBS))
    act = rng.uniform(-1, 1, size=(rows, ACT))
    nxt = obs + 0.1 * np.tanh(obs @ A.T + act @ B.T) + 0.01 * rng.normal(size=(rows, OBS))
    rew = np.tanh(obs[:, 0] + act[:, 0]) + 0.01 * rng.normal(size=rows)
    f32 = np.float32
    return obs.astype(f32), act.astype(f32), rew.astype(f32), nxt.astype(f32)


def epoch_flops(train_rows: int) -> float:
    """Matmul FLOPs of one training epoch: forward, weight gradients, input gradients (not of
    layer 0), for every member on its `train_rows` bootstrap rows."""
    widths = [OBS + ACT] + [HIDDEN] * LAYERS + [2 * (OBS + 1)]
    macs = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))
    return 2.0 * E * train_rows * (3 * macs - widths[0] * widths[1])


class PerMemberReference:
    """The straightforward port: one nn.Sequential + Adam per member, a Python member loop."""

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        widths = [OBS + ACT] + [HIDDEN] * LAYERS + [2 * (OBS + 1)]
        self.decays = layer_weight_decays(len(widths) - 1)
        self.members, self.bounds, self.optims = [], [], []
        for _ in range(E):
            layers: list[nn.Module] = []
            for i in range(len(widths) - 1):
                layers.append(nn.Linear(widths[i], widths[i + 1]))
                if i < len(widths) - 2:
                    layers.append(nn.SiLU())
            net = nn.Sequential(*layers)
            bounds = nn.ParameterList(
                [
                    nn.Parameter(torch.full((OBS + 1,), 0.5)),
                    nn.Parameter(torch.full((OBS + 1,), -10.0)),
                ]
            )
            self.members.append(net)
            self.bounds.append(bounds)
            self.optims.append(torch.optim.Adam([*net.parameters(), *bounds], lr=1e-3))
        self.log: list[float] = []

    def _loss(self, m: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.members[m](x)
        mean, raw = out[:, : OBS + 1], out[:, OBS + 1 :]
        max_lv, min_lv = self.bounds[m]
        lv = max_lv - nn.functional.softplus(max_lv - raw)
        lv = min_lv + nn.functional.softplus(lv - min_lv)
        nll = ((mean - y) ** 2 * torch.exp(-lv)).mean() + lv.mean()
        l2 = sum(
            0.5 * wd * lin.weight.pow(2).sum()
            for wd, lin in zip(self.decays, self.members[m][::2], strict=True)
        )
        return nll + 0.01 * (max_lv.sum() - min_lv.sum()) + l2

    def fit_epoch(self, obs, act, rew, next_obs) -> float:
        t0 = time.perf_counter()
        n = obs.shape[0]
        perm = self.rng.permutation(n)
        n_hold = min(int(0.2 * n), 5000)
        x = np.concatenate([obs, act], 1)
        y = np.concatenate([next_obs - obs, rew[:, None]], 1)
        tr, ho = perm[n_hold:], perm[:n_hold]
        mu, sd = x[tr].mean(0), x[tr].std(0)
        sd[sd < 1e-12] = 1.0
        xn = ((x - mu) / sd).astype(np.float32)
        xt, yt = xn[tr], y[tr]
        boot = self.rng.integers(0, len(tr), size=(E, len(tr)))
        order = np.stack([b[self.rng.permutation(len(tr))] for b in boot])
        for s in range(0, len(tr), BATCH):
            for m in range(E):
                idx = order[m, s : s + BATCH]
                loss = self._loss(m, torch.from_numpy(xt[idx]), torch.from_numpy(yt[idx]))
                self.optims[m].zero_grad()
                loss.backward()
                self.optims[m].step()
                self.log.append(loss.item())
        with torch.no_grad():
            xh, yh = torch.from_numpy(xn[ho]), torch.from_numpy(y[ho])
            self.holdout_mse = [
                float(((self.members[m](xh)[:, : OBS + 1] - yh) ** 2).mean()) for m in range(E)
            ]
        return time.perf_counter() - t0


def run(rows: int = 100_000, reps: int = 3) -> dict:
    data = make_data(rows)
    train_rows = rows - min(int(0.2 * rows), 5000)
    cand = EnsembleDynamics(
        OBS, ACT, ensemble_size=E, num_elites=5, hidden_size=HIDDEN, num_layers=LAYERS, seed=0
    )
    ref = PerMemberReference(seed=0)
    small = [d[:2000] for d in data]  # warm up both (allocator, Adam state, thread pool)
    cand.fit(*small, max_epochs=1)
    ref.fit_epoch(*small)
    canary_before = canary_gflops()
    c_times, r_times = [], []
    for _ in range(reps):
        c_times.append(cand.fit(*data, max_epochs=1, patience=10)["seconds"])
        r_times.append(ref.fit_epoch(*data))
    canary_after = canary_gflops()
    c, r = statistics.median(c_times), statistics.median(r_times)
    flops = epoch_flops(train_rows)
    return {
        "rows": rows,
        "reps": reps,
        "threads": torch.get_num_threads(),
        "candidate_s": c,
        "reference_s": r,
        "ratio": r / c,
        "candidate_gflops": flops / c / 1e9,
        "reference_gflops": flops / r / 1e9,
        "candidate_all": c_times,
        "reference_all": r_times,
        "canary_before": canary_before,
        "canary_after": canary_after,
    }


def format_table(res: dict) -> str:
    return "\n".join(
        [
            f"| {res['rows']:,} rows, E={E}, 4x200, batch {BATCH} | s / epoch (median of "
            f"{res['reps']}) | effective GFLOP/s |",
            "|---|---|---|",
            f"| EnsembleDynamics.fit | {res['candidate_s']:.2f} | {res['candidate_gflops']:.0f} |",
            f"| per-member torch loop | {res['reference_s']:.2f} | {res['reference_gflops']:.0f} |",
            f"| speed-up | {res['ratio']:.2f}x | |",
            "",
            f"torch threads {res['threads']}; matmul canary {res['canary_before']:.0f} -> "
            f"{res['canary_after']:.0f} GFLOP/s; all runs (s): candidate "
            f"{[round(t, 2) for t in res['candidate_all']]}, reference "
            f"{[round(t, 2) for t in res['reference_all']]}",
        ]
    )


# ---------------------------------------------------------------------------- pytest-benchmark


@pytest.fixture(scope="module")
def data():
    return make_data(100_000)


def test_fit_epoch_candidate(benchmark, data):
    model = EnsembleDynamics(OBS, ACT, ensemble_size=E, hidden_size=HIDDEN, num_layers=LAYERS)
    benchmark.pedantic(lambda: model.fit(*data, max_epochs=1), rounds=2, iterations=1)


def test_fit_epoch_reference(benchmark, data):
    ref = PerMemberReference()
    benchmark.pedantic(lambda: ref.fit_epoch(*data), rounds=2, iterations=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--write", action="store_true", help=f"append the table to {_RESULTS}")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    table = format_table(run(args.rows, args.reps))
    print(table)
    if args.write:
        with _RESULTS.open("a") as f:
            f.write(f"\n### {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n{table}\n")


if __name__ == "__main__":
    main()
