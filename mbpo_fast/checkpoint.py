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
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

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
