"""MPC planning (mf.MPC.plan) against a lean torch planner of the same arithmetic, and the
latency of a small real-time budget from Python and from C++.

Model: Hopper sizes (obs 11, act 3, E = 7 members, 5 elites, 4 x 200 SiLU; 255.2 kFLOP per row
for the member a row uses), random weights, the built-in Hopper-v5 reward and termination,
actions in [-1, 1]^3.

1. PETS's usual settings (CEM, population 500, 50 elites, 5 iterations, horizon 30,
   20 particles, TS-inf): ``MPC.plan`` (one native call) vs ``TorchCEM.plan`` below: the same
   algorithm in plain torch — clipped-normal CEM with the PETS variance bound, each particle's
   member fixed for the horizon, rows sorted by member once per iteration so that each member
   runs one contiguous ``addmm`` chain per step (only the chosen member's arithmetic, like the
   native kernel), Gaussian sampling of Δobs and reward, Hopper reward and termination, elite
   refit. Both with the thread settings a user gets by default. Timed interleaved (A B A B,
   DESIGN §7); medians and the median of per-round ratios.
2. Real-time budget (random shooting, population 200, horizon 15, 1 particle): ``MPC.plan``
   from Python vs ``mbpo_fast::Planner::plan`` from C++ (benchmarks/cpp/bench_plan.cpp, built
   with the C++ tests), on the same saved model, interleaved rounds.

A torch matmul canary runs before and after (distrust a run where it dropped).

Run (prints a Markdown table; --out also writes it):
    PYTHONPATH=. python benchmarks/bench_planner.py [--exe build/dev/bench_plan] [--out FILE]
or with pytest-benchmark (per-implementation timings of the small budget, no ratios):
    PYTHONPATH=. pytest benchmarks/bench_planner.py --benchmark-only
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _canary import canary_gflops

import mbpo_fast as mf

OBS, ACT, E, K, HIDDEN, LAYERS = 11, 3, 7, 5, 200, 4
WIDTHS = [OBS + ACT] + [HIDDEN] * LAYERS + [2 * (OBS + 1)]
FLOP_PER_ROW = 2 * sum(WIDTHS[i] * WIDTHS[i + 1] for i in range(len(WIDTHS) - 1))
PETS = dict(optimizer="cem", population=500, elites=50, iterations=5, alpha=0.1, horizon=30,
            particles=20, propagation="ts_inf")
BUDGET = dict(optimizer="random", population=200, horizon=15, particles=1)
REPO = Path(__file__).resolve().parents[1]


def hopper_model(seed: int = 0) -> mf.EnsembleDynamics:
    model = mf.EnsembleDynamics(OBS, ACT, ensemble_size=E, num_elites=K, hidden_size=HIDDEN,
                                num_layers=LAYERS, seed=seed)
    model.set_elites([4, 0, 6, 2, 1])
    return model


def observation(rng: np.random.Generator) -> np.ndarray:
    obs = rng.normal(0, 0.1, OBS).astype(np.float32)
    obs[0] += 1.25  # healthy height
    return obs


class TorchCEM:
    """The planner of planner.h (CEM, TS-inf) in plain torch, the way one writes it lean. Runs
    on the model's device (benchmarks/gpu_suite.py times it on a CUDA model)."""

    def __init__(self, model: mf.EnsembleDynamics, low, high, horizon, population, elites,
                 iterations, alpha, particles, seed=0):
        self.W = [layer.weight.detach() for layer in model.layers]  # [E, in, out]
        self.b = [layer.bias.detach() for layer in model.layers]    # [E, out]
        self.in_mean, self.in_std = model.input_mean.clone(), model.input_std.clone()
        self.max_lv, self.min_lv = model.max_logvar.detach(), model.min_logvar.detach()
        self.dev = dev = model.input_mean.device
        self.elites = torch.tensor(model.elites, device=dev)
        self.lo = torch.as_tensor(low, dtype=torch.float64, device=dev)
        self.hi = torch.as_tensor(high, dtype=torch.float64, device=dev)
        self.H, self.N, self.Ke, self.I, self.alpha, self.P = (horizon, population, elites,
                                                               iterations, alpha, particles)
        self.gen = torch.Generator(device=dev).manual_seed(seed)
        self.mean = ((self.lo + self.hi) / 2).repeat(horizon, 1)

    def _forward(self, e: int, x: torch.Tensor) -> torch.Tensor:
        for i, (w, b) in enumerate(zip(self.W, self.b, strict=True)):
            x = torch.addmm(b[e], x, w[e])
            if i + 1 < len(self.W):
                x = F.silu(x)
        return x

    @torch.no_grad()
    def plan(self, obs: np.ndarray) -> np.ndarray:
        H, N, P, A = self.H, self.N, self.P, self.lo.shape[0]
        R, od = N * P, OBS
        lo, hi = self.lo, self.hi
        mu, var = self.mean.clone(), ((hi - lo) ** 2 / 16).repeat(H, 1)
        dev = self.dev
        obs_t = torch.from_numpy(obs).to(dev)
        for _ in range(self.I):
            cvar = torch.minimum(var, torch.minimum(((mu - lo) / 2) ** 2, ((hi - mu) / 2) ** 2))
            z = torch.randn(N, H, A, generator=self.gen, device=dev).clamp_(-2, 2).double()
            x = torch.maximum(torch.minimum(mu + cvar.sqrt() * z, hi), lo).float()
            member = self.elites[torch.randint(len(self.elites), (R,), generator=self.gen,
                                               device=dev)]
            order = torch.argsort(member, stable=True)       # rows grouped by member, once
            counts = torch.bincount(member[order], minlength=E).tolist()
            seq = torch.div(order, P, rounding_mode="floor")  # candidate of each sorted row
            o = obs_t.repeat(R, 1)
            ret = torch.zeros(R, dtype=torch.float64, device=dev)
            alive = torch.ones(R, dtype=torch.bool, device=dev)
            for t in range(H):
                a = x[seq, t]
                inp = (torch.cat([o, a], 1) - self.in_mean) / self.in_std
                out = torch.empty(R, 2 * (od + 1), device=dev)
                start = 0
                for e in range(E):
                    end = start + counts[e]
                    if end > start:
                        out[start:end] = self._forward(e, inp[start:end])
                    start = end
                m, raw = out[:, : od + 1], out[:, od + 1:]
                lv = self.max_lv - F.softplus(self.max_lv - raw)
                lv = self.min_lv + F.softplus(lv - self.min_lv)
                y = m + torch.exp(0.5 * lv) * torch.randn(R, od + 1, generator=self.gen,
                                                          device=dev)
                nxt = o + y[:, :od]
                healthy = ((nxt[:, 1:].abs() < 100).all(1) & (nxt[:, 0] > 0.7)
                           & (nxt[:, 1].abs() < 0.2))
                r = nxt[:, 5] + healthy.float() - 1e-3 * (a * a).sum(1)
                ret += torch.where(alive, r.double(),
                                   torch.zeros((), dtype=torch.float64, device=dev))
                alive &= healthy
                o = nxt
            values = torch.empty(R, dtype=torch.float64, device=dev)
            values[order] = ret
            values = values.view(N, P).mean(1)
            top = torch.topk(values, self.Ke).indices
            xe = x[top].double()
            mu = self.alpha * mu + (1 - self.alpha) * xe.mean(0)
            var = self.alpha * var + (1 - self.alpha) * xe.var(0, unbiased=False)
        action = mu[0].float().cpu().numpy()
        self.mean = torch.cat([mu[1:], ((lo + hi) / 2)[None]])
        return action


def time_call(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def find_exe() -> Path:
    for d in ("build/dev", "build/cpp", "build/py"):
        exe = REPO / d / "bench_plan"
        if exe.is_file():
            return exe
    raise SystemExit("bench_plan not found under build/dev, build/cpp or build/py: build the C++ "
                     "tests (cmake --build <dir>) or pass --exe")


def main() -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exe", type=Path, default=None, help="bench_plan binary")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (PETS settings)")
    ap.add_argument("--budget-rounds", type=int, default=5)
    ap.add_argument("--budget-reps", type=int, default=40, help="plans per round (budget)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch and native threads (default: what a user gets)")
    ap.add_argument("--skip-budget", action="store_true", help="only the PETS-settings rows")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        mf.set_num_threads(args.threads)
    exe = args.exe or find_exe()
    rng = np.random.default_rng(0)
    model = hopper_model()
    low, high = -np.ones(ACT, np.float32), np.ones(ACT, np.float32)
    canary_before = canary_gflops()

    # 1. PETS settings: native plan vs torch plan, interleaved
    mpc = mf.MPC(model, low, high, reward_fn="Hopper-v5", termination="Hopper-v5", **PETS)
    ref = TorchCEM(model, low, high, PETS["horizon"], PETS["population"], PETS["elites"],
                   PETS["iterations"], PETS["alpha"], PETS["particles"])
    # the opt-in bf16 weights (model.use_bf16), same weights and planner otherwise
    model_bf16 = hopper_model()
    model_bf16.use_bf16(True)
    mpc_bf16 = mf.MPC(model_bf16, low, high, reward_fn="Hopper-v5", termination="Hopper-v5",
                      **PETS)
    for fn in (mpc.plan, mpc_bf16.plan, ref.plan):  # warm-up (thread pool, scratch buffers)
        fn(observation(rng))
    native_s, bf16_s, torch_s = [], [], []
    for _ in range(args.rounds):
        native_s.append(time_call(mpc.plan, observation(rng)))
        bf16_s.append(time_call(mpc_bf16.plan, observation(rng)))
        torch_s.append(time_call(ref.plan, observation(rng)))
    ratios = [t / n for n, t in zip(native_s, torch_s, strict=True)]
    ratios_bf16 = [t / n for n, t in zip(bf16_s, torch_s, strict=True)]
    rows_per_plan = PETS["population"] * PETS["particles"] * PETS["horizon"] * PETS["iterations"]
    gflop = rows_per_plan * FLOP_PER_ROW / 1e9

    # 2. real-time budget: Python vs C++
    py_ms, cpp_ms = [float("nan")], [float("nan")]
    with tempfile.TemporaryDirectory() as tmp:
        if args.skip_budget:
            args.budget_rounds = 0
        path = Path(tmp) / "hopper.safetensors"
        model.save(path)
        small = mf.MPC(model, low, high, reward_fn="Hopper-v5", termination="Hopper-v5",
                       **BUDGET)
        for _ in range(10 if args.budget_rounds else 0):
            small.plan(observation(rng))
        if args.budget_rounds:
            py_ms, cpp_ms = [], []
        for _ in range(args.budget_rounds):
            out = subprocess.run(
                [str(exe), str(path), "Hopper-v5", "--optimizer", "random", "--population",
                 str(BUDGET["population"]), "--horizon", str(BUDGET["horizon"]), "--particles",
                 "1", "--reps", str(args.budget_reps), "--warmup", "5"],
                capture_output=True, text=True, check=True, timeout=600)
            cpp_ms.append(json.loads(out.stdout)["median_ms"])
            samples = [time_call(small.plan, observation(rng)) * 1e3
                       for _ in range(args.budget_reps)]
            py_ms.append(float(np.median(samples)))
    canary_after = canary_gflops()
    budget_gflop = (BUDGET["population"] * BUDGET["horizon"] * FLOP_PER_ROW) / 1e9

    med = statistics.median
    lines = [
        "# MPC planning: mf.MPC.plan vs a lean torch planner; real-time budget from Python and C++",
        "",
        f"Hopper-size model (obs {OBS}, act {ACT}, {E} members / {K} elites, {LAYERS} x {HIDDEN} "
        f"SiLU, {FLOP_PER_ROW / 1e3:.1f} kFLOP per row), Hopper-v5 reward and termination. "
        f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
        f"{mf.build_info().get('simd', '?')}, native threads {mf._backend.ops.num_threads()}. "
        f"Matmul canary {canary_before:.0f} GFLOP/s before, {canary_after:.0f} after.",
        "",
        "| plan | settings | native | reference | reference / native |",
        "|---|---|---|---|---|",
        f"| PETS (CEM, TS-inf) | pop 500, 50 elites, 5 it, H 30, 20 particles "
        f"({gflop:.0f} GFLOP/plan) | {med(native_s):.2f} s ({gflop / med(native_s):.0f} "
        f"GFLOP/s) | torch {med(torch_s):.2f} s ({gflop / med(torch_s):.0f} GFLOP/s) | "
        f"**{med(ratios):.2f}x** (rounds: {', '.join(f'{r:.2f}' for r in ratios)}) |",
        f"| PETS, opt-in bf16 weights (`model.use_bf16(True)`) | same | {med(bf16_s):.2f} s | "
        f"torch float32 (above) | {med(ratios_bf16):.2f}x (rounds: "
        f"{', '.join(f'{r:.2f}' for r in ratios_bf16)}) |",
    ]
    if args.budget_rounds:  # (--skip-budget: no budget row)
        lines.append(
            f"| real-time budget (random shooting) | pop 200, H 15, 1 particle "
            f"({budget_gflop:.2f} GFLOP/plan) | C++ Planner::plan {med(cpp_ms):.2f} ms | Python "
            f"MPC.plan {med(py_ms):.2f} ms | Python / C++ = {med(py_ms) / med(cpp_ms):.2f} |")
    lines += [
        "",
        f"Rounds: {args.rounds} interleaved plans each (PETS settings)"
        + (f"; {args.budget_rounds} rounds of {args.budget_reps} plans each, medians (budget)"
           if args.budget_rounds else "")
        + ". Command: `PYTHONPATH=. python benchmarks/bench_planner.py"
        + (f" --threads {args.threads}" if args.threads is not None else "")
        + (" --skip-budget" if args.skip_budget else "") + "`.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return text


# ---------------------------------------------------------------------------- pytest-benchmark


def test_plan_small_budget(benchmark):
    model = hopper_model()
    mpc = mf.MPC(model, -np.ones(ACT), np.ones(ACT), reward_fn="Hopper-v5",
                 termination="Hopper-v5", **BUDGET)
    obs = observation(np.random.default_rng(1))
    mpc.plan(obs)
    benchmark.extra_info["gflop_per_plan"] = BUDGET["population"] * BUDGET["horizon"] * \
        FLOP_PER_ROW / 1e9
    benchmark.pedantic(mpc.plan, args=(obs,), rounds=20, warmup_rounds=2)


if __name__ == "__main__":
    main()
