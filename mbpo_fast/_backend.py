"""Selects the implementation of the hot ops: the native extension or the Numba mirror.

Python classes call ``_backend.ops.<name>`` and never branch on the backend. Both
implementations expose the same names and signatures (see ``mbpo_fast/_numba``).

``MBPO_FAST_BACKEND`` chooses at import time:
  * unset / ``auto``: the native extension when it imports, else Numba;
  * ``native``: the extension, raising ImportError when it is missing;
  * ``numba``: the Numba mirror even when the extension exists.

``MBPO_FAST_NATIVE_PATH`` (optional) loads the extension from that file instead (used to
run the Python tests against an AddressSanitizer build; see docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Iterator
from types import ModuleType

_NAMES = ("native", "numba")
_native_error: BaseException | None = None


def _load(name: str) -> ModuleType:
    if name == "native":
        path = os.environ.get("MBPO_FAST_NATIVE_PATH")
        if path and "mbpo_fast._C" not in sys.modules:
            _load_extension_from(path)
        return importlib.import_module("mbpo_fast._C")
    if name == "numba":
        return importlib.import_module("mbpo_fast._numba")
    raise ValueError(f"MBPO_FAST_BACKEND: expected one of 'auto', 'native', 'numba'; got {name!r}")


def _load_extension_from(path: str) -> None:
    """Imports ``mbpo_fast._C`` from the file `path` (``MBPO_FAST_NATIVE_PATH``: a sanitizer
    build's module, see docs/reliability.md) instead of the one next to the sources."""
    loader = importlib.machinery.ExtensionFileLoader("mbpo_fast._C", path)
    spec = importlib.util.spec_from_file_location("mbpo_fast._C", path, loader=loader)
    if spec is None or not os.path.isfile(path):
        raise ImportError(f"MBPO_FAST_NATIVE_PATH={path!r} is not an extension module file")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mbpo_fast._C"] = module
    try:
        loader.exec_module(module)
    except BaseException:
        del sys.modules["mbpo_fast._C"]
        raise


def _native_or_none() -> ModuleType | None:
    global _native_error
    try:
        return _load("native")
    except ImportError as exc:  # extension not built / not importable
        _native_error = exc
        return None


def _select(requested: str) -> tuple[str, ModuleType]:
    requested = requested.strip().lower() or "auto"
    if requested == "auto":
        native = _native_or_none()
        return ("native", native) if native is not None else ("numba", _load("numba"))
    if requested == "native":
        native = _native_or_none()
        if native is None:
            raise ImportError(
                "MBPO_FAST_BACKEND=native but the extension mbpo_fast._C could not be imported "
                f"({_native_error}). Build it with `pip install -e .` or unset MBPO_FAST_BACKEND "
                "to fall back to the Numba backend."
            )
        return "native", native
    return requested, _load(requested)


name, ops = _select(os.environ.get("MBPO_FAST_BACKEND", "auto"))


def available() -> list[str]:
    """Backends that can be used in this process ("native" only when the extension imports)."""
    return [n for n in _NAMES if n != "native" or _native_or_none() is not None]


def get(backend: str) -> ModuleType:
    """The ops module of `backend` ("native" or "numba")."""
    if backend not in _NAMES:
        raise ValueError(f"backend: expected one of {_NAMES}, got {backend!r}")
    return _select(backend)[1]


@contextlib.contextmanager
def use(backend: str) -> Iterator[ModuleType]:
    """Temporarily switch the active backend (objects created inside keep theirs)."""
    global name, ops
    saved = (name, ops)
    name, ops = backend, get(backend)
    try:
        yield ops
    finally:
        name, ops = saved


def native_training_accelerated() -> bool:
    """True when the native trainers' matmuls run on a SIMD kernel (AVX-512) in this process.

    The trainers' ``trainer="auto"`` picks the native trainer only then: on a CPU without
    AVX-512 the portable GEMM is slower than torch's BLAS, so "auto" stays on torch there
    (``trainer="native"`` still runs it, for testing).
    """
    train_ops = getattr(ops, "train_ops", None) if name == "native" else None
    return train_ops is not None and train_ops.sgemm_kernel_name() != "portable"
