"""How long torch's idle OpenMP workers spin, set before torch starts.

After each parallel region, libgomp's worker threads (torch's CPU thread pool) keep spinning
for GOMP_SPINCOUNT iterations (libgomp's default: 300,000, a few milliseconds) before they
sleep. mbpo_fast's native calls run on their own thread pool, so a native call that follows
torch work in the same process competes with those spinning workers for the cores: measured
on a 2-core VM, a 400-row branched rollout took 7.8 ms right after a torch matmul instead of
4.3 ms, and the one-row ensemble step 22-30 µs instead of 12 µs. The MBPO loop alternates
exactly like that (torch evaluation, actor calls and, with the torch trainer, SAC updates
between native rollouts).

libgomp reads the variable once, when torch's copy of it is loaded, so it has to be in the
environment before ``import torch``. Importing mbpo_fast therefore sets
``GOMP_SPINCOUNT=20000`` (tens of microseconds: back-to-back torch ops still find their
workers awake) when all of these hold:

* neither ``OMP_WAIT_POLICY`` nor ``GOMP_SPINCOUNT`` is set (the user's choice wins);
* torch has not been imported yet (afterwards it would have no effect);
* ``MBPO_FAST_OPENMP_SPIN`` is not ``0`` (the opt-out).

The variable is inherited by child processes (workers, subprocesses). A program that imports
torch before mbpo_fast keeps libgomp's default: set ``GOMP_SPINCOUNT=20000`` in its
environment, or import mbpo_fast first. :data:`STATE` (also in ``mbpo_fast.build_info()``)
says which case applies.
"""

from __future__ import annotations

import os
import sys

SPINCOUNT = "20000"


def _configure() -> str:
    if os.environ.get("MBPO_FAST_OPENMP_SPIN") == "0":
        return "off: MBPO_FAST_OPENMP_SPIN=0, libgomp's default spinning"
    for var in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        if var in os.environ:
            return f"user: {var}={os.environ[var]}"
    if "torch" in sys.modules:
        return ("torch imported before mbpo_fast: libgomp's default spinning (set "
                f"GOMP_SPINCOUNT={SPINCOUNT} in the environment, or import mbpo_fast first)")
    os.environ["GOMP_SPINCOUNT"] = SPINCOUNT
    return f"mbpo_fast: GOMP_SPINCOUNT={SPINCOUNT}"


STATE = _configure()
