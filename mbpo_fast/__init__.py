"""mbpo_fast: Model-Based Policy Optimization with native (C++/CUDA) hot paths.

Quick start::

    import mbpo_fast as mf
    mf.backend()        # "native" (C++ extension) or "numba" (fallback)
    mf.build_info()     # how the extension was compiled

See README.md and DESIGN.md §3 for the public API.
"""

from __future__ import annotations

from importlib import metadata as _metadata

from . import _backend
from .sac import SAC
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
    compiler (str), simd (str), num_threads (int).
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
    return info


def set_num_threads(n: int) -> None:
    """Threads used by the active backend's CPU kernels (torch keeps its own setting)."""
    _backend.ops.set_num_threads(n)


__all__ = [
    "SAC",
    "Transition",
    "__version__",
    "backend",
    "build_info",
    "has_cuda",
    "set_num_threads",
]
