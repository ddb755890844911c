"""Backend selection and build information."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import mbpo_fast as mf
from mbpo_fast import _backend


def test_backend_name():
    assert mf.backend() in ("native", "numba")
    assert mf.backend() in _backend.available()


def test_build_info_keys():
    info = mf.build_info()
    for key in ("cuda_compiled", "cuda_architectures", "compiler", "simd", "version", "backend"):
        assert key in info
    assert isinstance(info["cuda_compiled"], bool)
    assert isinstance(info["cuda_architectures"], list)
    if info["cuda_compiled"]:
        archs = info["cuda_architectures"]
        assert "80-real" in archs or "80" in ",".join(archs)
    # has_cuda needs both a CUDA build and a device.
    assert mf.has_cuda() == (info["cuda_compiled"] and _backend.ops.cuda_device_count() > 0)


def _run(env_backend: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MBPO_FAST_BACKEND=env_backend)
    return subprocess.run([sys.executable, "-c", "import mbpo_fast; print(mbpo_fast.backend())"],
                          env=env, capture_output=True, text=True, timeout=120)


def test_env_forces_numba():
    out = _run("numba")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "numba"


@pytest.mark.skipif("native" not in _backend.available(), reason="extension not built")
def test_env_native():
    out = _run("native")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "native"


def test_native_without_extension_fails_loudly(monkeypatch):
    real_load = _backend._load

    def fake_load(name):
        if name == "native":
            raise ImportError("No module named 'mbpo_fast._C'")
        return real_load(name)

    monkeypatch.setattr(_backend, "_load", fake_load)
    with pytest.raises(ImportError, match="MBPO_FAST_BACKEND=native"):
        _backend._select("native")
    # "auto" falls back to Numba instead of failing.
    assert _backend._select("auto")[0] == "numba"


def test_env_rejects_unknown_backend():
    out = _run("fortran")
    assert out.returncode != 0
    assert "MBPO_FAST_BACKEND" in out.stderr


def test_set_num_threads(backend):
    before = backend.num_threads()
    backend.set_num_threads(1)
    assert backend.num_threads() == 1
    backend.set_num_threads(before)
    with pytest.raises(ValueError):
        backend.set_num_threads(0)
