"""ReplayPool: the transition store of MBPO (real data and model rollouts).

A fixed-capacity FIFO ring buffer in preallocated, contiguous float32 storage, implemented
natively (C++, ``csrc/include/mbpo_fast/replay_pool.h``) or by the Numba mirror; both
draw the same samples for the same seed and write byte-identical files.

Sampling is uniform with replacement and deterministic: draw ``k`` of a pool returns row
``random_index(seed, STREAM_POOL_SAMPLE, rng_counter + k, len(pool))`` of
:meth:`ReplayPool.transitions` (oldest row first), and each sampled row advances
``rng_counter`` by one. Saving stores the rows, the write position and
``(seed, rng_counter)``, so a loaded pool continues the exact same sample sequence.
"""

from __future__ import annotations

import os

import numpy as np

from . import _backend
from .types import Transition

_make = Transition._make


class ReplayPool:
    """FIFO pool of transitions (obs, act, rew, next_obs, terminated).

    Args:
        capacity: maximum number of rows (>= 1); the oldest rows are overwritten first.
        obs_dim, act_dim: observation and action sizes (>= 1).
        seed: seed of the pool's own Philox sample stream, an int in [0, 2**64).
        device: "cpu" (default) or a CUDA device ("cuda", "cuda:1"): rows then live in device
            memory, add_batch takes and sample/transitions return torch CUDA tensors (on the
            caller's current stream), with the same draws as a CPU pool. RuntimeError when
            mbpo_fast has no CUDA build or no device is present. save/load copy through the
            host and use the CPU pool's file format, so files are interchangeable.

    Storage is ``capacity * (4 * (2 * obs_dim + act_dim + 1) + 1)`` bytes (:attr:`nbytes`),
    allocated once. Inputs may be float64 or non-contiguous (they are converted); NaN/Inf,
    wrong shapes (ValueError naming the argument, expected and received shape) and
    non-numeric dtypes (TypeError) are rejected and leave the pool unchanged.

    Thread safety: the native pool locks itself per call, so concurrent calls from several
    Python threads are safe (they serialize).
    """

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, seed: int = 0,
                 device: str = "cpu") -> None:
        if str(device) == "cpu":
            self._bind(_backend.ops, _backend.ops.ReplayPool(capacity, obs_dim, act_dim, seed))
        else:
            # Device-resident pool (mbpo_fast/cuda_ops.py): the same draws, torch CUDA tensors
            # in and out; RuntimeError without a CUDA build or device.
            from . import cuda_ops

            self._bind(cuda_ops, cuda_ops.CudaPool(capacity, obs_dim, act_dim, seed, device))

    def _bind(self, ops, impl) -> None:
        self._ops = ops
        self._impl = impl
        # A single add is the hottest call of an environment loop: the instance attribute
        # skips one Python frame (the method below documents it).
        self.add = impl.add

    # ------------------------------------------------------------------ writes
    def add(self, obs, act, rew, next_obs, terminated) -> None:  # noqa: F811 (see _bind)
        """Appends one transition: obs float [obs_dim], act float [act_dim], rew float scalar,
        next_obs float [obs_dim], terminated bool (true termination, not truncation)."""
        self._impl.add(obs, act, rew, next_obs, terminated)

    def add_batch(self, obs, act, rew, next_obs, terminated) -> None:
        """Appends B rows: obs [B, obs_dim], act [B, act_dim], rew [B], next_obs [B, obs_dim],
        terminated bool [B]. The batch is added whole or not at all; when B > capacity only
        the last `capacity` rows are kept (as if added one by one)."""
        self._impl.add_batch(obs, act, rew, next_obs, terminated)

    def resize(self, new_capacity: int) -> None:
        """Changes the capacity (>= 1), keeping the newest min(len, new_capacity) rows in order.
        The RNG state (seed, rng_counter) is kept."""
        self._impl.resize(new_capacity)

    def clear(self) -> None:
        """Removes every row (capacity and RNG state are kept)."""
        self._impl.clear()

    # ------------------------------------------------------------------ reads
    def sample(self, batch_size: int, num_batches: int | None = None) -> Transition:
        """`batch_size` rows drawn uniformly with replacement (ValueError on an empty pool).

        Returns float32 obs [B, obs_dim], act [B, act_dim], rew [B], next_obs [B, obs_dim]
        and bool terminated [B]. With ``num_batches=K`` every array gets a leading
        [K, batch_size] shape instead, drawn in one native call: identical to K successive
        ``sample(batch_size)`` calls stacked (MBPO runs 20-40 SAC updates per env step).
        """
        return _make(self._impl.sample(batch_size, num_batches))

    def sample_obs(self, n: int) -> np.ndarray:
        """float32 [n, obs_dim]: the obs of n rows drawn like :meth:`sample` (same draws)."""
        return self._impl.sample_obs(n)

    def transitions(self) -> Transition:
        """Every stored row, oldest first (copies)."""
        return _make(self._impl.transitions())

    def gather(self, rows) -> Transition:
        """Copies of rows `rows` (int [n], 0 = oldest; each in [0, len))."""
        return _make(self._impl.gather(rows))

    def peek_indices(self, n: int) -> np.ndarray:
        """int64 [n]: the rows (0 = oldest) that the next n draws return; draws nothing."""
        return self._impl.peek_indices(n)

    def __len__(self) -> int:
        return self._impl.size

    @property
    def device(self) -> str:
        """"cpu", or the CUDA device ("cuda:0") holding the rows."""
        from .cuda_ops import CudaPool

        return str(self._impl.device) if isinstance(self._impl, CudaPool) else "cpu"

    @property
    def capacity(self) -> int:
        return self._impl.capacity

    @property
    def obs_dim(self) -> int:
        return self._impl.obs_dim

    @property
    def act_dim(self) -> int:
        return self._impl.act_dim

    @property
    def seed(self) -> int:
        return self._impl.seed

    @property
    def rng_counter(self) -> int:
        """Rows drawn so far: the Philox counter of the next draw."""
        return self._impl.rng_counter

    @property
    def write_pos(self) -> int:
        """Storage slot the next row is written to."""
        return self._impl.write_pos

    @property
    def nbytes(self) -> int:
        """Bytes of row storage (the five arrays, nothing else)."""
        return self._impl.nbytes

    def __repr__(self) -> str:
        return (f"ReplayPool(len={len(self)}, capacity={self.capacity}, obs_dim={self.obs_dim}, "
                f"act_dim={self.act_dim}, seed={self.seed})")

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        """Writes rows, write position and RNG state atomically (temp file, fsync, rename).
        The format (csrc/include/mbpo_fast/replay_pool.h) is the same for both backends.
        Missing parent directories are created (as for every other ``save`` here)."""
        os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
        self._impl.save(path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> ReplayPool:
        """Reads a file written by :meth:`save` (any backend, CPU or device pool) into the
        active backend, or onto a CUDA device with ``device="cuda"`` / ``"cuda:1"`` (the same
        reader, then one host-to-device copy). Raises OSError when it cannot be read and
        ValueError (FormatError) when it is truncated, corrupted or not a pool file."""
        pool = cls.__new__(cls)
        if str(device) == "cpu":
            pool._bind(_backend.ops, _backend.ops.ReplayPool.load(path))
        else:
            from . import cuda_ops

            pool._bind(cuda_ops, cuda_ops.CudaPool.load(path, device))
        return pool


def sample_mixed(real_pool: ReplayPool, model_pool: ReplayPool, batch_size: int,
                 real_ratio: float, num_batches: int | None = None) -> Transition:
    """Batches mixing two pools, as MBPO's SAC batches (5% real, 95% model rows).

    Each batch holds ``n_real = int(batch_size * real_ratio)`` rows drawn from `real_pool`
    (first) and ``batch_size - n_real`` rows drawn from `model_pool`; each pool advances its
    own counter. ``num_batches=K`` gives arrays with a leading [K, batch_size] shape in one
    call, identical to K successive calls stacked. real_ratio in [0, 1]; a pool that must
    supply rows must be non-empty (ValueError); both pools must share dims and backend.
    """
    for pool, name in ((real_pool, "real_pool"), (model_pool, "model_pool")):
        if not isinstance(pool, ReplayPool):
            raise TypeError(f"{name}: expected a ReplayPool, got {type(pool).__name__}")
    if real_pool._ops is not model_pool._ops:
        raise TypeError("model_pool: expected a pool of the same backend as real_pool")
    return _make(real_pool._ops.sample_mixed(real_pool._impl, model_pool._impl, batch_size,
                                             real_ratio, num_batches))
