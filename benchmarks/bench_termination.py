"""Termination functions: native op vs Numba op vs a plain numpy expression (the reference,
written the way PyTorch MBPO libraries do it) for Hopper (11-dim) and Ant (27-dim) next
observations, at a rollout-step batch (256 rows) and MBPO's rollout batch (100,000 rows).

    pytest benchmarks/bench_termination.py --benchmark-only      # pytest-benchmark tables
    python benchmarks/bench_termination.py                       # interleaved medians + ratios

The script mode times candidate and reference interleaved (A B C A B C ...) in one process
and prints a markdown table (pasted into benchmarks/RESULTS_termination.md).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

from mbpo_fast import _backend
from mbpo_fast.termination import termination_fn


def numpy_reference(env: str, x: np.ndarray) -> np.ndarray:
    """The numpy expression a Python MBPO library evaluates per rollout step."""
    z, angle = x[:, 0], x[:, 1]
    if env == "Hopper-v5":
        state = x[:, 1:]
        healthy = (
            ((state > -100) & (state < 100)).all(axis=1)
            & (z > 0.7)
            & (z < np.inf)
            & (angle > -0.2)
            & (angle < 0.2)
        )
    else:
        healthy = np.isfinite(x[:, :27]).all(axis=1) & (z >= 0.2) & (z <= 1.0)
    return ~healthy


CASES = [("Hopper-v5", 11), ("Ant-v5", 27)]
BATCHES = [256, 100_000]


def make_obs(env: str, width: int, batch: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 0.1, size=(batch, width)).astype(np.float32)
    x[:, 0] = rng.uniform(0.15, 1.4, size=batch)  # about half terminal
    return x


def candidates(env: str):
    fn = termination_fn(env)
    out = {"numpy reference": lambda x: numpy_reference(env, x)}
    for name in _backend.available():
        ops = _backend.get(name)
        out[f"{name} op"] = lambda x, ops=ops: ops.termination(fn.native_id, x)
    return out


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("env,width", CASES)
@pytest.mark.parametrize("impl", ["numpy reference", "native op", "numba op"])
def test_termination(benchmark, impl, env, width, batch):
    fns = candidates(env)
    if impl not in fns:
        pytest.skip(f"{impl} not available")
    x = make_obs(env, width, batch)
    np.testing.assert_array_equal(fns[impl](x), numpy_reference(env, x))
    benchmark.group = f"termination {env} B={batch}"
    benchmark(fns[impl], x)


def interleaved(rounds: int = 31) -> str:
    lines = [
        "| env | batch | implementation | median µs | rows/µs | speedup vs numpy |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for env, width in CASES:
        fns = candidates(env)
        for batch in BATCHES:
            x = make_obs(env, width, batch)
            reps = max(1, 20_000 // batch)
            times: dict[str, list[float]] = {k: [] for k in fns}
            for f in fns.values():
                f(x)  # warm up (Numba compiles on first call)
            for _ in range(rounds):
                for name, f in fns.items():
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        f(x)
                    times[name].append((time.perf_counter() - t0) / reps * 1e6)
            ref = statistics.median(times["numpy reference"])
            for name, ts in times.items():
                med = statistics.median(ts)
                cells = [
                    env,
                    str(batch),
                    name,
                    f"{med:.1f}",
                    f"{batch / med:.1f}",
                    f"{ref / med:.2f}x",
                ]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(interleaved())
