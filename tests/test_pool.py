"""ReplayPool and sample_mixed, on every backend, against a plain Python reference.

The reference computes expected samples with the documented formula: draw k of a pool is
row ``bounded(philox_u32(seed, STREAM_POOL_SAMPLE, rng_counter + k), len)`` of
``transitions()`` (oldest first).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import mbpo_fast as mf
from mbpo_fast import _backend

OD, AD = 4, 2
_RNG_OPS = _backend.get("numba")  # Philox reference (itself checked against C++ in test_rng)


def expected_rows(seed: int, counter: int, n: int, size: int) -> np.ndarray:
    words = _RNG_OPS.philox_fill_u32(seed, _RNG_OPS.STREAM_POOL_SAMPLE, counter, n)
    return ((words.astype(np.uint64) * np.uint64(size)) >> np.uint64(32)).astype(np.int64)


def make_rows(rng: np.random.Generator, n: int, od: int = OD, ad: int = AD):
    """Fresh random rows (never zeros) as float64, the way environments often return them."""
    return (rng.normal(size=(n, od)), rng.normal(size=(n, ad)), rng.normal(size=n),
            rng.normal(size=(n, od)), rng.random(n) < 0.3)


def as_f32_rows(rows):
    o, a, r, n, t = rows
    return (o.astype(np.float32), a.astype(np.float32), r.astype(np.float32),
            n.astype(np.float32), t.astype(bool))


def concat(*parts):
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(5))


def take(rows, idx):
    out = tuple(f[idx] for f in rows)
    return mf.Transition(*out) if isinstance(rows, mf.Transition) else out


def assert_rows_equal(got, want):
    assert isinstance(got, mf.Transition)
    for g, w, name in zip(got, want, mf.Transition._fields, strict=False):
        want_dtype = np.bool_ if name == "terminated" else np.float32
        assert g.dtype == want_dtype, name
        np.testing.assert_array_equal(g, np.asarray(w).astype(want_dtype), err_msg=name)


def state(pool):
    return (len(pool), pool.write_pos, pool.rng_counter, pool.capacity,
            tuple(f.tobytes() for f in pool.transitions()))


# ---------------------------------------------------------------------------- basics


def test_properties_and_storage_size(backend):
    pool = mf.ReplayPool(1000, 11, 3, seed=7)
    assert (len(pool), pool.capacity, pool.obs_dim, pool.act_dim, pool.seed) == (0, 1000, 11, 3, 7)
    assert pool.nbytes == 1000 * (4 * (11 + 3 + 1 + 11) + 1)
    assert "ReplayPool(len=0" in repr(pool)
    assert isinstance(mf.ReplayPool(1, 1, 1), mf.ReplayPool)


@pytest.mark.parametrize("extra", [-1, 0, 1, 13])  # B = cap-1, cap, cap+1, 2*cap+3
def test_add_batch_wraps(backend, rng, extra):
    cap = 10
    b = cap + extra if extra != 13 else 2 * cap + 3
    pool = mf.ReplayPool(cap, OD, AD)
    first, batch = make_rows(rng, 4), make_rows(rng, b)
    pool.add_batch(*first)
    pool.add_batch(*batch)
    everything = concat(as_f32_rows(first), as_f32_rows(batch))
    total = 4 + b
    assert len(pool) == min(cap, total)
    assert pool.write_pos == total % cap
    assert_rows_equal(pool.transitions(), take(everything, slice(max(0, total - cap), total)))


def test_single_add_equals_add_batch(backend, rng):
    rows = make_rows(rng, 17)
    a, b = mf.ReplayPool(6, OD, AD, seed=3), mf.ReplayPool(6, OD, AD, seed=3)
    for i in range(17):
        a.add(rows[0][i], rows[1][i], float(rows[2][i]), rows[3][i], bool(rows[4][i]))
    b.add_batch(*rows)
    assert state(a) == state(b)
    assert_rows_equal(a.sample(32), b.sample(32))


def test_add_accepts_scalars_and_arrays_of_any_layout(backend, rng):
    pool = mf.ReplayPool(8, OD, AD)
    o = np.asfortranarray(rng.normal(size=(OD, 3)))[:, 1]  # non-contiguous float64
    pool.add(o, [0.5, -0.5], np.float32(2.0), o.astype(np.float32), np.bool_(True))
    pool.add(o, np.array([1, 2]), 3, o, 0)
    pool.add(o, np.array([1, 2]), np.array(1.5), o, np.array(1.0))
    got = pool.transitions()
    np.testing.assert_array_equal(got.rew, [2.0, 3.0, 1.5])
    np.testing.assert_array_equal(got.terminated, [True, False, True])
    np.testing.assert_array_equal(got.obs[0], o.astype(np.float32))
    rows = make_rows(rng, 5)
    strided = tuple(np.repeat(f, 2, axis=0)[::2] for f in rows)  # non-contiguous views
    pool.add_batch(*strided[:4], rows[4].astype(np.int64))
    assert_rows_equal(take(pool.transitions(), slice(3, 8)), as_f32_rows(rows))


def test_add_batch_of_zero_rows_is_a_no_op(backend):
    pool = mf.ReplayPool(5, OD, AD)
    pool.add_batch(np.zeros((0, OD)), np.zeros((0, AD)), np.zeros(0), np.zeros((0, OD)),
                   np.zeros(0, bool))
    assert len(pool) == 0 and pool.write_pos == 0


def test_sample_follows_the_philox_formula(backend, rng):
    pool = mf.ReplayPool(50, OD, AD, seed=2**40 + 5)
    rows = as_f32_rows(make_rows(rng, 77))
    pool.add_batch(*rows)
    stored = take(rows, slice(27, 77))
    got = pool.sample(33)
    assert_rows_equal(got, take(stored, expected_rows(2**40 + 5, 0, 33, 50)))
    assert pool.rng_counter == 33
    np.testing.assert_array_equal(pool.peek_indices(9), expected_rows(2**40 + 5, 33, 9, 50))
    assert pool.rng_counter == 33
    obs = pool.sample_obs(9)
    assert obs.dtype == np.float32 and obs.shape == (9, OD)
    np.testing.assert_array_equal(obs, stored[0][expected_rows(2**40 + 5, 33, 9, 50)])
    assert pool.rng_counter == 42


def test_num_batches_equals_successive_samples(backend, rng):
    a, b = mf.ReplayPool(40, OD, AD, seed=11), mf.ReplayPool(40, OD, AD, seed=11)
    rows = make_rows(rng, 33)
    a.add_batch(*rows)
    b.add_batch(*rows)
    many = a.sample(16, num_batches=5)
    assert many.obs.shape == (5, 16, OD) and many.act.shape == (5, 16, AD)
    assert many.rew.shape == many.terminated.shape == (5, 16)
    for k in range(5):
        assert_rows_equal(take(many, k), b.sample(16))
    assert a.rng_counter == b.rng_counter == 80


def test_resize_keeps_newest_rows_in_order(backend, rng):
    pool = mf.ReplayPool(10, OD, AD, seed=1)
    rows = as_f32_rows(make_rows(rng, 14))
    pool.add_batch(*rows)
    pool.sample(5)
    pool.resize(6)
    assert (len(pool), pool.capacity, pool.rng_counter) == (6, 6, 5)
    assert_rows_equal(pool.transitions(), take(rows, slice(8, 14)))
    pool.resize(20)
    assert_rows_equal(pool.transitions(), take(rows, slice(8, 14)))
    more = as_f32_rows(make_rows(rng, 3))
    pool.add_batch(*more)
    assert_rows_equal(pool.transitions(), concat(take(rows, slice(8, 14)), more))
    assert pool.nbytes == 20 * (4 * (2 * OD + AD + 1) + 1)


def test_clear_keeps_capacity_and_rng_state(backend, rng):
    pool = mf.ReplayPool(10, OD, AD, seed=1)
    pool.add_batch(*make_rows(rng, 4))
    pool.sample(3)
    pool.clear()
    assert (len(pool), pool.write_pos, pool.capacity, pool.rng_counter) == (0, 0, 10, 3)
    with pytest.raises(ValueError, match="empty"):
        pool.sample(1)


def test_chi_square_uniformity(backend, rng):
    from scipy.stats import chisquare

    size = 97
    pool = mf.ReplayPool(128, 1, 1, seed=2024)
    ids = np.arange(size, dtype=np.float32)
    pool.add_batch(ids[:, None], ids[:, None], ids, ids[:, None], np.zeros(size, bool))
    draws = pool.sample(500, num_batches=200).rew.ravel().astype(np.int64)
    counts = np.bincount(draws, minlength=size)
    assert counts.sum() == 100_000 and len(counts) == size
    assert chisquare(counts).pvalue > 1e-4


# ---------------------------------------------------------------------------- sample_mixed


def test_sample_mixed_composition_and_counters(backend, rng):
    real, model = mf.ReplayPool(30, OD, AD, seed=1), mf.ReplayPool(60, OD, AD, seed=2)
    real_rows, model_rows = as_f32_rows(make_rows(rng, 30)), as_f32_rows(make_rows(rng, 45))
    real.add_batch(*real_rows)
    model.add_batch(*model_rows)
    bs, ratio, k = 256, 0.05, 4
    n_real = int(bs * ratio)  # 12
    got = mf.sample_mixed(real, model, bs, ratio, num_batches=k)
    assert got.obs.shape == (k, bs, OD)
    for b in range(k):
        want = concat(take(real_rows, expected_rows(1, b * n_real, n_real, 30)),
                      take(model_rows, expected_rows(2, b * (bs - n_real), bs - n_real, 45)))
        assert_rows_equal(take(got, b), want)
    assert (real.rng_counter, model.rng_counter) == (k * n_real, k * (bs - n_real))
    single = mf.sample_mixed(real, model, bs, ratio)
    assert single.obs.shape == (bs, OD)
    assert (real.rng_counter, model.rng_counter) == ((k + 1) * n_real, (k + 1) * (bs - n_real))


def test_sample_mixed_same_pool_equals_successive_draws(backend, rng):
    a, b = mf.ReplayPool(20, OD, AD, seed=9), mf.ReplayPool(20, OD, AD, seed=9)
    rows = make_rows(rng, 20)
    a.add_batch(*rows)
    b.add_batch(*rows)
    got = mf.sample_mixed(a, a, 10, 0.3, num_batches=3)
    for k in range(3):
        assert_rows_equal(take(got, k), b.sample(10))
    assert a.rng_counter == 30


def test_sample_mixed_ratio_edges_and_errors(backend, rng):
    real, model, empty = (mf.ReplayPool(10, OD, AD, seed=s) for s in (1, 2, 3))
    real.add_batch(*make_rows(rng, 10))
    model.add_batch(*make_rows(rng, 10))
    assert mf.sample_mixed(real, empty, 8, 1.0).obs.shape == (8, OD)
    assert mf.sample_mixed(empty, model, 8, 0.0).obs.shape == (8, OD)
    before = (state(real), state(model))
    with pytest.raises(ValueError, match="model_pool: the pool is empty"):
        mf.sample_mixed(real, empty, 8, 0.5)
    with pytest.raises(ValueError, match="real_pool: the pool is empty"):
        mf.sample_mixed(empty, model, 8, 0.5)
    for ratio in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="real_ratio"):
            mf.sample_mixed(real, model, 8, ratio)
    with pytest.raises(ValueError, match="batch_size"):
        mf.sample_mixed(real, model, 0, 0.5)
    with pytest.raises(ValueError, match="num_batches"):
        mf.sample_mixed(real, model, 8, 0.5, num_batches=0)
    with pytest.raises(TypeError, match="model_pool: expected a ReplayPool"):
        mf.sample_mixed(real, "pool", 8, 0.5)
    with pytest.raises(ValueError, match="model_pool: expected obs_dim"):
        mf.sample_mixed(real, mf.ReplayPool(10, OD + 1, AD), 8, 0.0)
    assert (state(real), state(model)) == before


# ---------------------------------------------------------------------------- bad input

def _bad_calls(rng):
    o, a, r, n, t = make_rows(rng, 5)
    return [
        ("add_batch", (o[:, :3], a, r, n, t), ValueError,
         r"obs: expected shape \(B, 4\), got \(5, 3\)"),
        ("add_batch", (o[0], a, r, n, t), ValueError, r"obs: expected shape \(B, 4\), got \(4,\)"),
        ("add_batch", (o, a[:4], r, n, t), ValueError,
         r"act: expected shape \(5, 2\).*got \(4, 2\)"),
        ("add_batch", (o, a, r[:, None], n, t), ValueError, r"rew: expected shape \(5,\)"),
        ("add_batch", (o, a, r, n.T, t), ValueError, r"next_obs: expected shape \(5, 4\)"),
        ("add_batch", (o, a, r, n, t[:3]), ValueError, r"terminated: expected shape \(5,\)"),
        ("add_batch", (o.astype(str), a, r, n, t), TypeError, "obs"),
        ("add_batch", (o, a.astype(complex), r, n, t), TypeError, "act"),
        ("add_batch", (o, a, r, n, np.array(["x"] * 5)), TypeError, "terminated"),
        ("add_batch", (o, a, r, n, t * 2.0 + 0.5), ValueError, "terminated: expected 0 or 1"),
        ("add_batch", (o, a, np.where(np.arange(5) == 3, np.nan, r), n, t), ValueError,
         r"rew: non-finite value \(NaN or Inf\) in row 3"),
        ("add_batch", (o, a, r, np.where(np.arange(5)[:, None] == 1, np.inf, n), t), ValueError,
         "next_obs: non-finite"),
        ("add", (o[0], a[0], 1.0, n[0][:3], True), ValueError,
         r"next_obs: expected shape \(4,\), got \(3,\)"),
        ("add", (o[0], a, 1.0, n[0], True), ValueError,
         r"act: expected shape \(2,\), got \(5, 2\)"),
        ("add", (o[0], a[0], np.ones(2), n[0], True), ValueError, "rew: expected shape"),
        ("add", (o[0], a[0], float("nan"), n[0], True), ValueError, "rew: non-finite"),
        ("add", (np.full(OD, np.inf, np.float32), a[0], 1.0, n[0], True), ValueError,
         "obs: non-finite"),
        ("add", (o[0], a[0], "1.0", n[0], True), TypeError, "rew"),
        ("add", (o[0], a[0], 1.0, n[0], 2), ValueError, "terminated: expected 0 or 1"),
        ("add", (o[0], a[0], 1.0, n[0], "yes"), TypeError, "terminated"),
        ("add", (None, a[0], 1.0, n[0], True), TypeError, "obs"),
        ("sample", (0,), ValueError, "batch_size: expected batch_size >= 1"),
        ("sample", (-3,), ValueError, "batch_size"),
        ("sample", (4, 0), ValueError, "num_batches"),
        ("sample", (2.5,), TypeError, "batch_size"),
        ("sample", (4, 2.0), TypeError, "num_batches"),
        ("sample_obs", (0,), ValueError, "n: expected n >= 1"),
        ("resize", (0,), ValueError, "new_capacity"),
        ("gather", (np.array([0, 7]),), ValueError, r"rows: expected row indices in \[0, 6\)"),
        ("gather", (np.array([0.5]),), TypeError, "rows"),
    ]


def test_bad_input_raises_and_changes_nothing(backend, rng):
    pool = mf.ReplayPool(10, OD, AD, seed=4)
    pool.add_batch(*make_rows(rng, 6))
    pool.sample(3)
    before = state(pool)
    for method, args, exc, pattern in _bad_calls(rng):
        with pytest.raises(exc, match=pattern):
            getattr(pool, method)(*args)
        assert state(pool) == before, method


def test_bad_constructor_and_empty_pool(backend):
    for args, pattern in [((0, 4, 2), "capacity"), ((-5, 4, 2), "capacity"),
                          ((5, 0, 2), "obs_dim"), ((5, 4, 0), "act_dim"),
                          ((5, 4, 2, -1), "seed"), ((5, 4, 2, 2**64), "seed")]:
        with pytest.raises(ValueError, match=pattern):
            mf.ReplayPool(*args)
    with pytest.raises(TypeError):
        mf.ReplayPool(10.5, 4, 2)
    with pytest.raises(TypeError, match="seed"):
        mf.ReplayPool(10, 4, 2, seed=1.5)
    numpy_ints = mf.ReplayPool(np.int64(10), np.int32(4), np.uint8(2), seed=np.uint64(2**63))
    assert (numpy_ints.capacity, numpy_ints.seed) == (10, 2**63)
    empty = mf.ReplayPool(5, OD, AD)
    for call in (lambda: empty.sample(4), lambda: empty.sample_obs(2), lambda: empty.sample(4, 3)):
        with pytest.raises(ValueError, match="empty"):
            call()
    assert empty.rng_counter == 0
    assert len(empty.transitions().obs) == 0


# ---------------------------------------------------------------------------- files


def test_save_load_mid_sequence_continues_identically(backend, rng, tmp_path):
    pool = mf.ReplayPool(25, OD, AD, seed=2**63 + 17)
    pool.add_batch(*make_rows(rng, 31))
    pool.sample(7)
    path = tmp_path / "pool.bin"
    pool.save(path)
    loaded = mf.ReplayPool.load(str(path))
    assert state(loaded) == state(pool)
    assert loaded.seed == 2**63 + 17
    for n in (5, 64, 1):
        assert_rows_equal(loaded.sample(n), pool.sample(n))
    more = make_rows(rng, 9)
    pool.add_batch(*more)
    loaded.add_batch(*more)
    assert state(loaded) == state(pool)
    assert os.listdir(tmp_path) == ["pool.bin"]  # no temporary file left behind


def test_save_empty_and_not_full_pools(backend, tmp_path, rng):
    for n in (0, 3):
        pool = mf.ReplayPool(8, OD, AD, seed=5)
        pool.add_batch(*make_rows(rng, n))
        pool.save(tmp_path / "p.bin")
        assert state(mf.ReplayPool.load(tmp_path / "p.bin")) == state(pool)


def test_save_overwrites_atomically_and_reports_io_errors(backend, rng, tmp_path):
    pool = mf.ReplayPool(8, OD, AD)
    pool.add_batch(*make_rows(rng, 5))
    path = tmp_path / "p.bin"
    path.write_bytes(b"old")
    pool.save(path)
    assert state(mf.ReplayPool.load(path)) == state(pool)
    with pytest.raises(OSError):
        pool.save(Path("/proc/definitely/not/writable.bin"))
    assert state(mf.ReplayPool.load(path)) == state(pool)
    with pytest.raises(OSError):
        mf.ReplayPool.load(tmp_path / "nope.bin")


def test_corrupted_files_raise_format_error(backend, rng, tmp_path):
    pool = mf.ReplayPool(8, OD, AD, seed=3)
    pool.add_batch(*make_rows(rng, 11))
    path = tmp_path / "p.bin"
    pool.save(path)
    good = path.read_bytes()
    header, data = 80, len(good) - 84
    cases = {
        "empty": b"",
        "header only": good[:header],
        "truncated by one": good[:-1],
        "truncated mid-data": good[: header + data // 2],
        "trailing byte": good + b"\0",
        "wrong magic": b"NOTAPOOL" + good[8:],
    }
    for pos in (9, 20, 44, 60, 70, header + 3, header + data // 2, len(good) - 6, len(good) - 2):
        flipped = bytearray(good)
        flipped[pos] ^= 0x04
        cases[f"bit flip at {pos}"] = bytes(flipped)
    for name, blob in cases.items():
        path.write_bytes(blob)
        with pytest.raises(ValueError, match="not a valid pool file") as info:
            mf.ReplayPool.load(path)
        assert isinstance(info.value, backend.FormatError), name


def test_file_with_valid_checksum_but_nan_is_rejected(backend, rng, tmp_path):
    import struct
    import zlib

    pool = mf.ReplayPool(4, OD, AD)
    pool.add_batch(*make_rows(rng, 2))
    path = tmp_path / "p.bin"
    pool.save(path)
    blob = bytearray(path.read_bytes())
    blob[80:84] = struct.pack("<f", float("nan"))  # obs[0, 0]
    blob[-4:] = struct.pack("<I", zlib.crc32(bytes(blob[:-4])))
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="non-finite"):
        mf.ReplayPool.load(path)


# ---------------------------------------------------------------------------- backends agree


@pytest.mark.skipif(len(_backend.available()) < 2, reason="needs the native extension and Numba")
def test_backends_agree_exactly_and_share_files(rng, tmp_path):
    rows = [make_rows(rng, n) for n in (13, 1, 40, 7)]
    results, files = {}, {}
    for name in _backend.available():
        with _backend.use(name):
            pool = mf.ReplayPool(32, OD, AD, seed=123456789)
            other = mf.ReplayPool(16, OD, AD, seed=42)
            out = []
            for r in rows:
                pool.add_batch(*r)
                other.add_batch(*take(r, slice(0, 3)))
                out.append(pool.sample(17))
                out.append(pool.sample(5, num_batches=3))
                out.append((pool.sample_obs(6),))
                out.append(mf.sample_mixed(pool, other, 20, 0.25, num_batches=2))
            pool.resize(20)
            out.append(pool.transitions())
            files[name] = tmp_path / f"{name}.bin"
            pool.save(files[name])
            results[name] = out
    native, numba = results["native"], results["numba"]
    for a, b in zip(native, numba, strict=False):
        for x, y in zip(a, b, strict=False):
            np.testing.assert_array_equal(x, y)
    assert files["native"].read_bytes() == files["numba"].read_bytes()
    stored = numba[-1]  # transitions() after the resize
    for writer in files:
        for reader in _backend.available():
            with _backend.use(reader):
                loaded = mf.ReplayPool.load(files[writer])
            assert_rows_equal(loaded.transitions(), stored)
            counter = loaded.rng_counter
            want = take(stored, expected_rows(123456789, counter, 9, 20))
            assert_rows_equal(loaded.sample(9), want)


@pytest.mark.skipif(len(_backend.available()) < 2, reason="needs the native extension and Numba")
def test_sample_mixed_rejects_pools_of_different_backends(rng):
    with _backend.use("native"):
        a = mf.ReplayPool(4, OD, AD)
    with _backend.use("numba"):
        b = mf.ReplayPool(4, OD, AD)
    with pytest.raises(TypeError, match="same backend"):
        mf.sample_mixed(a, b, 4, 0.5)


# ---------------------------------------------------------------------------- memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_storage_is_exactly_the_arrays_and_sampling_copies_nothing(backend):
    cap, od, ad = 1_000_000, 11, 3
    rows = (np.ones((cap, od), np.float32), np.ones((cap, ad), np.float32),
            np.ones(cap, np.float32), np.ones((cap, od), np.float32), np.zeros(cap, bool))
    before = _rss_bytes()
    pool = mf.ReplayPool(cap, od, ad)
    assert pool.nbytes == cap * (4 * (2 * od + ad + 1) + 1) == 105_000_000
    pool.add_batch(*rows)
    filled = _rss_bytes()
    # Touching every row commits the storage once: no second copy (allowing for page
    # rounding and allocator noise).
    assert 0.9 * pool.nbytes < filled - before < 1.1 * pool.nbytes + (16 << 20)
    # One call of each first: the Numba backend compiles its kernels there (~50 MB of LLVM
    # memory with numba 0.68), which is not a copy of the pool.
    pool.sample(256, num_batches=20)
    pool.add(rows[0][0], rows[1][0], 1.0, rows[3][0], False)
    pool.sample_obs(10)
    warm = _rss_bytes()
    for _ in range(50):
        pool.sample(256, num_batches=20)
        pool.add(rows[0][0], rows[1][0], 1.0, rows[3][0], False)
    pool.sample_obs(100_000)
    assert _rss_bytes() - warm < 32 << 20


# ---------------------------------------------------------------------------- stateful


class PoolMachine(RuleBasedStateMachine):
    """Random operation sequences against a plain list-of-rows FIFO model."""

    backend_name = "numba"

    def __init__(self) -> None:
        super().__init__()
        self.cap = 7
        self.seed = 99
        with _backend.use(self.backend_name):
            self.pool = mf.ReplayPool(self.cap, 3, 2, seed=self.seed)
        self.rows: list[tuple] = []  # oldest first, each (obs, act, rew, next_obs, term)
        self.counter = 0
        self.rng = np.random.default_rng(0)
        self.dir = tempfile.mkdtemp(prefix="mbpo_pool_")

    def teardown(self) -> None:
        for f in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, f))
        os.rmdir(self.dir)

    def _ref_add(self, batch) -> None:
        for i in range(len(batch[0])):
            self.rows.append(tuple(np.asarray(f[i]) for f in as_f32_rows(batch)))
        self.rows = self.rows[-self.cap:]

    def _ref_table(self):
        if not self.rows:
            return None
        return tuple(np.stack([r[i] for r in self.rows]) for i in range(5))

    @rule(n=st.sampled_from([0, 1, 2, 5, 6, 7, 8, 17]))
    def add_batch(self, n):
        batch = make_rows(self.rng, n, 3, 2)
        self.pool.add_batch(*batch)
        self._ref_add(batch)

    @rule()
    def add_one(self):
        batch = make_rows(self.rng, 1, 3, 2)
        self.pool.add(batch[0][0], batch[1][0], float(batch[2][0]), batch[3][0], bool(batch[4][0]))
        self._ref_add(batch)

    @rule()
    def add_bad_batch(self):
        batch = list(make_rows(self.rng, 3, 3, 2))
        batch[1][2, 1] = np.nan
        with pytest.raises(ValueError):
            self.pool.add_batch(*batch)

    @precondition(lambda self: self.rows)
    @rule(n=st.integers(1, 12), k=st.sampled_from([None, 1, 3]))
    def sample(self, n, k):
        got = self.pool.sample(n, num_batches=k)
        total = n * (k or 1)
        idx = expected_rows(self.seed, self.counter, total, len(self.rows))
        lead = (k, n) if k else (n,)
        want = tuple(f[idx].reshape(lead + f.shape[1:]) for f in self._ref_table())
        assert_rows_equal(got, want)
        self.counter += total

    @precondition(lambda self: self.rows)
    @rule(n=st.integers(1, 9))
    def sample_obs(self, n):
        idx = expected_rows(self.seed, self.counter, n, len(self.rows))
        np.testing.assert_array_equal(self.pool.sample_obs(n), self._ref_table()[0][idx])
        self.counter += n

    @precondition(lambda self: not self.rows)
    @rule()
    def sample_empty(self):
        with pytest.raises(ValueError, match="empty"):
            self.pool.sample(3)

    @rule(cap=st.integers(1, 12))
    def resize(self, cap):
        self.pool.resize(cap)
        self.cap = cap
        self.rows = self.rows[-cap:]

    @rule()
    def clear(self):
        self.pool.clear()
        self.rows = []

    @rule(other=st.sampled_from(["native", "numba"]))
    def save_load(self, other):
        if other not in _backend.available():
            other = self.backend_name
        path = os.path.join(self.dir, "p.bin")
        self.pool.save(path)
        with _backend.use(other):
            self.pool = mf.ReplayPool.load(path)

    @invariant()
    def matches_reference(self):
        assert len(self.pool) == len(self.rows)
        assert self.pool.capacity == self.cap
        assert self.pool.rng_counter == self.counter
        table = self._ref_table()
        if table is None:
            assert len(self.pool.transitions().obs) == 0
        else:
            assert_rows_equal(self.pool.transitions(), table)


_STATEFUL = settings(max_examples=25, stateful_step_count=25, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", _backend.available())
def test_stateful_against_reference(name):
    machine = type(f"PoolMachine_{name}", (PoolMachine,), {"backend_name": name})
    machine.TestCase.settings = _STATEFUL
    machine.TestCase().runTest()


# ---------------------------------------------------------------------------- threads


@pytest.mark.skipif("native" not in _backend.available(), reason="needs the native extension")
def test_native_pool_is_safe_to_share_between_threads(rng):
    """Large calls release the GIL; the per-pool lock must keep resize/add/sample apart."""
    import threading

    with _backend.use("native"):
        pool = mf.ReplayPool(20_000, OD, AD, seed=1)
        model = mf.ReplayPool(5_000, OD, AD, seed=2)
    rows = make_rows(rng, 30_000)
    model.add_batch(*rows)
    errors = []

    def writer():
        try:
            for i in range(15):
                pool.add_batch(*rows)
                pool.resize(10_000 + 1_000 * (i % 7))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader():
        try:
            for _ in range(15):
                if len(pool):
                    pool.sample(2_000, num_batches=10)
                    mf.sample_mixed(pool, model, 256, 0.5, num_batches=40)
                pool.transitions()
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=f) for f in (writer, reader, reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    expected = as_f32_rows(rows)
    got = pool.transitions()
    assert len(got.obs) == len(pool) == pool.capacity == 10_000  # last resize: 10,000
    assert_rows_equal(got, take(expected, slice(30_000 - len(pool), 30_000)))


def test_save_creates_missing_parent_directories(backend, rng, tmp_path):
    # Both backends behave alike: the native writer and the Numba one.
    pool = mf.ReplayPool(8, OD, AD, seed=2)
    pool.add_batch(*make_rows(rng, 6))
    path = tmp_path / "a" / "b" / "pool.bin"
    pool.save(path)
    assert state(mf.ReplayPool.load(path)) == state(pool)
