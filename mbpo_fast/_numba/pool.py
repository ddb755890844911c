"""Numba mirror of csrc/include/mbpo_fast/replay_pool.h: the same ring buffer, the same
Philox draws (so the same samples for the same seed) and byte-identical save files.

Rows are addressed logically (row 0 = oldest). Draw k of a pool is
``random_index(seed, STREAM_POOL_SAMPLE, rng_counter + k, size)``; see replay_pool.h for
the file format.
"""

from __future__ import annotations

import os
import struct
import zlib

import numba as nb
import numpy as np

from ..io import atomic_write
from . import FormatError
from . import _checks as chk
from .rng import STREAM_POOL_SAMPLE, random_index

_MAGIC = b"MBPOPOOL"
_VERSION = 1
_HEADER = struct.Struct("<8sIIqqqqqQQ")  # magic, version, reserved, 5 x int64, seed, counter
_HEADER_BYTES = 80
_MAX_CAPACITY = (1 << 32) - 1
_MAX_DIM = 1 << 24


@nb.njit(cache=True)
def _draw_slots(seed, first, n, size, start, capacity, out, out_offset, out_stride, out_len):
    """Physical slots of draws first..first+n-1, written to out[out_offset + (j // out_len) *
    out_stride + j % out_len] (lays a pool's share of several batches into its columns)."""
    for j in range(n):
        r = random_index(seed, STREAM_POOL_SAMPLE, np.uint64(first) + np.uint64(j), size)
        s = start + r
        if s >= capacity:
            s -= capacity
        out[out_offset + (j // out_len) * out_stride + j % out_len] = s


def _fspath(path) -> str:
    return os.fspath(path)


class ReplayPool:
    """Ring-buffer pool on numpy arrays; same methods as the native ``_C.ReplayPool``."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, seed: int = 0) -> None:
        capacity = chk.as_int(capacity, "capacity")
        obs_dim = chk.as_int(obs_dim, "obs_dim")
        act_dim = chk.as_int(act_dim, "act_dim")
        seed = chk.as_int(seed, "seed")
        if not 1 <= capacity <= _MAX_CAPACITY:
            raise ValueError(f"capacity: expected 1 <= capacity < 2**32, got {capacity}")
        if not 1 <= obs_dim <= _MAX_DIM:
            raise ValueError(f"obs_dim: expected 1 <= obs_dim <= 2**24, got {obs_dim}")
        if not 1 <= act_dim <= _MAX_DIM:
            raise ValueError(f"act_dim: expected 1 <= act_dim <= 2**24, got {act_dim}")
        if not 0 <= seed < 1 << 64:
            raise ValueError(f"seed: expected an int in [0, 2**64), got {seed}")
        self._od, self._ad, self._seed = obs_dim, act_dim, seed
        self._alloc(capacity)
        self._size = 0
        self._write_pos = 0
        self._counter = 0

    def _alloc(self, capacity: int) -> None:
        self._capacity = capacity
        self._obs = np.empty((capacity, self._od), np.float32)
        self._act = np.empty((capacity, self._ad), np.float32)
        self._rew = np.empty(capacity, np.float32)
        self._next_obs = np.empty((capacity, self._od), np.float32)
        self._term = np.empty(capacity, np.uint8)

    # ------------------------------------------------------------------ properties
    size = property(lambda self: self._size)
    capacity = property(lambda self: self._capacity)
    obs_dim = property(lambda self: self._od)
    act_dim = property(lambda self: self._ad)
    write_pos = property(lambda self: self._write_pos)
    seed = property(lambda self: self._seed)
    rng_counter = property(lambda self: self._counter)

    @property
    def nbytes(self) -> int:
        return int(self._obs.nbytes + self._act.nbytes + self._rew.nbytes
                   + self._next_obs.nbytes + self._term.nbytes)

    def __len__(self) -> int:
        return self._size

    def _start(self) -> int:
        return (self._write_pos - self._size) % self._capacity

    def _fields(self):
        return (self._obs, self._act, self._rew, self._next_obs, self._term)

    # ------------------------------------------------------------------ writes
    def add(self, obs, act, rew, next_obs, terminated) -> None:
        o = chk.as_f32(obs, "obs", (self._od,))
        a = chk.as_f32(act, "act", (self._ad,))
        r = chk.as_f32(rew, "rew", ())
        n = chk.as_f32(next_obs, "next_obs", (self._od,))
        t = chk.as_flag(terminated, "terminated")
        self._write(o[None], a[None], r.reshape(1), n[None], np.array([t], np.uint8))

    def add_batch(self, obs, act, rew, next_obs, terminated) -> None:
        o = chk.as_f32(obs, "obs", (-1, self._od))
        b = o.shape[0]
        note = f" (B = {b} rows, from obs)"
        a = chk.as_f32(act, "act", (b, self._ad), note)
        r = chk.as_f32(rew, "rew", (b,), note)
        n = chk.as_f32(next_obs, "next_obs", (b, self._od), note)
        t = chk.as_flags(terminated, "terminated", b, note)
        self._write(o, a, r, n, t)

    def _write(self, o, a, r, n, t) -> None:
        b = len(o)
        if b == 0:
            return
        for arr, name in ((o, "obs"), (a, "act"), (r, "rew"), (n, "next_obs")):
            chk.require_finite_rows(arr, name)
        cap = self._capacity
        skip = max(0, b - cap)  # only the last `capacity` rows survive
        slots = (self._write_pos + skip + np.arange(b - skip)) % cap
        for dst, src in zip(self._fields(), (o, a, r, n, t), strict=False):
            dst[slots] = src[skip:]
        self._write_pos = (self._write_pos + b) % cap
        self._size = min(cap, self._size + b)

    def clear(self) -> None:
        self._size = 0
        self._write_pos = 0

    def resize(self, new_capacity: int) -> None:
        new_capacity = chk.positive(new_capacity, "new_capacity")
        if new_capacity > _MAX_CAPACITY:
            raise ValueError("new_capacity: expected 1 <= new_capacity < 2**32, "
                             f"got {new_capacity}")
        keep = min(self._size, new_capacity)
        kept = self.gather(np.arange(self._size - keep, self._size))
        self._alloc(new_capacity)
        for dst, src in zip(self._fields(), kept, strict=False):
            dst[:keep] = src
        self._size = keep
        self._write_pos = keep % new_capacity

    # ------------------------------------------------------------------ reads
    def _slots(self, first: int, n: int) -> np.ndarray:
        out = np.empty(n, np.int64)
        _draw_slots(np.uint64(self._seed), np.uint64(first), n, self._size, self._start(),
                    self._capacity, out, 0, max(n, 1), max(n, 1))
        return out

    def _take(self, slots: np.ndarray, lead: tuple[int, ...]):
        return tuple(f[slots].reshape(lead + f.shape[1:]) for f in self._fields()[:4]) + (
            self._term[slots].astype(np.bool_).reshape(lead),)

    def _require_rows(self, what: str) -> None:
        if self._size == 0:
            raise ValueError(f"{what}: the pool is empty (add transitions before sampling)")

    def sample(self, batch_size: int, num_batches: int | None = None):
        lead, total = _lead_dims(batch_size, num_batches)
        self._require_rows("sample")
        slots = self._slots(self._counter, total)
        self._counter += total
        return self._take(slots, lead)

    def sample_obs(self, n: int) -> np.ndarray:
        n = chk.positive(n, "n")
        self._require_rows("sample")
        slots = self._slots(self._counter, n)
        self._counter += n
        return self._obs[slots]

    def peek_indices(self, n: int) -> np.ndarray:
        n = chk.as_int(n, "n")
        if n < 0:
            raise ValueError(f"n: expected n >= 0, got {n}")
        if n > 0:
            self._require_rows("sample")
        return (self._slots(self._counter, n) - self._start()) % self._capacity

    def gather(self, rows):
        rows = np.asarray(rows)
        if rows.dtype.kind not in "iu":
            raise TypeError(f"rows: expected an integer array, got {rows.dtype}")
        if rows.ndim != 1:
            raise ValueError(f"rows: expected shape (n,), got {chk.shape_str(rows.shape)}")
        rows = rows.astype(np.int64)
        bad = np.flatnonzero((rows < 0) | (rows >= self._size))
        if bad.size:
            raise ValueError(f"rows: expected row indices in [0, {self._size}), got "
                             f"{int(rows[bad[0]])} at position {int(bad[0])}")
        return self._take((self._start() + rows) % self._capacity, (len(rows),))

    def transitions(self):
        return self.gather(np.arange(self._size))

    # ------------------------------------------------------------------ files
    def _header(self) -> bytes:
        head = _HEADER.pack(_MAGIC, _VERSION, 0, self._capacity, self._od, self._ad, self._size,
                            self._write_pos, self._seed, self._counter)
        return head + struct.pack("<II", zlib.crc32(head), 0)

    def save(self, path) -> None:
        rows = self.transitions()
        blobs = [self._header()] + [np.ascontiguousarray(f).tobytes() for f in rows[:4]]
        blobs.append(rows[4].astype(np.uint8).tobytes())
        crc = 0
        for blob in blobs:
            crc = zlib.crc32(blob, crc)

        def write(f) -> None:
            for blob in blobs:
                f.write(blob)
            f.write(struct.pack("<I", crc))

        atomic_write(_fspath(path), write)

    @staticmethod
    def load(path) -> ReplayPool:
        path = _fspath(path)
        with open(path, "rb") as f:
            blob = f.read()

        def bad(why: str) -> FormatError:
            return FormatError(f"ReplayPool.load: {path} is not a valid pool file ({why})")

        if len(blob) < _HEADER_BYTES + 4:
            raise bad(f"truncated: {len(blob)} bytes, a pool file has at least {_HEADER_BYTES + 4}")
        if blob[:8] != _MAGIC:
            raise bad('wrong magic; expected "MBPOPOOL"')
        (head_crc,) = struct.unpack_from("<I", blob, 72)
        if head_crc != zlib.crc32(blob[:72]):
            raise bad("header checksum mismatch: file is corrupted")
        _, version, _, cap, od, ad, size, wpos, seed, counter = _HEADER.unpack_from(blob)
        if version != _VERSION:
            raise bad(f"unsupported version {version}, expected {_VERSION}")
        if not (1 <= cap <= _MAX_CAPACITY and 1 <= od <= _MAX_DIM and 1 <= ad <= _MAX_DIM
                and 0 <= size <= cap and 0 <= wpos < cap and (size == cap or wpos == size)):
            raise bad(f"inconsistent header: capacity {cap}, obs_dim {od}, act_dim {ad}, "
                      f"size {size}, write_pos {wpos}")
        expected = _HEADER_BYTES + size * (4 * (2 * od + ad + 1) + 1) + 4
        if len(blob) != expected:
            raise bad(f"{'truncated' if len(blob) < expected else 'trailing bytes'}: {len(blob)} "
                      f"bytes, expected {expected} for {size} rows")
        (data_crc,) = struct.unpack_from("<I", blob, len(blob) - 4)
        if data_crc != zlib.crc32(memoryview(blob)[:-4]):
            raise bad("data checksum mismatch: file is corrupted")
        try:  # the capacity is reserved (np.empty), not touched, but may exceed the address space
            pool = ReplayPool(cap, od, ad, seed)
        except MemoryError:
            raise MemoryError(f"ReplayPool.load: {path} asks for capacity {cap} rows of "
                              f"{4 * (2 * od + ad + 1) + 1} bytes, which cannot be allocated") \
                from None
        offset = _HEADER_BYTES
        fields = []
        for dtype, width in ((np.float32, od), (np.float32, ad), (np.float32, 0),
                             (np.float32, od), (np.uint8, 0)):
            count = size * max(width, 1)
            arr = np.frombuffer(blob, dtype=np.dtype(dtype).newbyteorder("<"), count=count,
                                offset=offset)
            offset += arr.nbytes
            fields.append(arr.reshape((size, width) if width else (size,)))
        try:
            for arr, name in zip(fields[:4], ("obs", "act", "rew", "next_obs"), strict=False):
                chk.require_finite_rows(arr, name)
            if (fields[4] > 1).any():
                raise ValueError("terminated: expected 0 or 1")
        except ValueError as exc:
            raise bad(str(exc)) from None
        # Oldest row at slot (write_pos - size) mod capacity, as in the saved pool.
        slots = (wpos - size + np.arange(size)) % cap
        for dst, src in zip(pool._fields(), fields, strict=False):
            dst[slots] = src
        pool._size, pool._write_pos, pool._counter = size, wpos, counter
        return pool


def _lead_dims(batch_size, num_batches) -> tuple[tuple[int, ...], int]:
    batch_size = chk.positive(batch_size, "batch_size")
    if num_batches is None:
        return (batch_size,), batch_size
    k = chk.positive(num_batches, "num_batches")
    return (k, batch_size), k * batch_size


def sample_mixed(real_pool: ReplayPool, model_pool: ReplayPool, batch_size: int,
                 real_ratio: float, num_batches: int | None = None):
    """Batches of floor(batch_size * real_ratio) real rows (first) then model rows; the
    same draws as the native op (see replay_pool.h)."""
    for pool, name in ((real_pool, "real_pool"), (model_pool, "model_pool")):
        if not isinstance(pool, ReplayPool):
            raise TypeError(f"{name}: expected a numba-backend ReplayPool, "
                            f"got {type(pool).__name__}")
    lead, total = _lead_dims(batch_size, num_batches)
    batch_size = lead[-1]
    real_ratio = float(real_ratio)
    if not 0.0 <= real_ratio <= 1.0:
        raise ValueError(f"real_ratio: expected a value in [0, 1], got {real_ratio}")
    n_real = int(batch_size * real_ratio)
    n_model = batch_size - n_real
    k = total // batch_size
    if (real_pool.obs_dim, real_pool.act_dim) != (model_pool.obs_dim, model_pool.act_dim):
        raise ValueError(f"model_pool: expected obs_dim {real_pool.obs_dim} and act_dim "
                         f"{real_pool.act_dim} like real_pool, got {model_pool.obs_dim} and "
                         f"{model_pool.act_dim}")
    if n_real and real_pool.size == 0:
        raise ValueError(f"real_pool: the pool is empty but real_ratio asks for {n_real} rows "
                         "per batch")
    if n_model and model_pool.size == 0:
        raise ValueError(f"model_pool: the pool is empty but real_ratio leaves {n_model} rows "
                         "per batch to it")
    same = real_pool is model_pool
    out = tuple(np.empty((total,) + f.shape[1:], f.dtype) for f in real_pool._fields())
    for pool, offset, n, first, stride in (
            (real_pool, 0, n_real, real_pool.rng_counter, batch_size if same else n_real),
            (model_pool, n_real, n_model,
             real_pool.rng_counter + n_real if same else model_pool.rng_counter,
             batch_size if same else n_model)):
        if n == 0:
            continue
        slots = np.empty(total, np.int64)
        for b in range(k):  # batch b draws first + b * stride ... + n - 1
            _draw_slots(np.uint64(pool.seed), np.uint64(first + b * stride), n, pool.size,
                        pool._start(), pool.capacity, slots, b * batch_size + offset, batch_size, n)
        col = np.arange(total) % batch_size
        cols = (col >= offset) & (col < offset + n)
        for dst, src in zip(out, pool._fields(), strict=False):
            dst[cols] = src[slots[cols]]
    if same:
        real_pool._counter += k * batch_size
    else:
        real_pool._counter += k * n_real
        model_pool._counter += k * n_model
    return tuple(f.reshape(lead + f.shape[1:]) for f in out[:4]) + (
        out[4].astype(np.bool_).reshape(lead),)
