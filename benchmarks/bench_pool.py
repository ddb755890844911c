"""ReplayPool against a straightforward numpy ring buffer, Hopper sizes, capacity 1,000,000.

Run:  PYTHONPATH=. pytest benchmarks/bench_pool.py --benchmark-only
      PYTHONPATH=. python benchmarks/bench_pool.py        # markdown table only

Each case times the candidate and the reference interleaved (A B A B ...) in the same
process, repeats, and reports medians and their ratio (extra_info of each benchmark; the
printed table). pytest-benchmark's own statistics cover the candidate.
"""

from __future__ import annotations

import statistics
import sys
import timeit

import numpy as np
import pytest

import mbpo_fast as mf

CAP, OD, AD = 1_000_000, 11, 3
ROW_BYTES = 4 * (2 * OD + AD + 1) + 1


class NumpyRingBuffer:
    """The reference: preallocated arrays, index assignment, rng.integers + fancy indexing,
    the way popular Python RL libraries write their replay buffers."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, seed: int = 0) -> None:
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.act = np.zeros((capacity, act_dim), np.float32)
        self.rew = np.zeros(capacity, np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.done = np.zeros(capacity, np.float32)  # as float32, like most RL libraries
        self.capacity, self.ptr, self.size = capacity, 0, 0
        self.rng = np.random.default_rng(seed)

    def add(self, obs, act, rew, next_obs, done) -> None:
        self.obs[self.ptr] = obs
        self.act[self.ptr] = act
        self.rew[self.ptr] = rew
        self.next_obs[self.ptr] = next_obs
        self.done[self.ptr] = done
        self.ptr = (self.ptr + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def add_batch(self, obs, act, rew, next_obs, done) -> None:
        n = len(obs)
        idx = np.arange(self.ptr, self.ptr + n) % self.capacity
        self.obs[idx], self.act[idx], self.rew[idx] = obs, act, rew
        self.next_obs[idx], self.done[idx] = next_obs, done
        self.ptr = (self.ptr + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int):
        idx = self.rng.integers(0, self.size, size=batch_size)
        return mf.Transition(self.obs[idx], self.act[idx], self.rew[idx], self.next_obs[idx],
                             self.done[idx])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.obs, self.act, self.rew, self.next_obs, self.done))


def _rows(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    f32 = np.float32
    return (rng.normal(size=(n, OD)).astype(f32), rng.normal(size=(n, AD)).astype(f32),
            rng.normal(size=n).astype(f32), rng.normal(size=(n, OD)).astype(f32),
            rng.random(n) < 0.01)


_FILLED: dict[str, tuple] = {}


def filled_pools():
    """A full native pool and a full reference (built once per process: 2 x ~105 MB)."""
    if "pools" not in _FILLED:
        rows = _rows(CAP)
        pool, ref = mf.ReplayPool(CAP, OD, AD, seed=0), NumpyRingBuffer(CAP, OD, AD, seed=0)
        pool.add_batch(*rows)
        ref.add_batch(*rows)
        model = mf.ReplayPool(CAP, OD, AD, seed=1)
        model.add_batch(*rows)
        ref_model = NumpyRingBuffer(CAP, OD, AD, seed=1)
        ref_model.add_batch(*rows)
        _FILLED["pools"] = (pool, ref, model, ref_model)
    return _FILLED["pools"]


def interleaved(candidate, reference, number: int, rounds: int = 21) -> dict:
    """Median seconds per call of each, timed A B A B ... in this process."""
    cand, ref = [], []
    candidate(), reference()  # warm up
    for _ in range(rounds):
        cand.append(timeit.timeit(candidate, number=number) / number)
        ref.append(timeit.timeit(reference, number=number) / number)
    c, r = statistics.median(cand), statistics.median(ref)
    return {"candidate_s": c, "reference_s": r, "speedup": r / c}


RESULTS: dict[str, dict] = {}


def _record(benchmark, name: str, result: dict, **extra) -> None:
    result.update(extra)
    RESULTS[name] = result
    if benchmark is not None:
        benchmark.extra_info.update(result)


def case_sample(benchmark=None):
    pool, ref, _, _ = filled_pools()
    res = interleaved(lambda: pool.sample(256), lambda: ref.sample(256), 500)
    _record(benchmark, "sample(256)", res)
    if benchmark is not None:
        benchmark(pool.sample, 256)


def case_sample_20(benchmark=None):
    pool, ref, _, _ = filled_pools()

    def reference():
        for _ in range(20):
            ref.sample(256)

    r = interleaved(lambda: pool.sample(256, num_batches=20), reference, 50)
    _record(benchmark, "sample(256, num_batches=20)", r,
            candidate_per_batch_s=r["candidate_s"] / 20,
            reference_per_batch_s=r["reference_s"] / 20)
    if benchmark is not None:
        benchmark(pool.sample, 256, num_batches=20)


def case_sample_mixed(benchmark=None):
    pool, ref, model, ref_model = filled_pools()

    def reference():  # 5% real + 95% model, concatenated per field
        a, b = ref.sample(12), ref_model.sample(244)
        return mf.Transition(*(np.concatenate([x, y]) for x, y in zip(a, b, strict=False)))

    _record(benchmark, "sample_mixed(256, 0.05)",
            interleaved(lambda: mf.sample_mixed(pool, model, 256, 0.05), reference, 500))
    if benchmark is not None:
        benchmark(mf.sample_mixed, pool, model, 256, 0.05)


def case_add(benchmark=None):
    pool, ref = mf.ReplayPool(CAP, OD, AD), NumpyRingBuffer(CAP, OD, AD)
    o, a, r, n, _ = _rows(1)
    o, a, n, rew = o[0], a[0], n[0], float(r[0])
    _record(benchmark, "add (one row)",
            interleaved(lambda: pool.add(o, a, rew, n, False), lambda: ref.add(o, a, rew, n, False),
                        5000))
    if benchmark is not None:
        benchmark(pool.add, o, a, rew, n, False)


def case_add_batch(benchmark=None):
    pool, ref = mf.ReplayPool(CAP, OD, AD), NumpyRingBuffer(CAP, OD, AD)
    rows = _rows(100_000, seed=1)
    for _ in range(10):  # touch every page once so page faults are not timed
        pool.add_batch(*rows)
        ref.add_batch(*rows)
    res = interleaved(lambda: pool.add_batch(*rows), lambda: ref.add_batch(*rows), 5, rounds=15)
    gb = 100_000 * ROW_BYTES / 1e9
    _record(benchmark, "add_batch (100,000 rows)", res, candidate_gb_s=gb / res["candidate_s"],
            reference_gb_s=gb / res["reference_s"])
    if benchmark is not None:
        benchmark(pool.add_batch, *rows)


def case_memory(benchmark=None):
    pool, ref, _, _ = filled_pools()
    _record(benchmark, "memory", {"candidate_bytes": pool.nbytes, "reference_bytes": ref.nbytes,
                                  "expected_bytes": CAP * ROW_BYTES})


def test_sample_256(benchmark):
    case_sample(benchmark)


def test_sample_20_batches(benchmark):
    case_sample_20(benchmark)


def test_sample_mixed(benchmark):
    case_sample_mixed(benchmark)


def test_add_single(benchmark):
    case_add(benchmark)


def test_add_batch_100k(benchmark):
    case_add_batch(benchmark)


@pytest.mark.parametrize("unused", [0])
def test_memory(benchmark, unused):
    case_memory(None)
    benchmark(lambda: None)
    benchmark.extra_info.update(RESULTS["memory"])
    assert RESULTS["memory"]["candidate_bytes"] == CAP * ROW_BYTES


def table() -> str:
    lines = ["| operation | mbpo_fast (native) | numpy reference | speedup |",
             "|---|---|---|---|"]
    us = 1e6
    for name, r in RESULTS.items():
        if name == "memory":
            lines.append(f"| storage, capacity 1e6 | {r['candidate_bytes'] / 1e6:.1f} MB | "
                         f"{r['reference_bytes'] / 1e6:.1f} MB | - |")
            continue
        cand, ref = f"{r['candidate_s'] * us:.2f} µs", f"{r['reference_s'] * us:.2f} µs"
        if "candidate_per_batch_s" in r:
            cand += f" ({r['candidate_per_batch_s'] * us:.2f} µs/batch)"
            ref += f" ({r['reference_per_batch_s'] * us:.2f} µs/batch)"
        if "candidate_gb_s" in r:
            cand += f" ({r['candidate_gb_s']:.2f} GB/s)"
            ref += f" ({r['reference_gb_s']:.2f} GB/s)"
        lines.append(f"| {name} | {cand} | {ref} | {r['speedup']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(f"backend: {mf.backend()}", file=sys.stderr)
    for case in (case_sample, case_sample_20, case_sample_mixed, case_add, case_add_batch,
                 case_memory):
        case()
        print(f"done: {case.__name__}", file=sys.stderr)
    print(table())
