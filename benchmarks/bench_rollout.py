"""Native branched rollout vs an mbrl-lib-style Python/torch rollout loop, Hopper sizes.

Run:  PYTHONPATH=. pytest benchmarks/bench_rollout.py --benchmark-only
      PYTHONPATH=. python benchmarks/bench_rollout.py        # markdown table only

Sizes: obs 11, act 3, ensemble 7 members x 4 hidden SiLU layers of 200 (5 elites), SAC actor
2 x 256 ReLU. Cases: num_starts 100,000 with horizon 1 and 5, and 400 with horizon 1.

Candidate: ``run_native_rollout`` (one native call: start sampling, actor, one elite per
row, Hopper termination, compaction, appends to the model pool; GIL released).
Reference (the loop of mbrl-lib's ``rollout_model_and_populate_sac_buffer``): sample start
states from a numpy ring buffer; per step ``agent.act`` (torch), the model step in torch
with mbrl-lib's "random_model" propagation (rows permuted and split across the elites,
elite weights gathered per call, one baddbmm per layer), the termination function in torch,
``.numpy()`` round trips, masked copies ``x[~accum_dones]`` and ``add_batch`` into a numpy
ring buffer. Like mbrl-lib it keeps stepping rows that are done.

Both are timed interleaved (A B A B ...) in one process; medians and ratios are reported
with effective GFLOP/s (ensemble 255,200 + actor 139,776 FLOP per stepped row) and the
matmul canary rate before and after (tools/matmul_canary.py).
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import mbpo_fast as mf
from mbpo_fast.ensemble_infer import EnsembleInference
from mbpo_fast.rollout_native import run_native_rollout
from mbpo_fast.sac import SAC

OD, AD, E, K, HID, NLAYERS = 11, 3, 7, 5, 200, 4
WIDTHS = [OD + AD] + [HID] * NLAYERS + [2 * (OD + 1)]
ENS_FLOP = 2 * sum(a * b for a, b in zip(WIDTHS[:-1], WIDTHS[1:], strict=True))  # 255,200
ACTOR_FLOP = 2 * (OD * 256 + 256 * 256 + 256 * 2 * AD)  # 139,776
ROW_FLOP = ENS_FLOP + ACTOR_FLOP
REAL_ROWS = 200_000
CAPACITY = 1_000_000


# ----------------------------------------------------------------------------- setup

def hopper_states(rng: np.random.Generator, n: int) -> np.ndarray:
    obs = (0.5 * rng.standard_normal((n, OD))).astype(np.float32)
    obs[:, 0] = rng.uniform(1.1, 1.4, n)
    obs[:, 1] = rng.uniform(-0.08, 0.08, n)
    return obs


def make_model(seed: int = 0) -> EnsembleInference:
    """Random 7 x 4 x 200 ensemble with small Δobs, so most Hopper rows stay healthy."""
    rng = np.random.default_rng(seed)
    weights, biases = [], []
    for a, b in zip(WIDTHS[:-1], WIDTHS[1:], strict=True):
        weights.append((rng.standard_normal((E, a, b)) / math.sqrt(a)).astype(np.float32))
        biases.append((0.05 * rng.standard_normal((E, b))).astype(np.float32))
    weights[-1][:, :, :OD + 1] *= 0.01
    biases[-1][:, :OD + 1] *= 0.1
    return EnsembleInference(
        OD, AD, np.zeros(OD + AD, np.float32), np.ones(OD + AD, np.float32), weights, biases,
        np.full(OD + 1, -6.0, np.float32), np.full(OD + 1, -10.0, np.float32),
        np.arange(K, dtype=np.int64))


class RingBuffer:
    """mbrl-lib's ReplayBuffer storage: numpy arrays, add_batch copies with wrap-around."""

    def __init__(self, capacity: int, seed: int = 0) -> None:
        self.obs = np.zeros((capacity, OD), np.float32)
        self.act = np.zeros((capacity, AD), np.float32)
        self.next_obs = np.zeros((capacity, OD), np.float32)
        self.rew = np.zeros(capacity, np.float32)
        self.done = np.zeros(capacity, bool)
        self.cap, self.cur, self.size = capacity, 0, 0
        self.rng = np.random.default_rng(seed)

    def add_batch(self, obs, act, next_obs, rew, done) -> None:
        n = len(obs)
        first = min(n, self.cap - self.cur)
        for dst, src in ((self.obs, obs), (self.act, act), (self.next_obs, next_obs),
                         (self.rew, rew), (self.done, done)):
            dst[self.cur:self.cur + first] = src[:first]
            if n > first:
                dst[:n - first] = src[first:]
        self.cur = (self.cur + n) % self.cap
        self.size = min(self.cap, self.size + n)

    def sample_obs(self, n: int) -> np.ndarray:
        return self.obs[self.rng.integers(0, self.size, size=n)]


class TorchModelEnv:
    """mbrl-lib's ModelEnv + GaussianMLP ("random_model" propagation over the elites)."""

    def __init__(self, inf: EnsembleInference, seed: int = 0) -> None:
        self.mean = torch.from_numpy(inf.input_mean)
        self.std = torch.from_numpy(inf.input_std)
        self.w = [torch.from_numpy(w) for w in inf.weights]
        self.b = [torch.from_numpy(b) for b in inf.biases]
        self.max_lv = torch.from_numpy(inf.max_logvar)
        self.min_lv = torch.from_numpy(inf.min_logvar)
        self.elites = torch.from_numpy(inf.elites)
        self.gen = torch.Generator().manual_seed(seed)

    @staticmethod
    def termination(next_obs: torch.Tensor) -> torch.Tensor:  # mbrl-lib's hopper termination
        height, angle = next_obs[:, 0], next_obs[:, 1]
        not_done = (torch.isfinite(next_obs).all(-1) * (next_obs[:, 1:].abs() < 100).all(-1)
                    * (height > 0.7) * (angle.abs() < 0.2))
        return ~not_done

    def step(self, obs_np: np.ndarray, act_np: np.ndarray):
        with torch.no_grad():
            obs, act = torch.from_numpy(obs_np), torch.from_numpy(act_np)
            x = (torch.cat([obs, act], 1) - self.mean) / self.std
            n = x.shape[0]
            perm = torch.randperm(n, generator=self.gen)
            h = x[perm].view(K, n // K, -1)
            last = len(self.w) - 1
            for i, (w, b) in enumerate(zip(self.w, self.b, strict=True)):
                h = torch.baddbmm(b[self.elites].unsqueeze(1), h, w[self.elites])
                if i != last:
                    h = torch.nn.functional.silu(h)
            mu, raw = h[..., :OD + 1], h[..., OD + 1:]
            lv = self.max_lv - torch.nn.functional.softplus(self.max_lv - raw)
            lv = self.min_lv + torch.nn.functional.softplus(lv - self.min_lv)
            sample = mu + torch.randn(mu.shape, generator=self.gen) * torch.exp(0.5 * lv)
            out = torch.empty(n, OD + 1)
            out[perm] = sample.reshape(n, OD + 1)
            next_obs = obs + out[:, :OD]
            done = self.termination(next_obs)[:, None]
            return next_obs.numpy(), out[:, OD:].numpy(), done.numpy()


def reference_rollout(model_env: TorchModelEnv, agent: SAC, real: RingBuffer,
                      sac_buffer: RingBuffer, num_starts: int, horizon: int) -> int:
    """mbrl-lib's rollout_model_and_populate_sac_buffer; returns rows stepped."""
    obs = real.sample_obs(num_starts)
    accum_dones = np.zeros(num_starts, dtype=bool)
    for _ in range(horizon):
        action = agent.act(obs)
        pred_next_obs, pred_rewards, pred_dones = model_env.step(obs, action)
        keep = ~accum_dones
        sac_buffer.add_batch(obs[keep], action[keep], pred_next_obs[keep], pred_rewards[keep, 0],
                             pred_dones[keep, 0])
        obs = pred_next_obs
        accum_dones |= pred_dones.squeeze()
    return num_starts * horizon


_SETUP: dict[str, tuple] = {}


def setup():
    if "s" not in _SETUP:
        torch.set_num_threads(2)
        rng = np.random.default_rng(0)
        model = make_model()
        agent = SAC(OD, AD, -np.ones(AD), np.ones(AD), hidden_size=256, num_layers=2, seed=0)
        states = hopper_states(rng, REAL_ROWS)
        zeros_a, zeros_r = np.zeros((REAL_ROWS, AD), np.float32), np.zeros(REAL_ROWS, np.float32)
        real = mf.ReplayPool(REAL_ROWS, OD, AD, seed=0)
        real.add_batch(states, zeros_a, zeros_r, states, np.zeros(REAL_ROWS, bool))
        ref_real = RingBuffer(REAL_ROWS)
        ref_real.add_batch(states, zeros_a, states, zeros_r, np.zeros(REAL_ROWS, bool))
        model_pool = mf.ReplayPool(CAPACITY, OD, AD)
        ref_pool = RingBuffer(CAPACITY)
        _SETUP["s"] = (model, agent, real, ref_real, model_pool, ref_pool, TorchModelEnv(model))
    return _SETUP["s"]


def canary() -> float:
    sys.path.insert(0, str(Path("/work/shared/tools")))
    try:
        from matmul_canary import rate
    except ImportError:  # outside this workplace
        return float("nan")
    r = rate()
    torch.set_num_threads(2)
    return r


# ----------------------------------------------------------------------------- cases

RESULTS: dict[str, dict] = {}


def run_case(num_starts: int, horizon: int, rounds: int, benchmark=None) -> dict:
    model, agent, real, ref_real, model_pool, ref_pool, env = setup()
    seeds = iter(range(10_000))
    stepped = {}

    def candidate():
        s = run_native_rollout(model, agent, "Hopper-v5", real, model_pool, num_starts, horizon,
                               next(seeds), compute_disagreement=False)
        stepped["c"] = s["rows_added"] + s["nonfinite"]
        stepped["frac_terminated"] = s["frac_terminated"]

    def reference():
        stepped["r"] = reference_rollout(env, agent, ref_real, ref_pool, num_starts, horizon)

    before = canary()
    candidate(), reference()  # warm up (allocations, page faults, torch kernels)
    cand, ref = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        candidate()
        cand.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        reference()
        ref.append(time.perf_counter() - t0)
    after = canary()
    c, r = statistics.median(cand), statistics.median(ref)
    res = {
        "num_starts": num_starts, "horizon": horizon, "rounds": rounds,
        "candidate_s": c, "reference_s": r, "speedup": r / c,
        "candidate_ms_per_step": 1e3 * c / horizon, "reference_ms_per_step": 1e3 * r / horizon,
        "candidate_gflops": stepped["c"] * ROW_FLOP / c / 1e9,
        "reference_gflops": stepped["r"] * ROW_FLOP / r / 1e9,
        "candidate_rows_stepped": stepped["c"], "reference_rows_stepped": stepped["r"],
        "frac_terminated": stepped["frac_terminated"],
        "canary_before_gflops": before, "canary_after_gflops": after,
    }
    RESULTS[f"{num_starts:,} x {horizon}"] = res
    if benchmark is not None:
        benchmark.extra_info.update(res)
        benchmark.pedantic(candidate, rounds=1, iterations=1)
    return res


def test_rollout_100k_h1(benchmark):
    run_case(100_000, 1, 5, benchmark)


def test_rollout_100k_h5(benchmark):
    run_case(100_000, 5, 3, benchmark)


def test_rollout_400_h1(benchmark):
    run_case(400, 1, 200, benchmark)


def table() -> str:
    lines = ["| num_starts x horizon | native (ms) | mbrl-lib-style torch (ms) | speedup | "
             "native GFLOP/s | torch GFLOP/s | rows stepped (native / torch) | frac terminated | "
             "canary before / after (GFLOP/s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in RESULTS.items():
        lines.append(
            f"| {name} | {1e3 * r['candidate_s']:.2f} | {1e3 * r['reference_s']:.2f} | "
            f"{r['speedup']:.2f}x | {r['candidate_gflops']:.0f} | {r['reference_gflops']:.0f} | "
            f"{r['candidate_rows_stepped']:,} / {r['reference_rows_stepped']:,} | "
            f"{r['frac_terminated']:.3f} | {r['canary_before_gflops']:.0f} / "
            f"{r['canary_after_gflops']:.0f} |")
    return "\n".join(lines)


@pytest.fixture(scope="module", autouse=True)
def _print_table():
    yield
    if RESULTS:
        print("\n" + table())


if __name__ == "__main__":
    run_case(400, 1, 200)
    run_case(100_000, 1, 5)
    run_case(100_000, 5, 3)
    print(f"threads: native {mf._backend.ops.num_threads()}, torch {torch.get_num_threads()}; "
          f"kernel {mf._backend.ops.ensemble_kernel()}")
    print(table())
