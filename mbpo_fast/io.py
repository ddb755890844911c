"""File helpers: atomic writes, CSV tables and validated safetensors I/O.

Every file mbpo_fast writes goes through :func:`atomic_write`: the bytes go to a temporary
file in the same directory, are fsynced, then renamed over the target (and the directory
is fsynced), so a crash mid-save leaves the previous file intact.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import struct
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

PathLike = str | os.PathLike


def _umask() -> int:
    """The process umask (read by setting and restoring it; os has no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Calls ``write(f)`` on a temporary file next to `path`, fsyncs it and renames it to `path`."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would (0666 & ~umask).
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # persist the rename itself
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def write_csv(path: PathLike, columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> None:
    """Writes `rows` (dicts; a missing column is left empty) under a header of `columns`,
    atomically (a run's ``progress.csv``)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: row.get(k, "") for k in columns})
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


# safetensors: 8-byte little-endian header length N, N bytes of JSON header, raw data.
_DTYPES = {
    np.dtype(np.float32): "F32",
    np.dtype(np.float64): "F64",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint16): "U16",  # raw bf16 bits are stored as U16 by convention here
}
_FROM_CODE = {code: dtype for dtype, code in _DTYPES.items()}
_FROM_CODE["BF16"] = np.dtype(np.uint16)
_MAX_HEADER = 100 * 1024 * 1024


def save_safetensors(path: PathLike, tensors: Mapping[str, np.ndarray],
                     metadata: Mapping[str, str] | None = None) -> None:
    """Writes `tensors` (name -> numpy array) and string `metadata` atomically.

    The file is in the safetensors format."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        if array.dtype not in _DTYPES:
            raise TypeError(f"tensors[{name!r}]: unsupported dtype {array.dtype}; "
                            f"expected one of {sorted(str(d) for d in _DTYPES)}")
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _DTYPES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # align the data section to 8 bytes

    def write(f: BinaryIO) -> None:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for blob in blobs:
            f.write(blob)

    atomic_write(path, write)


def load_safetensors(path: PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Reads a safetensors file; returns (tensors, metadata).

    Raises FileNotFoundError for a missing file and ValueError (naming the file) for a
    truncated or malformed one: bad header length, invalid JSON, unknown dtype, offsets
    outside the file, overlapping or non-contiguous tensors, trailing bytes.
    """
    path = Path(path)
    blob = path.read_bytes()

    def bad(why: str) -> ValueError:
        return ValueError(f"{path}: not a valid safetensors file ({why})")

    if len(blob) < 8:
        raise bad(f"file is {len(blob)} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > _MAX_HEADER or 8 + n > len(blob):
        raise bad(f"header length {n} exceeds the file size {len(blob)} (truncated?)")
    try:
        header = json.loads(blob[8:8 + n].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"header is not valid JSON: {exc}") from None
    except RecursionError:
        raise bad("header JSON is nested too deeply") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    metadata = header.pop("__metadata__", {}) or {}
    if not isinstance(metadata, dict):
        raise bad(f"__metadata__ is a {type(metadata).__name__}, expected a JSON object")
    data = memoryview(blob)[8 + n:]
    tensors: dict[str, np.ndarray] = {}
    spans = []
    for name, info in header.items():
        try:
            dtype = _FROM_CODE[info["dtype"]]
            if not all(type(s) is int for s in info["shape"]):
                raise TypeError("shape")
            shape = tuple(info["shape"])
            start, end = info["data_offsets"]
            if type(start) is not int or type(end) is not int:
                raise TypeError("data_offsets")
        except (KeyError, TypeError, ValueError):
            raise bad(f"tensor {name!r} has a malformed entry {info!r}"[:400]) from None
        # Exact (Python int) product: a shape whose product overflows int64 must not wrap
        # to a size that matches the offsets.
        count = math.prod(shape)
        if min(shape, default=0) < 0 or end - start != count * dtype.itemsize or start < 0:
            raise bad(f"tensor {name!r}: offsets {start}..{end} do not match shape {shape} "
                      f"of {info['dtype']}")
        if end > len(data):
            raise bad(f"tensor {name!r} ends at byte {end} but the data section has "
                      f"{len(data)} bytes (truncated?)")
        spans.append((start, end))
        tensors[name] = np.frombuffer(data[start:end], dtype=dtype.newbyteorder("<")).astype(
            dtype, copy=True).reshape(shape)
    spans.sort()
    covered = 0
    for start, end in spans:
        if start != covered:
            raise bad("tensor data overlaps or leaves gaps")
        covered = end
    if covered != len(data):
        raise bad(f"{len(data) - covered} trailing bytes after the last tensor")
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def require_tensor(tensors: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...],
                   dtype: np.dtype | type, source: PathLike = "file") -> np.ndarray:
    """Returns tensors[name], raising ValueError when it is missing or has another shape/dtype."""
    if name not in tensors:
        raise ValueError(f"{source}: missing tensor {name!r} (has: {sorted(tensors)})")
    t = tensors[name]
    if tuple(t.shape) != tuple(shape) or t.dtype != np.dtype(dtype):
        raise ValueError(f"{source}: tensor {name!r} expected shape {tuple(shape)} "
                         f"{np.dtype(dtype)}, "
                         f"got {tuple(t.shape)} {t.dtype}")
    return t
