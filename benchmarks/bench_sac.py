"""SAC update speed: the native trainer (float32, bf16) against the torch trainer.

One SAC block of K = 20 updates, batch 256, Hopper sizes (obs 11, act 3, actor and twin
critics 2 x 256), the same agent configuration with ``trainer="native"`` /
``trainer="torch"`` (mbpo_fast/sac_trainer.py). Two threads on both sides
(``mbpo_fast.set_num_threads(2)``, ``torch.set_num_threads(2)``), the library's defaults, no
tuning variables. Variants run interleaved (A B C A B C ...) in one process; we report
medians per update, the ratio to the torch trainer, the matmul GFLOP/s and the fraction of
this CPU's peak (2 cores: float32 ~236 GFLOP/s, bf16 ~472 GFLOP/s as issue 12 estimates
them; 550 / 1026 as measured by an FMA loop), and the matmul canary
before and after (distrust a run where it dropped).

    PYTHONPATH=. python benchmarks/bench_sac.py [--rounds 9] [--with-reference]
    PYTHONPATH=. pytest benchmarks/bench_sac.py --benchmark-only   # pytest-benchmark view

``--with-reference`` adds the CleanRL-style reference (benchmarks/sac_reference.py: the
same math written the straightforward way) as one more interleaved variant.
"""

from __future__ import annotations

# First, as in a user's program: importing mbpo_fast sets how long torch's idle OpenMP
# workers spin before torch starts (mbpo_fast/_openmp.py). No tuning variable is set here.
import mbpo_fast  # noqa: F401

# isort: split

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

OBS, ACT, HIDDEN, BATCH, K_BLOCK = 11, 3, 256, 256, 20
# Peak GFLOP/s of one core: the estimate (one 512-bit FMA per cycle: 118 float32, x2
# for bf16) and the one measured by a register-only FMA loop on this VM (two 512-bit FMAs
# per cycle: 275 float32, 513 bf16; benchmarks/RESULTS_gemm.md). Tables use threads x these.
PEAK_F32_CORE, PEAK_BF16_CORE = 118.0, 236.0
MEASURED_PEAK_F32_CORE, MEASURED_PEAK_BF16_CORE = 275.0, 513.0


def update_flops(batch: int = BATCH, obs: int = OBS, act: int = ACT, hidden: int = HIDDEN,
                 num_layers: int = 2) -> float:
    """Matmul FLOPs (2 x multiply-adds) of one SAC update, forward and backward, the work
    both trainers must do: actor at s' and s, target critics at (s', a'), critics at (s, a),
    their weight and input gradients (not below layer 0), the updated critics at
    (s, a_pi) and their input gradients (action columns of layer 0), the actor's weight and
    input gradients (not below layer 0). Equals SacLearner.update_macs(batch) * 2."""
    a_w = [obs] + [hidden] * num_layers + [2 * act]
    c_w = [obs + act] + [hidden] * num_layers + [1]
    a = sum(i * o for i, o in zip(a_w[:-1], a_w[1:], strict=True))
    c = sum(i * o for i, o in zip(c_w[:-1], c_w[1:], strict=True))
    c_dx = c - (obs + act) * hidden
    per_row = 2 * a + 4 * c + 2 * c + 2 * c_dx + 2 * c + 2 * (c_dx + act * hidden) + a + (
        a - obs * hidden)
    return 2.0 * batch * per_row


def make_blocks(n: int, k: int = K_BLOCK, seed: int = 0) -> list[Transition]:
    rng = np.random.default_rng(seed)
    return [Transition(rng.standard_normal((k, BATCH, OBS), dtype=np.float32),
                       rng.uniform(-1, 1, (k, BATCH, ACT)).astype(np.float32),
                       rng.standard_normal((k, BATCH), dtype=np.float32),
                       rng.standard_normal((k, BATCH, OBS), dtype=np.float32),
                       rng.random((k, BATCH)) < 0.05) for _ in range(n)]


def make_agent(**kw) -> SAC:
    return SAC(OBS, ACT, -np.ones(ACT), np.ones(ACT), hidden_size=HIDDEN, seed=0, **kw)


def reference_step(ref: ReferenceSAC):
    def step(blk: Transition) -> None:
        for k in range(blk.obs.shape[0]):
            ref.update(*(torch.from_numpy(x[k]) for x in blk[:4]),
                       torch.from_numpy(blk.terminated[k].astype(np.float32)))
    return step


def interleaved(rounds: int = 9, blocks_per_round: int = 2, with_reference: bool = False) -> dict:
    """A B C A B C ... timing; returns median ms per update of every variant."""
    blocks = make_blocks(blocks_per_round)
    variants = {
        "torch trainer, float32": make_agent(trainer="torch").update,
        "native trainer, float32": make_agent(trainer="native").update,
        "native trainer, bf16": make_agent(trainer="native", autocast_bf16=True).update,
        "torch trainer, bf16 autocast": make_agent(trainer="torch", autocast_bf16=True).update,
    }
    if with_reference:
        variants["CleanRL-style reference"] = reference_step(
            ReferenceSAC.from_agent(make_agent(trainer="torch")))
    for fn in variants.values():  # warm-up: scratch, allocator, oneDNN primitive caches
        fn(blocks[0])
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            for blk in blocks:
                t0 = time.perf_counter()
                fn(blk)
                samples[name].append((time.perf_counter() - t0) / blk.obs.shape[0])
    return {name: 1e3 * statistics.median(v) for name, v in samples.items()}


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description="SAC update benchmark: native vs torch trainer")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=2, help="threads on both sides")
    p.add_argument("--with-reference", action="store_true")
    args = p.parse_args()
    mbpo_fast.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    before = canary_gflops()
    ms = interleaved(rounds=args.rounds, with_reference=args.with_reference)
    after = canary_gflops()
    flops = update_flops()
    base = ms["torch trainer, float32"]
    print(f"torch {torch.__version__}, {args.threads} threads (mbpo_fast and torch); "
          f"K = {K_BLOCK}, B = {BATCH}, obs {OBS}, act {ACT}, 2 x {HIDDEN}; "
          f"{flops / 1e6:.0f} MFLOP/update; canary {before:.0f} GFLOP/s before, {after:.0f} after")
    print("| variant | ms/update (median) | vs torch trainer | GFLOP/s | % of peak (issue) "
          "| % of peak (measured) |")
    print("|---|---|---|---|---|---|")
    for name, v in ms.items():
        rate = flops / v / 1e6
        bf16 = "bf16" in name
        peak = args.threads * (PEAK_BF16_CORE if bf16 else PEAK_F32_CORE)
        measured = args.threads * (MEASURED_PEAK_BF16_CORE if bf16 else MEASURED_PEAK_F32_CORE)
        print(f"| {name} | {v:.2f} | {base / v:.2f}x | {rate:.0f} | "
              f"{100 * rate / peak:.0f}% of {peak:.0f} | {100 * rate / measured:.0f}% of "
              f"{measured:.0f} |")


# ---------------------------------------------------------------- pytest-benchmark view
@pytest.fixture(scope="module")
def blocks():
    return make_blocks(2)


def _bench(benchmark, agent: SAC, blocks) -> None:
    it = iter(range(10**9))
    benchmark(lambda: agent.update(blocks[next(it) % len(blocks)]))


@pytest.mark.benchmark(group="sac-update-block")
def test_block_torch_trainer(benchmark, blocks):
    _bench(benchmark, make_agent(trainer="torch"), blocks)


@pytest.mark.benchmark(group="sac-update-block")
def test_block_native_trainer(benchmark, blocks):
    _bench(benchmark, make_agent(trainer="native"), blocks)


@pytest.mark.benchmark(group="sac-update-block")
def test_block_native_trainer_bf16(benchmark, blocks):
    _bench(benchmark, make_agent(trainer="native", autocast_bf16=True), blocks)


def test_update_flops_matches_the_native_count():
    agent = make_agent(trainer="native")
    agent._trainer.prepare()
    assert update_flops() == 2.0 * agent._trainer._learner.update_macs(BATCH)


if __name__ == "__main__":
    main()
