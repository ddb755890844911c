"""Numba mirror of the native extension mbpo_fast._C: the same op names and arguments.

Used when the extension is missing or MBPO_FAST_BACKEND=numba. Each submodule mirrors
one part of the C++ core and is tested against it.
"""

from __future__ import annotations

import numba as _nb

from .ensemble import (  # noqa: F401
    EnsembleHandle,
    ensemble_bf16_amx,
    ensemble_bf16_native,
    ensemble_disagreement,
    ensemble_kernel,
    ensemble_pack_bf16,
    ensemble_predict,
    ensemble_set_kernel,
    ensemble_step,
    ensemble_step_uncertainty,
)
from .rng import (  # noqa: F401
    STREAM_MEMBER_CHOICE,
    STREAM_MODEL_NOISE,
    STREAM_POLICY_NOISE,
    STREAM_POOL_SAMPLE,
    STREAM_ROLLOUT_START,
    STREAM_USER,
    philox4x32_10,
    philox_fill_normal,
    philox_fill_u32,
)
from .termination import termination, termination_env_ids, termination_id  # noqa: F401
from .termination_model import termination_mlp  # noqa: F401


# Raised for invalid file contents (truncated, corrupted); a ValueError like the native one.
class FormatError(ValueError):
    pass


def num_threads() -> int:
    """Threads Numba's parallel loops use."""
    return int(_nb.get_num_threads())


def set_num_threads(n: int) -> None:
    """Sets the threads Numba's parallel loops use.

    ``n`` >= 1 and at most ``numba.config.NUMBA_NUM_THREADS``."""
    n = int(n)
    if n < 1:
        raise ValueError(f"n: expected n >= 1, got {n}")
    _nb.set_num_threads(min(n, _nb.config.NUMBA_NUM_THREADS))


def cuda_device_count() -> int:
    return 0


# ---- replay pool (mbpo_fast/_numba/pool.py); imported last: it uses FormatError above
# ---- native SAC actor and branched rollout (actor.py, rollout.py); rollout uses the pool;
# ---- MPC planner and built-in rewards (planner.py) use the rollout's step seeds
from .actor import Actor, actor_act  # noqa: E402, F401
from .planner import (  # noqa: E402, F401
    STREAM_PLAN_ACTION,
    STREAM_PLAN_SEED,
    derive_seed,
    mpc_evaluate,
    mpc_plan,
    reward,
    reward_env_ids,
    reward_id,
)
from .pool import ReplayPool, sample_mixed  # noqa: E402, F401
from .rollout import branched_rollout, rollout_step_seed  # noqa: E402, F401
