"""Philox4x32-10: known answers, backend agreement, normal statistics, CUDA fill."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mbpo_fast import _backend

KATS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter,key,expected", KATS)
def test_known_answer_vectors(backend, counter, key, expected):
    assert tuple(backend.philox4x32_10(counter, key)) == expected


def test_stream_layout(backend):
    """Element i of (seed, stream) is lane i % 4 of block (i // 4)."""
    seed, stream = 0x0123456789ABCDEF, backend.STREAM_MODEL_NOISE + 5
    words = backend.philox_fill_u32(seed, stream, 0, 40)
    for i in range(40):
        block = backend.philox4x32_10(
            (i // 4, 0, stream & 0xFFFFFFFF, stream >> 32), (seed & 0xFFFFFFFF, seed >> 32)
        )
        assert words[i] == block[i % 4]


@pytest.mark.skipif(len(_backend.available()) < 2, reason="needs both backends")
@pytest.mark.parametrize("seed,stream,offset",
                         [(0, 0, 0), (2**64 - 1, 7 << 32, 13), (42, 3, 2**40 + 1)])
def test_backends_draw_identical_streams(seed, stream, offset):
    native, numba = _backend.get("native"), _backend.get("numba")
    n = 10_001
    np.testing.assert_array_equal(
        native.philox_fill_u32(seed, stream, offset, n),
        numba.philox_fill_u32(seed, stream, offset, n),
    )
    a = native.philox_fill_normal(seed, stream, offset, n)
    b = numba.philox_fill_normal(seed, stream, offset, n)
    # Both compute Box-Muller in float64 and round once, so they agree to the last bit
    # except (at most) in a double-rounding tie.
    assert np.count_nonzero(a != b) <= 1
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_fill_is_offset_consistent(backend):
    whole = backend.philox_fill_normal(9, 1, 0, 5000)
    np.testing.assert_array_equal(backend.philox_fill_normal(9, 1, 1234, 100), whole[1234:1334])


def test_normal_statistics(backend):
    x = backend.philox_fill_normal(2024, backend.STREAM_USER, 0, 200_000).astype(np.float64)
    assert x.dtype == np.float64 and np.isfinite(x).all()
    n = x.size
    assert abs(x.mean()) < 5 / np.sqrt(n)
    assert abs(x.var() - 1) < 5 * np.sqrt(2 / n)
    assert stats.kstest(x, "norm").pvalue > 1e-3
    # Skewness/kurtosis of a real normal, and independence of neighbours (Box-Muller pairs).
    assert abs(stats.skew(x)) < 0.03
    assert abs(stats.kurtosis(x)) < 0.06
    assert abs(np.corrcoef(x[:-1], x[1:])[0, 1]) < 0.01


def test_u32_uniformity(backend):
    w = backend.philox_fill_u32(5, backend.STREAM_POOL_SAMPLE, 0, 160_000)
    counts = np.bincount((w >> 28).astype(np.int64), minlength=16)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_bad_arguments(backend):
    with pytest.raises(ValueError, match="n"):
        backend.philox_fill_normal(0, 0, 0, -1)
    with pytest.raises(ValueError, match="counter"):
        backend.philox4x32_10((0, 0, 0), (0, 0))
    with pytest.raises(ValueError, match="key"):
        backend.philox4x32_10((0, 0, 0, 0), (0,))


@pytest.mark.gpu
def test_cuda_fill_matches_cpu():
    import torch

    native = _backend.get("native")
    out = torch.empty(100_003, device="cuda", dtype=torch.float32)
    native.cuda_philox_fill_normal(77, native.STREAM_MODEL_NOISE, 5, out.numel(), out.data_ptr(),
                                   torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    cpu = native.philox_fill_normal(77, native.STREAM_MODEL_NOISE, 5, out.numel())
    np.testing.assert_allclose(out.cpu().numpy(), cpu, rtol=1e-6, atol=1e-6)
