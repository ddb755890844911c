"""SAC update and act() speed: mbpo_fast.SAC against a CleanRL-style reference.

Hopper sizes (obs 11, act 3), batch 256, 2 x 256 hidden. The reference
(benchmarks/sac_reference.py) is the same math written the straightforward way: two
separate critic nn.Sequential modules, default torch.optim.Adam, a Python Polyak loop and
``.item()`` per update. Candidate and reference run interleaved (A B A B ...) in one process;
we report medians and ratios, the effective matmul GFLOP/s, and the matmul canary before
and after (distrust a run where it dropped).

    PYTHONPATH=. python benchmarks/bench_sac.py [--threads 1]   # the interleaved table
    PYTHONPATH=. pytest benchmarks/bench_sac.py --benchmark-only   # pytest-benchmark view
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mbpo_fast.sac import SAC
from mbpo_fast.types import Transition

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
from _canary import canary_gflops  # noqa: E402
from sac_reference import ReferenceSAC  # noqa: E402

OBS, ACT, HIDDEN, BATCH = 11, 3, 256, 256




def update_flops(batch: int = BATCH, obs: int = OBS, act: int = ACT, hidden: int = HIDDEN,
                 frozen_critic: bool = True) -> float:
    """Matmul FLOPs of one SAC update (2 hidden layers). The reference also computes the
    critics' weight gradients of the actor loss (frozen_critic=False)."""
    a = obs * hidden + hidden * hidden + hidden * 2 * act  # actor MACs per row
    c = (obs + act) * hidden + hidden * hidden + hidden  # one critic's MACs per row
    target = a + 2 * c
    critic = 2 * c + 2 * c + (2 * c - 2 * (obs + act) * hidden)  # fwd, dW, dX (not layer 0)
    actor = a + 2 * c + 2 * c + a + (a - obs * hidden)  # fwd, dX through critics, dW, dX
    if not frozen_critic:
        actor += 2 * c
    return 2.0 * batch * (target + critic + actor)


def make_batches(n: int, seed: int = 0, lead: tuple[int, ...] = ()) -> list[Transition]:
    rng = np.random.default_rng(seed)
    return [Transition(rng.standard_normal((*lead, BATCH, OBS), dtype=np.float32),
                       rng.uniform(-1, 1, (*lead, BATCH, ACT)).astype(np.float32),
                       rng.standard_normal((*lead, BATCH), dtype=np.float32),
                       rng.standard_normal((*lead, BATCH, OBS), dtype=np.float32),
                       rng.random((*lead, BATCH)) < 0.05) for _ in range(n)]


def make_agent(**kw) -> SAC:
    return SAC(OBS, ACT, -np.ones(ACT), np.ones(ACT), hidden_size=HIDDEN, seed=0, **kw)


def reference_step(ref: ReferenceSAC):
    def step(b: Transition) -> None:
        ref.update(torch.from_numpy(b.obs), torch.from_numpy(b.act), torch.from_numpy(b.rew),
                   torch.from_numpy(b.next_obs), torch.from_numpy(b.terminated.astype(np.float32)))
    return step


def _time_block(fn, batches, per_call: int = 1) -> float:
    """Median seconds per update over one call per batch."""
    times = []
    for b in batches:
        t0 = time.perf_counter()
        fn(b)
        times.append((time.perf_counter() - t0) / per_call)
    return statistics.median(times)


def interleaved(rounds: int = 7, per_round: int = 20, k_block: int = 10) -> dict:
    """A B A B ... timing of every variant; returns median ms per update and act() µs."""
    batches = make_batches(per_round)
    blocks = make_batches(max(2, per_round // k_block), seed=1, lead=(k_block,))
    cand = make_agent()
    bf16 = make_agent(autocast_bf16=True)
    ref_step = reference_step(ReferenceSAC.from_agent(make_agent()))
    variants = {
        "reference (CleanRL-style)": (ref_step, batches, 1),
        "mbpo_fast.SAC": (cand.update, batches, 1),
        f"mbpo_fast.SAC, [K={k_block}] block": (cand.update, blocks, k_block),
        "mbpo_fast.SAC, bf16 autocast": (bf16.update, batches, 1),
    }
    for fn, bs, _ in variants.values():  # warm-up (allocator, oneDNN primitive caches)
        for b in bs[:3]:
            fn(b)
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, (fn, bs, k) in variants.items():
            samples[name].append(_time_block(fn, bs, k))
    ms = {k: 1e3 * statistics.median(v) for k, v in samples.items()}

    obs1 = np.random.default_rng(2).standard_normal(OBS).astype(np.float32)
    act_us = {}
    for det in (True, False):
        for _ in range(200):
            cand.act(obs1, deterministic=det)
        times = []
        for _ in range(3000):
            t0 = time.perf_counter()
            cand.act(obs1, deterministic=det)
            times.append(time.perf_counter() - t0)
        act_us["deterministic" if det else "stochastic"] = 1e6 * statistics.median(times)
    return {"ms": ms, "act_us": act_us}


def bf16_numerical_difference(updates: int = 50) -> dict:
    """Same agent, same batches: float32 vs bf16-autocast updates; relative differences."""
    batches = make_batches(updates, seed=3)
    a32, a16 = make_agent(), make_agent(autocast_bf16=True)
    first = None
    for b in batches:
        s32, s16 = a32.update(b), a16.update(b)
        if first is None:
            first = {k: abs(float(s16[k]) - float(s32[k])) / max(abs(float(s32[k])), 1e-8)
                     for k in ("critic_loss", "actor_loss", "mean_q")}
    w32 = torch.cat([p.detach().flatten() for p in a32.critic.parameters()])
    w16 = torch.cat([p.detach().flatten() for p in a16.critic.parameters()])
    w0 = torch.cat([p.detach().flatten() for p in make_agent().critic.parameters()])
    drift = float((w16 - w32).norm() / (w32 - w0).norm())
    return {"first_update_rel_diff": first, "critic_weight_divergence_after": drift,
            "updates": updates}


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description="SAC update / act() benchmark")
    p.add_argument("--threads", type=int, default=2,
                   help="torch intra-op threads (1 is robust when the machine is shared)")
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    before = canary_gflops()
    res = interleaved(rounds=args.rounds)
    after = canary_gflops()
    ms, act_us = res["ms"], res["act_us"]
    ref_ms = ms["reference (CleanRL-style)"]
    f_ref, f_cand = update_flops(frozen_critic=False), update_flops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"canary {before:.0f} GFLOP/s before, {after:.0f} after")
    print("| variant | ms/update (median) | speedup vs reference | effective GFLOP/s |")
    print("|---|---|---|---|")
    for name, v in ms.items():
        flops = f_ref if name.startswith("reference") else f_cand
        print(f"| {name} | {v:.2f} | {ref_ms / v:.2f}x | {flops / v / 1e6:.0f} |")
    for k, v in act_us.items():
        print(f"act() single observation, {k}: {v:.1f} us (median)")
    diff = bf16_numerical_difference()
    print(f"bf16 vs float32: first-update relative differences {diff['first_update_rel_diff']}, "
          f"critic weights after {diff['updates']} updates differ by "
          f"{100 * diff['critic_weight_divergence_after']:.1f}% of their total change")


# ---------------------------------------------------------------- pytest-benchmark view
@pytest.fixture(scope="module")
def batches():
    return make_batches(8)


@pytest.mark.benchmark(group="sac-update")
def test_update_reference(benchmark, batches):
    step = reference_step(ReferenceSAC.from_agent(make_agent()))
    it = iter(range(10**9))
    benchmark(lambda: step(batches[next(it) % len(batches)]))


@pytest.mark.benchmark(group="sac-update")
def test_update_mbpo_fast(benchmark, batches):
    agent = make_agent()
    it = iter(range(10**9))
    benchmark(lambda: agent.update(batches[next(it) % len(batches)]))


@pytest.mark.benchmark(group="sac-update")
def test_update_mbpo_fast_bf16(benchmark, batches):
    agent = make_agent(autocast_bf16=True)
    it = iter(range(10**9))
    benchmark(lambda: agent.update(batches[next(it) % len(batches)]))


@pytest.mark.benchmark(group="sac-act")
def test_act_single_observation(benchmark):
    agent = make_agent()
    obs = np.random.default_rng(0).standard_normal(OBS).astype(np.float32)
    benchmark(agent.act, obs)


def test_interleaved_speedup():
    """The interleaved comparison; prints the table's numbers (-s to see them)."""
    res = interleaved(rounds=3, per_round=10)
    ms = res["ms"]
    print(res)
    assert ms["mbpo_fast.SAC"] > 0 and ms["reference (CleanRL-style)"] > 0


if __name__ == "__main__":
    main()
