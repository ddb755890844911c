"""Argument validation for the Numba mirror, with the same messages as the native binding.

Shapes use -1 for the batch dimension, printed as ``B``: ``obs: expected shape (B, 11),
got (5, 10)``.
"""

from __future__ import annotations

import operator

import numpy as np

_NUMERIC_KINDS = "fiub"


def shape_str(shape: tuple[int, ...]) -> str:
    items = ["B" if s < 0 else str(s) for s in shape]
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


def _numeric_array(x: object, name: str, what: str = "a numeric array") -> np.ndarray:
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:  # ragged lists and the like
        raise TypeError(f"{name}: expected {what}, got {type(x).__name__} ({exc})") from None
    if arr.dtype.kind not in _NUMERIC_KINDS:
        raise TypeError(f"{name}: expected a real numeric dtype (float32 preferred), "
                        f"got {arr.dtype}")
    return arr


def _check_shape(arr: np.ndarray, name: str, expected: tuple[int, ...], note: str = "") -> None:
    ok = arr.ndim == len(expected) and all(
        e < 0 or e == g for e, g in zip(expected, arr.shape, strict=True))
    if not ok:
        raise ValueError(f"{name}: expected shape {shape_str(expected)}{note}, "
                         f"got {shape_str(arr.shape)}")


def as_f32(x: object, name: str, expected: tuple[int, ...], note: str = "") -> np.ndarray:
    """`x` as a C-contiguous float32 array of shape `expected` (-1 = any), copying if needed."""
    arr = _numeric_array(x, name)
    _check_shape(arr, name, expected, note)
    return np.ascontiguousarray(arr, dtype=np.float32)


def require_finite_rows(arr: np.ndarray, name: str) -> None:
    """ValueError naming the first row of `arr` ([B, ...] or [B]) holding NaN or Inf."""
    finite = np.isfinite(arr)
    if not finite.all():
        bad = np.flatnonzero(~finite.reshape(len(arr), -1).all(axis=1)) if arr.ndim else [0]
        raise ValueError(f"{name}: non-finite value (NaN or Inf) in row {int(bad[0])} "
                         "(values must be finite)")


def as_flags(x: object, name: str, n: int, note: str = "") -> np.ndarray:
    """terminated[n] as uint8 0/1; numbers must be exactly 0 or 1."""
    arr = _numeric_array(x, name, "a bool array")
    _check_shape(arr, name, (n,), note)
    if arr.dtype.kind != "b":
        values = arr.astype(np.float64)
        bad = np.flatnonzero((values != 0.0) & (values != 1.0))
        if bad.size:
            raise ValueError(f"{name}: expected 0 or 1 (bools), got {values[bad[0]]} "
                             f"at index {int(bad[0])}")
    return np.ascontiguousarray(arr != 0, dtype=np.uint8)


def as_flag(x: object, name: str) -> bool:
    """A 0/1 scalar (Python or numpy bool, int or float)."""
    if x is True or x is False:
        return x
    arr = _numeric_array(x, name, "a bool")
    if arr.ndim != 0:
        raise ValueError(f"{name}: expected a scalar (shape ()), got shape {shape_str(arr.shape)}")
    v = float(arr)
    if v not in (0.0, 1.0):
        raise ValueError(f"{name}: expected 0 or 1 (a bool), got {v}")
    return v == 1.0


def as_int(x: object, name: str) -> int:
    """An integer argument (TypeError for floats, strings, ...)."""
    try:
        return operator.index(x)
    except TypeError:
        raise TypeError(f"{name}: expected an int, got {type(x).__name__}") from None


def positive(x: object, name: str) -> int:
    v = as_int(x, name)
    if v < 1:
        raise ValueError(f"{name}: expected {name} >= 1, got {v}")
    return v
