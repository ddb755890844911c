"""The matmul canary every benchmark records before and after its run.

The CI VMs have slow periods (DESIGN §7) that the guest cannot see; a fixed batched matmul's
GFLOP/s, measured right before and after a benchmark, tells whether the run fell into one.
Uses the workplace's ``shared/tools/matmul_canary.py`` when it exists (so every result file
quotes the same number), else times the same shape here.
"""

from __future__ import annotations

# First, as in a user's program: importing mbpo_fast sets how long torch's idle OpenMP
# workers spin before torch starts (mbpo_fast/_openmp.py). No tuning variable is set here.
import mbpo_fast  # noqa: F401

# isort: split

import importlib.util
import time
from pathlib import Path

import torch

_SHARED = Path(__file__).resolve().parents[2] / "shared" / "tools" / "matmul_canary.py"


def canary_gflops(threads: int | None = None) -> float:
    """GFLOP/s of torch.bmm([7, 1024, 512] @ [7, 512, 512]) on `threads` torch threads
    (default: the current setting, which is restored afterwards)."""
    saved = torch.get_num_threads()
    threads = saved if threads is None else threads
    try:
        if _SHARED.exists():
            spec = importlib.util.spec_from_file_location("matmul_canary", _SHARED)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            if hasattr(mod, "rate"):
                return float(mod.rate(threads=threads))
        torch.set_num_threads(threads)
        a, b = torch.randn(7, 1024, 512), torch.randn(7, 512, 512)
        torch.bmm(a, b)
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            torch.bmm(a, b)
            best = min(best, time.perf_counter() - t0)
        return 2 * 7 * 1024 * 512 * 512 / best / 1e9
    finally:
        torch.set_num_threads(saved)
