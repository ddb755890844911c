"""safetensors I/O and atomic writes."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from mbpo_fast.io import atomic_write, load_safetensors, require_tensor, save_safetensors


def test_round_trip_matches_safetensors_package(tmp_path, rng):
    tensors = {
        "w": rng.standard_normal((3, 4, 5)).astype(np.float32),
        "idx": rng.integers(0, 7, size=5).astype(np.int64),
        "d": rng.standard_normal(2),
    }
    path = tmp_path / "t.safetensors"
    save_safetensors(path, tensors, {"obs_dim": 11})
    got, meta = load_safetensors(path)
    assert meta == {"obs_dim": "11"}
    for k, v in tensors.items():
        np.testing.assert_array_equal(got[k], v)
        assert got[k].dtype == v.dtype
    safetensors = pytest.importorskip("safetensors.numpy")
    ref = safetensors.load_file(str(path))
    for k, v in tensors.items():
        np.testing.assert_array_equal(ref[k], v)


def test_truncated_and_corrupted_files_raise(tmp_path, rng):
    path = tmp_path / "t.safetensors"
    save_safetensors(path, {"w": rng.standard_normal((10, 10)).astype(np.float32)})
    blob = path.read_bytes()
    for cut in (0, 4, 8, 20, len(blob) - 1):
        path.write_bytes(blob[:cut])
        with pytest.raises(ValueError, match="safetensors"):
            load_safetensors(path)
    path.write_bytes(blob[:8] + b"#" + blob[9:])
    with pytest.raises(ValueError):
        load_safetensors(path)
    path.write_bytes(blob + b"xx")
    with pytest.raises(ValueError, match="trailing"):
        load_safetensors(path)
    header = json.dumps({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(ValueError, match="do not match"):
        load_safetensors(path)


def test_require_tensor(tmp_path):
    t = {"a": np.zeros((2, 3), np.float32)}
    assert require_tensor(t, "a", (2, 3), np.float32).shape == (2, 3)
    with pytest.raises(ValueError, match="missing tensor 'b'"):
        require_tensor(t, "b", (2, 3), np.float32)
    with pytest.raises(ValueError, match=r"expected shape \(3, 2\)"):
        require_tensor(t, "a", (3, 2), np.float32)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write(path, lambda f: f.write(b"old"))

    def crash(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, crash)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temp file left behind


def test_atomic_write_gives_the_umask_mode_not_mkstemps_0600(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "f.bin", lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o640
