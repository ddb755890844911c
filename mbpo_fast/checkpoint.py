"""Integrity of checkpoint directories: a manifest of every file's size and checksum.

A checkpoint directory (see :meth:`mbpo_fast.MBPO.save_checkpoint`) is complete only once it
holds ``MANIFEST.json``, written last: ``{"format": "mbpo_fast.checkpoint_manifest/1",
"files": {name: {"bytes": int, "crc32": int | null}}}``. :func:`verify_checkpoint` checks
every listed file against it before anything is parsed, so a truncated, extended or
corrupted file gives a ValueError naming that file (not whatever its parser makes of it).
Pool files (``*.bin``) carry their own CRC-32 over every byte, so the manifest records only
their size: re-reading hundreds of MB at every save would cost more than the save.

Checkpoints written before the manifest existed load without this check (their files'
own validation still applies).

The ``*.pt`` files of a checkpoint (torch serialization: a zip archive holding a pickle) are
read by :func:`load_torch_file`, which never runs code from the file: ``weights_only=True``
(the pickle may only build tensors and plain containers), after a check of the archive that
every member is stored uncompressed and fits in the file (so memory stays bounded by the
file's size; a deflated member may expand a thousandfold).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

from .io import atomic_write

MANIFEST = "MANIFEST.json"
_FORMAT = "mbpo_fast.checkpoint_manifest/1"
_CHUNK = 1 << 20


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _has_own_checksum(name: str) -> bool:
    return name.endswith(".bin")


def write_manifest(directory: str | os.PathLike, names: list[str] | tuple[str, ...]) -> None:
    """Writes ``MANIFEST.json`` (atomically) for the files `names` of `directory`."""
    directory = Path(directory)
    files = {}
    for name in names:
        path = directory / name
        files[name] = {"bytes": path.stat().st_size,
                       "crc32": None if _has_own_checksum(name) else _crc32(path)}
    text = json.dumps({"format": _FORMAT, "files": files}, indent=1, sort_keys=True)
    atomic_write(directory / MANIFEST, lambda f: f.write(text.encode()))


def verify_checkpoint(directory: str | os.PathLike,
                      required: list[str] | tuple[str, ...]) -> bool:
    """Checks the files of checkpoint `directory` against its manifest.

    Returns False when the directory has no manifest (a checkpoint from an older version).
    Raises ValueError naming the file when the manifest is unreadable, lacks one of
    `required`, or a file is missing, has another size or another CRC-32.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return False
    try:
        manifest = json.loads(raw.decode())
        if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
            raise ValueError(f"expected format {_FORMAT!r}")
        files = manifest["files"]
        if not isinstance(files, dict):
            raise ValueError("'files' is not an object")
        entries = {}
        for name, entry in files.items():
            size, crc = entry["bytes"], entry["crc32"]
            if type(size) is not int or not (crc is None or type(crc) is int) or "/" in name:
                raise ValueError(f"bad entry for {name!r}")
            entries[name] = (size, crc)
    except (UnicodeDecodeError, RecursionError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: corrupt checkpoint manifest ({type(exc).__name__}: "
                         f"{exc})"[:500]) from None
    missing = sorted(set(required) - set(entries))
    if missing:
        raise ValueError(f"{path}: corrupt checkpoint manifest (does not list {missing})")
    for name, (size, crc) in sorted(entries.items()):
        file = directory / name
        try:
            actual = file.stat().st_size
        except FileNotFoundError:
            raise ValueError(f"{file}: missing from the checkpoint (listed in {MANIFEST})") \
                from None
        if actual != size:
            how = "truncated" if actual < size else "extended"
            raise ValueError(f"{file}: corrupt checkpoint file ({how}: {actual} bytes, "
                             f"{MANIFEST} says {size})")
        if crc is not None and _crc32(file) != crc:
            raise ValueError(f"{file}: corrupt checkpoint file (CRC-32 mismatch with {MANIFEST})")
    return True


def _legacy_numpy_globals() -> list:
    """What the numpy arrays in a ``state.pt`` written before :func:`load_torch_file` need to
    unpickle (the uint32 RNG key of MBPO, PETS's float32 warm start): an array rebuilt from
    its bytes (numpy 2 and 1 spell the reconstructor's module differently). Nothing else."""
    import numpy as np

    reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") \
        else np.core.multiarray._reconstruct
    return [reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct"),
            (reconstruct, "numpy._core.multiarray._reconstruct"), np.ndarray, np.dtype,
            type(np.dtype(np.uint32)), type(np.dtype(np.float32))]


def check_torch_archive(blob: bytes) -> None:
    """Raises ValueError unless `blob` is a zip archive (the torch serialization format)
    whose members are all stored uncompressed, as ``torch.save`` writes them, and together
    fit in `blob`: what torch then allocates is bounded by the file's size."""
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            members = z.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError,
            UnicodeDecodeError, NotImplementedError) as exc:
        raise ValueError(f"not a torch archive ({type(exc).__name__}: {exc})") from None
    total = 0
    for m in members:
        if m.compress_type != zipfile.ZIP_STORED or m.file_size != m.compress_size:
            raise ValueError(f"archive member {m.filename!r} is compressed (torch.save stores "
                             f"members uncompressed)")
        total += m.file_size
        if total > len(blob):
            raise ValueError(f"archive members claim {total} bytes, the file has {len(blob)}")


def load_torch_file(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Reads a file written with ``torch.save`` (``*.pt`` of a checkpoint) without running
    code from it: :func:`check_torch_archive`, then ``torch.load(weights_only=True)`` (tensors,
    dicts, lists, tuples, strings, numbers), with numpy arrays allowed only as the legacy RNG
    state of older ``state.pt`` files. Raises FileNotFoundError when the file is missing and
    ValueError naming it for anything else: a truncated or corrupt file, a compressed archive,
    or a pickle that asks for any other global (e.g. a ``__reduce__`` payload: refused before
    it runs)."""
    import torch

    with open(path, "rb") as f:
        blob = f.read()
    try:
        check_torch_archive(blob)
        with torch.serialization.safe_globals(_legacy_numpy_globals()):
            return torch.load(io.BytesIO(blob), map_location=map_location, weights_only=True)
    except Exception as exc:  # zip/pickle errors differ by torch version
        text = str(exc)
        if "Weights only load failed" in text:
            raise ValueError(f"{path}: unsafe checkpoint file, refused: its pickle asks for "
                             f"more than tensors and plain containers "
                             f"({_weights_only_reason(text)})"[:500]) from None
        raise ValueError(f"{path}: corrupt checkpoint file ({type(exc).__name__}: "
                         f"{text.splitlines()[0] if text else ''})"[:500]) from None


def _weights_only_reason(message: str) -> str:
    """The line of torch's weights-only error that names the refused global."""
    skip = ("Weights only load failed", "Check the documentation", "Please file an issue",
            "(1)", "(2)", "Re-running")
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(skip)]
    # (not torch's advice to allowlist the global "if you trust" the file: it is untrusted)
    return " ".join(lines).split(" Please use `torch.serialization")[0] or \
        "refused by torch.load(weights_only=True)"
