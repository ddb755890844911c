"""Numba mirror of csrc/include/mbpo_fast/rng.h: the same Philox4x32-10 streams.

Every value is a pure function of (seed, stream, index); see rng.h for the layout. All
integer arithmetic is done in np.uint64 and masked to 32 bits (mixing signed and
unsigned integers in Numba would promote to float64).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint64(0x9E3779B9)
_W1 = np.uint64(0xBB67AE85)
_MASK = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_S8 = np.uint64(8)
_TWO_PI = 6.283185307179586
_INV24 = 1.0 / 16777216.0

STREAM_USER = 0
STREAM_POOL_SAMPLE = 1 << 32
STREAM_MEMBER_CHOICE = 2 << 32
STREAM_MODEL_NOISE = 3 << 32
STREAM_POLICY_NOISE = 4 << 32
STREAM_ROLLOUT_START = 5 << 32
STREAM_PLAN_SEED = 6 << 32
STREAM_PLAN_ACTION = 7 << 32


@nb.njit(cache=True, inline="always")
def _philox(c0, c1, c2, c3, k0, k1):
    c0 = np.uint64(c0) & _MASK
    c1 = np.uint64(c1) & _MASK
    c2 = np.uint64(c2) & _MASK
    c3 = np.uint64(c3) & _MASK
    k0 = np.uint64(k0) & _MASK
    k1 = np.uint64(k1) & _MASK
    for _ in range(10):
        p0 = _M0 * c0
        p1 = _M1 * c2
        n0 = (p1 >> _S32) ^ c1 ^ k0
        n2 = (p0 >> _S32) ^ c3 ^ k1
        c1 = p1 & _MASK
        c3 = p0 & _MASK
        c0 = n0
        c2 = n2
        k0 = (k0 + _W0) & _MASK
        k1 = (k1 + _W1) & _MASK
    return c0, c1, c2, c3


@nb.njit(cache=True, inline="always")
def philox_block(seed, stream, block):
    """The 4 words (as uint64 holding uint32 values) of `block` in (seed, stream)."""
    seed = np.uint64(seed)
    stream = np.uint64(stream)
    block = np.uint64(block)
    return _philox(block & _MASK, block >> _S32, stream & _MASK, stream >> _S32,
                   seed & _MASK, seed >> _S32)


@nb.njit(cache=True, inline="always")
def random_u32(seed, stream, index):
    index = np.uint64(index)
    b = philox_block(seed, stream, index >> np.uint64(2))
    lane = index & np.uint64(3)
    if lane == 0:
        return b[0]
    if lane == 1:
        return b[1]
    if lane == 2:
        return b[2]
    return b[3]


@nb.njit(cache=True, inline="always")
def bounded_u32(word, n):
    """Multiply-shift map of a uint32 word to [0, n)."""
    return np.int64((np.uint64(word) * np.uint64(n)) >> _S32)


@nb.njit(cache=True, inline="always")
def random_index(seed, stream, index, n):
    return bounded_u32(random_u32(seed, stream, index), n)


@nb.njit(cache=True, inline="always")
def box_muller(w0, w1, second):
    u1 = (float(np.uint64(w0) >> _S8) + 1.0) * _INV24
    u2 = float(np.uint64(w1) >> _S8) * _INV24
    r = math.sqrt(-2.0 * math.log(u1))
    theta = _TWO_PI * u2
    if second:
        return np.float32(r * math.sin(theta))
    return np.float32(r * math.cos(theta))


@nb.njit(cache=True, inline="always")
def random_normal(seed, stream, index):
    index = np.uint64(index)
    b = philox_block(seed, stream, index >> np.uint64(2))
    lane = index & np.uint64(3)
    if lane < 2:
        return box_muller(b[0], b[1], lane == 1)
    return box_muller(b[2], b[3], lane == 3)


@nb.njit(cache=True)
def _fill_u32(seed, stream, offset, out):
    for i in range(out.shape[0]):
        out[i] = np.uint32(random_u32(seed, stream, np.uint64(offset) + np.uint64(i)))


@nb.njit(cache=True)
def _fill_normal(seed, stream, offset, out):
    for i in range(out.shape[0]):
        out[i] = random_normal(seed, stream, np.uint64(offset) + np.uint64(i))


def _check_u64(name: str, value: int) -> int:
    value = int(value)
    if not 0 <= value < 1 << 64:
        raise ValueError(f"{name}: expected an integer in [0, 2**64), got {value}")
    return value


def _check_n(n: int) -> int:
    n = int(n)
    if n < 0:
        raise ValueError(f"n: expected n >= 0, got {n}")
    return n


def philox4x32_10(counter, key) -> tuple[int, int, int, int]:
    """One Philox4x32-10 block: 4 uint32 words (same as the native op)."""
    counter, key = list(counter), list(key)
    if len(counter) != 4:
        raise ValueError(f"counter: expected 4 words, got {len(counter)}")
    if len(key) != 2:
        raise ValueError(f"key: expected 2 words, got {len(key)}")
    return tuple(int(w) for w in _philox(*counter, *key))


def philox_fill_u32(seed: int, stream: int, offset: int, n: int) -> np.ndarray:
    """uint32 words number offset..offset+n-1 of (seed, stream)."""
    out = np.empty(_check_n(n), dtype=np.uint32)
    _fill_u32(np.uint64(_check_u64("seed", seed)), np.uint64(_check_u64("stream", stream)),
              np.uint64(_check_u64("offset", offset)), out)
    return out


def philox_fill_normal(seed: int, stream: int, offset: int, n: int) -> np.ndarray:
    """float32 standard normals number offset..offset+n-1 of (seed, stream)."""
    out = np.empty(_check_n(n), dtype=np.float32)
    _fill_normal(np.uint64(_check_u64("seed", seed)), np.uint64(_check_u64("stream", stream)),
                 np.uint64(_check_u64("offset", offset)), out)
    return out
