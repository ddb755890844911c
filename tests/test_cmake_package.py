"""The installed CMake package: a C++ consumer builds against it with find_package."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import mbpo_fast as mf


def test_module_entry_point_matches_function():
    try:
        expected = mf.cmake_dir()
    except FileNotFoundError:
        expected = None
    out = subprocess.run([sys.executable, "-m", "mbpo_fast", "--cmake-dir"], capture_output=True,
                         text=True, timeout=120)
    if expected is None:
        assert out.returncode != 0 and "CMake package" in out.stderr
    else:
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == expected


def test_consumer_builds_and_runs(tmp_path, installed_cmake_prefix, cmake_build):
    """find_package(mbpo_fast) against the pip install, or a plain build's cmake --install
    (conftest.installed_cmake_prefix), then link mbpo_fast::core and run."""
    (tmp_path / "CMakeLists.txt").write_text(textwrap.dedent("""
        cmake_minimum_required(VERSION 3.24)
        project(consumer LANGUAGES CXX)
        find_package(mbpo_fast CONFIG REQUIRED)
        add_executable(app main.cpp)
        target_link_libraries(app PRIVATE mbpo_fast::core)
    """))
    (tmp_path / "main.cpp").write_text(textwrap.dedent("""
        #include <cstdio>
        #include "mbpo_fast/rng.h"
        int main() {
          float x[4];
          mbpo_fast::philox_fill_normal(7, 3, 0, 4, x);
          std::printf("%s %.9g %.9g %.9g %.9g\\n", mbpo_fast::version(), x[0], x[1], x[2], x[3]);
          return 0;
        }
    """))
    build = tmp_path / "build"
    cmake_build(tmp_path, build, f"-DCMAKE_PREFIX_PATH={installed_cmake_prefix}")
    out = subprocess.run([str(build / "app")], check=True, capture_output=True, text=True,
                         timeout=60)
    version, *values = out.stdout.split()
    assert version == mf.__version__
    from mbpo_fast import _backend

    expected = _backend.ops.philox_fill_normal(7, 3, 0, 4)
    assert [float(v) for v in values] == pytest.approx(expected.tolist(), rel=1e-6)
