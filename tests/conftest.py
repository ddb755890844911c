"""Shared fixtures: every backend-dependent test runs once per available backend."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mbpo_fast import _backend


def _has_cuda_device() -> bool:
    try:
        import torch
    except ImportError:
        return False
    import mbpo_fast

    return mbpo_fast.has_cuda() and torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _has_cuda_device():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none present)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=_backend.available())
def backend(request):
    """Runs the test under each available backend ("native", "numba"); yields the ops module."""
    with _backend.use(request.param) as ops:
        yield ops


@pytest.fixture
def rng():
    """A fresh numpy Generator; seeded per test so failures reproduce."""
    return np.random.default_rng(12345)


# ------------------------------------------------------------------ C++ consumers (CMake)
REPO = Path(__file__).resolve().parents[1]


def _checked(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Runs cmd; on failure raises with its full output (a CMake error is long)."""
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    if out.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def _cmake_build(source: Path, build: Path, *defines: str) -> None:
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    _checked(["cmake", "-S", str(source), "-B", str(build), *generator, *defines])
    _checked(["cmake", "--build", str(build), "-j2"])


@pytest.fixture(scope="session")
def checked_run():
    """``checked_run(cmd) -> CompletedProcess``; a failure raises with the command's output."""
    return _checked


@pytest.fixture(scope="session")
def cmake_build():
    """``cmake_build(source_dir, build_dir, *-D defines)``: configure and build (-j2)."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake not on PATH")
    return _cmake_build


@pytest.fixture(scope="session")
def installed_cmake_prefix(tmp_path_factory, cmake_build) -> str:
    """What a C++ consumer puts on CMAKE_PREFIX_PATH: the pip install's package dir
    (``mf.cmake_dir()``) when there is one; else this source tree's core built with plain
    CMake and ``cmake --install``-ed into a temporary prefix, as a C++-only user does (so the
    consumer tests run in a developer's in-place setup too). That build directory is kept
    under build/ so that reruns only rebuild what changed."""
    import mbpo_fast

    try:
        return mbpo_fast.cmake_dir()
    except FileNotFoundError:
        pass
    if not (REPO / "CMakeLists.txt").is_file() or not (REPO / "csrc").is_dir():
        pytest.skip("mbpo_fast's CMake package is not installed (mf.cmake_dir() found none) and "
                    "there is no source tree to build and install one from")
    build = REPO / "build" / "test-installed-core"
    cmake_build(REPO, build, "-DCMAKE_BUILD_TYPE=Release", "-DMBPO_FAST_PYTHON=OFF",
                "-DMBPO_FAST_BUILD_TESTS=OFF", "-DMBPO_FAST_CUDA=OFF")
    prefix = tmp_path_factory.mktemp("mbpo_fast_prefix")
    _checked(["cmake", "--install", str(build), "--prefix", str(prefix)])
    assert (prefix / "lib" / "cmake" / "mbpo_fast" / "mbpo_fastConfig.cmake").is_file() or \
        (prefix / "lib64" / "cmake" / "mbpo_fast" / "mbpo_fastConfig.cmake").is_file()
    return str(prefix)


@pytest.fixture
def one_torch_thread():
    """One torch intra-op thread for the test: the networks in the tests are tiny, one thread
    is as fast, and it cannot stall on a descheduled OpenMP worker on a shared 2-core machine
    (two threads did, by up to 100x)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
