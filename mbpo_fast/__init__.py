"""mbpo_fast: Model-Based Policy Optimization with native (C++/CUDA) hot paths.

Quick start::

    import mbpo_fast as mf
    mf.backend()        # "native" (C++ extension) or "numba" (fallback)
    mf.build_info()     # how the extension was compiled

See README.md and DESIGN.md §3 for the public API.
"""

from __future__ import annotations

# First: sets GOMP_SPINCOUNT before anything below imports torch (see the module).
from . import _openmp

# isort: split
from importlib import metadata as _metadata

from . import _backend
from .collect import EnvCollector, EpisodeStats, StepInfo
from .config import MBPOConfig
from .ensemble import EnsembleDynamics
from .mbpo import MBPO
from .mpc import MPC
from .pets import PETS, PETSConfig
from .pool import ReplayPool, sample_mixed
from .reward import reward_fn
from .rollout import BranchedRollout, RolloutStats
from .sac import SAC
from .termination import KNOWN_ENV_IDS, termination_fn
from .termination_model import TerminationModel
from .types import Transition

try:
    __version__ = _metadata.version("mbpo_fast")
except _metadata.PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.1.0"


def backend() -> str:
    """The active implementation of the hot ops: "native" or "numba"."""
    return _backend.name


def has_cuda() -> bool:
    """True when the extension was compiled with CUDA AND a CUDA device is present."""
    info = build_info()
    return bool(info["cuda_compiled"]) and _backend.ops.cuda_device_count() > 0


def build_info() -> dict:
    """How the active backend was built.

    Keys: backend, version, cuda_compiled (bool), cuda_architectures (list[str]),
    compiler (str), simd (str), num_threads (int), openmp_spin (str: who set how long
    torch's idle OpenMP workers spin, see ``mbpo_fast/_openmp.py``).
    """
    if _backend.name == "native":
        info = dict(_backend.ops.build_info())
    else:
        import numba

        info = {
            "version": __version__,
            "cuda_compiled": False,
            "cuda_architectures": [],
            "compiler": f"numba {numba.__version__}",
            "simd": "llvm-auto",
            "num_threads": _backend.ops.num_threads(),
        }
    info["backend"] = _backend.name
    info["openmp_spin"] = _openmp.STATE
    return info


def cmake_dir() -> str:
    """Directory of the installed CMake package (put it on CMAKE_PREFIX_PATH).

    A C++ consumer then writes ``find_package(mbpo_fast CONFIG REQUIRED)`` and
    ``target_link_libraries(app PRIVATE mbpo_fast::core)``. Also available as
    ``python -m mbpo_fast --cmake-dir``. Raises FileNotFoundError when mbpo_fast was not
    installed by pip (e.g. a developer in-place build): use ``cmake --install`` then.
    """
    import importlib.util
    from pathlib import Path

    roots = []
    spec = importlib.util.find_spec("mbpo_fast._C")
    if spec is not None and spec.origin:
        roots.append(Path(spec.origin).parent)
    roots.append(Path(__file__).parent)
    for root in roots:
        for libdir in ("lib", "lib64"):
            candidate = root / libdir / "cmake" / "mbpo_fast"
            if (candidate / "mbpo_fastConfig.cmake").is_file():
                return str(candidate)
    raise FileNotFoundError(
        "mbpo_fast's CMake package is not installed next to the Python package (looked in "
        + ", ".join(str(r) for r in roots)
        + "). Install with `pip install .` (or -e .), "
        + "or run `cmake --install <build> --prefix DIR` "
        "and use DIR/lib/cmake/mbpo_fast."
    )


def set_num_threads(n: int) -> None:
    """Threads used by the active backend's CPU kernels (torch keeps its own setting)."""
    _backend.ops.set_num_threads(n)


__all__ = [
    "KNOWN_ENV_IDS",
    "MBPO",
    "SAC",
    "BranchedRollout",
    "TerminationModel",
    "EnvCollector",
    "EpisodeStats",
    "StepInfo",
    "MBPOConfig",
    "ReplayPool",
    "RolloutStats",
    "EnsembleDynamics",
    "Transition",
    "__version__",
    "backend",
    "build_info",
    "cmake_dir",
    "has_cuda",
    "sample_mixed",
    "set_num_threads",
    "termination_fn",
    # planning (docs/planning.md)
    "MPC",
    "PETS",
    "PETSConfig",
    "reward_fn",
]
