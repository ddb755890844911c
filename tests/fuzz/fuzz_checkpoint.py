"""Fuzz driver for the checkpoint loader: ``MBPO.resume`` end to end on mutated checkpoints.

A checkpoint directory mixes formats: torch archives (``agent.pt``, ``model_train.pt``,
``state.pt``: a zip holding a pickle), safetensors (``model.safetensors``,
``termination_model.safetensors``), pool files (``*.bin``, parsed by the native core), JSON
(``config.json``, ``MANIFEST.json``) and the ``latest`` pointer. Each input is a seed
checkpoint (``tests/fuzz/corpus/checkpoint/<name>/``) with 1-3 mutations, structure-aware
(so that they reach the loaders' checks, not only the checksums): raw bytes (bit flips,
interesting integers, truncation, splices), torch archives rebuilt around a mutated pickle
or a mutated object tree (tensors of other shapes, dtypes or strides, huge zero-stride
tensors, wrong types, missing and extra keys), safetensors headers (shapes, dtypes, offsets,
metadata) with consistent or broken offsets, pool headers and rows with their CRC-32s
recomputed, foreign pools of other dimensions, JSON fields of ``config.json`` set to
interesting values, a deleted file, a damaged ``latest``. The manifest is usually rewritten
after the mutations, as a hostile user would (it guards against accidents, not attacks),
sometimes deleted (the legacy path) or left stale.

Every input must either resume or raise ValueError / OSError / FileNotFoundError (MemoryError
only for a pool capacity, as documented) whose message names a file of the checkpoint. A
resumed run then takes one training step (env step, model training when due, SAC update,
rollout: the loaded state drives the native kernels; see run_one for the one exception: the
hyperparameters and pool rows a fresh run may have too). Any other exception, a crash (signal),
a hang (``--timeout``) or memory growth past ``--max-rss-mb`` (unless ``config.json`` changed:
its buffers and batches take what a fresh run with it takes) is a finding: the input is
copied to ``--artifacts`` as a checkpoint directory and the driver exits 1. Once fixed,
``--save-regression ARTIFACT NAME`` stores it under ``tests/fuzz/regressions/checkpoint/NAME/``
(its difference from the seed): replayed by every run and by ``tests/test_hardening.py``.

Deterministic: input i of seed S is the same on every machine.

    PYTHONPATH=. python tests/fuzz/fuzz_checkpoint.py --seconds 30            # CI
    PYTHONPATH=. python tests/fuzz/fuzz_checkpoint.py --seconds 3600 --seed 7 # long run
    PYTHONPATH=. python tests/fuzz/fuzz_checkpoint.py --seconds 0 --replay DIR  # one input

The inputs run in a worker subprocess (under ``RLIMIT_AS`` unless AddressSanitizer is
preloaded), supervised by this process, so that a crash or a hang is caught and reported.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import math
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus" / "checkpoint"
REGRESSIONS = HERE / "regressions" / "checkpoint"
CKPT_NAME = "ckpt-1"
EXPECTED = (ValueError, OSError)  # FileNotFoundError is an OSError; MemoryError: see verdict

INTERESTING_INTS = [0, 1, -1, 2, 3, 7, 255, 256, -128, 2**15, 2**16, 2**24, 2**24 + 1, 2**31 - 1,
                    2**31, 2**32 - 1, 2**32, 2**53, 2**62, 2**63 - 1, -(2**63), 10**9, 10**12]


# ============================================================================ inputs
_NOT_FILES = {"SEED", "DELETED", "WHAT.txt", "FUZZ_INPUT.json"}


def read_checkpoint(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())
            if p.is_file() and p.name not in _NOT_FILES}


def read_input(d: Path) -> dict[str, bytes]:
    """A checkpoint directory, or a regression stored as a difference from a seed: ``SEED``
    (the corpus directory's name), the files that differ, ``DELETED`` (names removed) and
    no ``MANIFEST.json`` when the input's manifest was rewritten to match its files (it is
    rewritten again here, so the regression outlives a regeneration of the seeds)."""
    if not (d / "SEED").exists():
        return read_checkpoint(d)
    files = read_checkpoint(CORPUS / (d / "SEED").read_text().strip())
    files.update(read_checkpoint(d))
    deleted = (d / "DELETED").read_text().split() if (d / "DELETED").exists() else []
    for name in deleted:
        files.pop(name, None)
    if "MANIFEST.json" not in deleted and not (d / "MANIFEST.json").exists():
        files["MANIFEST.json"] = _manifest(files)
    return files


def save_regression(artifact: Path, name: str) -> Path:
    """Stores the fuzz input `artifact` as ``tests/fuzz/regressions/checkpoint/<name>/``: its
    difference from its seed (see :func:`read_input`)."""
    info = json.loads((artifact / "FUZZ_INPUT.json").read_text())
    files, base = read_checkpoint(artifact), read_checkpoint(CORPUS / info["seed"])
    out = REGRESSIONS / name
    out.mkdir(parents=True)
    (out / "SEED").write_text(info["seed"] + "\n")
    (out / "WHAT.txt").write_text(info["what"] + "\n")
    for fname, blob in files.items():
        keep = info["manifest"] in ("mutated", "stale") if fname == "MANIFEST.json" \
            else base.get(fname) != blob
        if keep:
            (out / fname).write_bytes(blob)
    deleted = sorted(set(base) - set(files))
    if deleted:
        (out / "DELETED").write_text("\n".join(deleted) + "\n")
    assert read_input(out) == files, "the stored difference does not rebuild the input"
    return out


def write_run(files: dict[str, bytes], logdir: Path, latest: bytes | None = None) -> Path:
    """Lays `files` out as ``logdir/checkpoints/ckpt-1/`` with a ``latest`` pointer."""
    if logdir.exists():
        shutil.rmtree(logdir)
    ckpt = logdir / "checkpoints" / CKPT_NAME
    ckpt.mkdir(parents=True)
    for name, blob in files.items():
        if name != "latest":
            (ckpt / name).write_bytes(blob)
    pointer = files.get("latest", CKPT_NAME.encode()) if latest is None else latest
    (logdir / "checkpoints" / "latest").write_bytes(pointer)
    return ckpt


def seed_dirs(roots: list[Path]) -> list[Path]:
    out = []
    for root in roots:
        if any((root / f).exists() for f in ("config.json", "MANIFEST.json", "SEED")):
            out.append(root)
        elif root.is_dir():
            out += sorted(p for p in root.iterdir() if p.is_dir())
    return out


# ============================================================================ mutations
class Mutator:
    """Structure-aware mutations of a checkpoint's files (see the module docstring)."""

    def __init__(self, rng: random.Random, seeds: list[dict[str, bytes]]) -> None:
        self.rng = rng
        self.seeds = seeds
        self.log: list[str] = []

    # ------------------------------------------------------------ generic bytes
    def bytes_(self, blob: bytes) -> bytes:
        r, b = self.rng, bytearray(blob)
        op = r.randrange(8)
        if not b:
            return bytes(r.randrange(256) for _ in range(r.randrange(1, 16)))
        pos = r.randrange(len(b))
        if op == 0:
            b[pos] ^= 1 << r.randrange(8)
        elif op == 1:
            b[pos] = r.choice((0, 0xFF, 0x7F, 0x80, 0x01))
        elif op == 2 and len(b) >= 8:
            pos = r.randrange(len(b) - 7)
            v = r.choice(INTERESTING_INTS)
            b[pos:pos + 8] = struct.pack("<q", max(-(2**63), min(2**63 - 1, v)))
        elif op == 3 and len(b) >= 4:
            pos = r.randrange(len(b) - 3)
            b[pos:pos + 4] = struct.pack("<I", r.choice(INTERESTING_INTS) & 0xFFFFFFFF)
        elif op == 4:
            del b[r.randrange(len(b)):]
        elif op == 5:
            del b[pos:pos + r.randrange(1, 64)]
        elif op == 6:
            b[pos:pos] = bytes(r.randrange(256) for _ in range(r.randrange(1, 64)))
        else:  # splice: a chunk of another seed's file
            other = r.choice([v for s in self.seeds for v in s.values()])
            start = r.randrange(len(other))
            b[pos:pos + r.randrange(1, 256)] = other[start:start + r.randrange(1, 256)]
        return bytes(b)

    # ------------------------------------------------------------ torch archives
    def torch_file(self, blob: bytes) -> bytes:
        r = self.rng
        try:
            zf = zipfile.ZipFile(io.BytesIO(blob))
            members = [(i.filename, zf.read(i.filename)) for i in zf.infolist()]
        except Exception:
            self.log.append("pt:bytes(unparsed)")
            return self.bytes_(blob)
        op = r.randrange(10)
        if op < 5:
            return self._torch_tree(blob)
        if op < 8:  # the pickle or a storage record, rebuilt into a valid archive
            pick = [m for m in members if m[0].endswith("data.pkl")] if op < 7 else members
            name, data = r.choice(pick or members)
            self.log.append(f"pt:member {name}")
            members = [(n, self.bytes_(d) if n == name else d) for n, d in members]
        elif op == 8:  # a member compressed (a small archive that expands in memory)
            self.log.append("pt:deflate")
            out = io.BytesIO()
            with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as w:
                for n, d in members:
                    w.writestr(n, d)
            return out.getvalue()
        else:
            self.log.append("pt:bytes")
            return self.bytes_(blob)
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as w:
            for n, d in members:
                w.writestr(n, d)
        return out.getvalue()

    def _torch_tree(self, blob: bytes) -> bytes:
        import torch

        from mbpo_fast.checkpoint import load_torch_file

        with tempfile.NamedTemporaryFile(suffix=".pt") as f:
            f.write(blob)
            f.flush()
            try:
                obj = load_torch_file(f.name)
            except ValueError:
                self.log.append("pt:bytes(unloadable)")
                return self.bytes_(blob)
        obj = self._tree(obj, depth=0)
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()

    def _tree(self, obj: Any, depth: int) -> Any:
        """`obj` with one node (at a random path) replaced or edited."""
        import torch

        r = self.rng
        children = None
        if isinstance(obj, dict) and obj:
            children = list(obj)
        elif isinstance(obj, (list, tuple)) and obj and not _all_scalars(obj):
            children = list(range(len(obj)))
        if children is not None and r.random() < 0.85:
            key = r.choice(children)
            if isinstance(obj, dict):
                out = dict(obj)
                out[key] = self._tree(obj[key], depth + 1)
                return out
            out = list(obj)
            out[key] = self._tree(obj[key], depth + 1)
            return type(obj)(out) if isinstance(obj, tuple) else out
        self.log.append(f"pt:tree depth {depth} {type(obj).__name__}")
        if isinstance(obj, torch.Tensor):
            return self._tensor(obj)
        if isinstance(obj, dict):
            op = r.randrange(4)
            out = dict(obj)
            if op == 0 and out:
                del out[r.choice(list(out))]
            elif op == 1:
                out[r.choice(["extra", 0, 99, "format"])] = r.choice([None, 1, "x", [1, 2]])
            elif op == 2:
                return r.choice([None, [], 0, "dict"])
            else:
                return {}
            return out
        if isinstance(obj, (list, tuple)):
            op = r.randrange(5)
            out = list(obj)
            if op == 0 and out:
                del out[r.randrange(len(out))]
            elif op == 1 and out:
                out.insert(r.randrange(len(out)), out[r.randrange(len(out))])
            elif op == 2 and out:
                out[r.randrange(len(out))] = self._scalar(out[0])
            elif op == 3:
                nested: Any = 0
                for _ in range(r.choice((10, 200))):
                    nested = [nested]
                return nested
            else:
                return r.choice([None, {}, "list", 3])
            return type(obj)(out) if isinstance(obj, tuple) else out
        return self._scalar(obj)

    def _scalar(self, v: Any) -> Any:
        r = self.rng
        if isinstance(v, bool) or r.random() < 0.2:
            return r.choice([None, True, False, "", "x" * 1000, [], {}, 0.5])
        if isinstance(v, int):
            return r.choice(INTERESTING_INTS + [2**200, v + 1, v - 1, float(v)])
        if isinstance(v, float):
            return r.choice([math.nan, math.inf, -math.inf, 1e308, -0.0, 0.0, -1.0, 10**9])
        if isinstance(v, str):
            return r.choice(["", "MT19937", "PCG64", "mbpo_fast.SAC/1", "relu", v + "x", v[:-1]])
        return r.choice([None, 0, "x"])

    def _tensor(self, t):
        import torch

        r = self.rng
        op = r.randrange(9)
        if t.numel() > 10**6:  # a huge zero-stride tensor of an earlier mutation: keep it virtual
            return torch.zeros((), dtype=t.dtype).expand(*t.shape) if op < 5 else None
        shape = list(t.shape)
        if op == 0 and shape:  # one extent off by one
            i = r.randrange(len(shape))
            shape[i] = max(0, shape[i] + r.choice((-1, 1)))
            return torch.zeros(shape, dtype=t.dtype)
        if op == 1:  # another rank
            return torch.zeros(shape + [1] if r.random() < 0.5 else shape[1:], dtype=t.dtype)
        if op == 2:  # another dtype
            dt = r.choice([torch.float64, torch.float16, torch.bfloat16, torch.int64,
                           torch.uint8, torch.bool, torch.int32])
            return t.to(dt)
        if op == 3:  # a huge claimed shape on a one-element storage (stride 0)
            big = r.choice(([10**5] * 2, [2**31] * 2, [10**12], [10**6] * 3))
            return torch.zeros((), dtype=t.dtype).expand(*big)
        if op == 4:  # the right shape with zero strides (no bytes behind it)
            return torch.zeros((), dtype=t.dtype).expand(*shape) if shape else t
        if op == 5 and t.is_floating_point() and t.numel():
            u = t.clone().reshape(-1)
            u[r.randrange(u.numel())] = r.choice([math.nan, math.inf, -math.inf, 3e38])
            return u.reshape(t.shape)
        if op == 6 and t.numel():  # a non-contiguous view of the right shape
            return torch.zeros(*shape, 2, dtype=t.dtype)[..., 0] if shape else t
        if op == 7:
            return torch.empty(0, dtype=t.dtype)
        return r.choice([None, 0, 1.5, "tensor", [0.0] * max(1, t.numel() % 50)])

    # ------------------------------------------------------------ safetensors
    def safetensors(self, blob: bytes) -> bytes:
        r = self.rng
        try:
            (n,) = struct.unpack("<Q", blob[:8])
            header = json.loads(blob[8:8 + n])
            data = blob[8 + n:]
            assert isinstance(header, dict)
        except Exception:
            self.log.append("st:bytes(unparsed)")
            return self.bytes_(blob)
        op = r.randrange(8)
        names = [k for k in header if k != "__metadata__"]
        consistent = r.random() < 0.7
        if op == 0 and "__metadata__" in header:  # a metadata value
            meta = header["__metadata__"]
            key = r.choice(list(meta) + ["extra"])
            self.log.append(f"st:meta {key}")
            if r.random() < 0.2 and key in meta:
                del meta[key]
            else:
                meta[key] = str(r.choice(INTERESTING_INTS + ["", "x", "1e3", "silu", "relu",
                                                              "-5", " 3"]))
        elif op in (1, 2) and names:  # a tensor's shape
            name = r.choice(names)
            shape = header[name]["shape"]
            self.log.append(f"st:shape {name}")
            if shape and op == 1:
                i = r.randrange(len(shape))
                shape[i] = r.choice([0, shape[i] + 1, max(shape[i] - 1, 0), shape[i] * 2,
                                     2**31, 2**62, -1])
            else:
                header[name]["shape"] = shape[:-1] if shape and r.random() < 0.5 \
                    else shape + [1]
        elif op == 3 and names:  # a tensor's dtype
            name = r.choice(names)
            self.log.append(f"st:dtype {name}")
            header[name]["dtype"] = r.choice(["F64", "F16", "BF16", "I64", "I32", "U8", "BOOL",
                                              "F8", "XX"])
        elif op == 4 and names:  # a tensor removed or duplicated under another name
            name = r.choice(names)
            self.log.append(f"st:drop/dup {name}")
            if r.random() < 0.5:
                del header[name]
            else:
                header[r.choice(["layers.9.weight", "extra", name + "x"])] = dict(header[name])
        elif op == 5:  # a value in the data: NaN, inf, an out-of-range elite
            self.log.append("st:data value")
            d = bytearray(data)
            if len(d) >= 8:
                pos = r.randrange(len(d) // 4) * 4
                d[pos:pos + 4] = r.choice([struct.pack("<f", math.nan),
                                           struct.pack("<f", math.inf), struct.pack("<f", 0.0),
                                           struct.pack("<f", -1.0), struct.pack("<i", 99)])
            data = bytes(d)
            consistent = False
        elif op == 6:
            self.log.append("st:bytes")
            return self.bytes_(blob)
        else:
            self.log.append("st:offsets")
            if names:
                name = r.choice(names)
                a, b = header[name]["data_offsets"]
                header[name]["data_offsets"] = [a, b + r.choice((-4, 4, 2**40))]
            consistent = False
        if consistent:  # recompute offsets; pad/cut each tensor's bytes to its new size
            data = _relayout(header, data)
        raw = json.dumps(header).encode()
        return struct.pack("<Q", len(raw)) + raw + data

    # ------------------------------------------------------------ pools
    def pool(self, blob: bytes) -> bytes:
        r = self.rng
        if len(blob) < 84 or blob[:8] != b"MBPOPOOL":
            self.log.append("pool:bytes(unparsed)")
            return self.bytes_(blob)
        b = bytearray(blob)
        op = r.randrange(6)
        if op == 0:
            field = r.choice([(8, "<I"), (16, "<q"), (24, "<q"), (32, "<q"), (40, "<q"),
                              (48, "<q"), (56, "<Q"), (64, "<Q")])
            self.log.append(f"pool:header @{field[0]}")
            v = r.choice(INTERESTING_INTS)
            v = v & 0xFFFFFFFF if field[1] == "<I" else (v & 0xFFFFFFFFFFFFFFFF if
                                                         field[1] == "<Q" else v)
            struct.pack_into(field[1], b, field[0], v)
        elif op == 1:
            self.log.append("pool:row value")
            pos = 80 + r.randrange(max(1, (len(b) - 84) // 4)) * 4
            if pos + 4 <= len(b) - 4:
                b[pos:pos + 4] = r.choice([struct.pack("<f", math.nan),
                                           struct.pack("<f", math.inf), b"\x02\x02\x02\x02"])
        elif op == 2:
            self.log.append("pool:bytes")
            b = bytearray(self.bytes_(blob))
        elif op == 3:
            self.log.append("pool:foreign dims")
            return _foreign_pool(r)
        elif op == 4:  # fewer rows than the header says, with valid checksums
            self.log.append("pool:cut rows")
            del b[max(80, len(b) - 4 - r.randrange(1, 64)):len(b) - 4]
        else:
            self.log.append("pool:stale crc")
            b[r.randrange(80, len(b))] ^= 0x10
            return bytes(b)
        if len(b) >= 84:  # a hostile writer recomputes the checksums
            struct.pack_into("<I", b, 72, zlib.crc32(bytes(b[:72])))
            struct.pack_into("<I", b, len(b) - 4, zlib.crc32(bytes(b[:-4])))
        return bytes(b)

    # ------------------------------------------------------------ JSON
    def config(self, blob: bytes) -> bytes:
        r = self.rng
        try:
            cfg = json.loads(blob)
            assert isinstance(cfg, dict) and cfg
        except Exception:
            self.log.append("json:bytes(unparsed)")
            return self.bytes_(blob)
        key = r.choice(list(cfg))
        op = r.randrange(10)
        self.log.append(f"json:{key}")
        if op == 0:
            del cfg[key]
        elif op == 1:
            cfg["no_such_field"] = 1
        elif op == 2:
            return self.bytes_(blob)
        else:
            cfg[key] = self._json_value(cfg[key])
        return json.dumps(cfg).encode()

    def _json_value(self, v: Any) -> Any:
        r = self.rng
        if isinstance(v, bool):
            return r.choice([not v, 1, "true", None])
        if isinstance(v, int):
            return r.choice(INTERESTING_INTS + [2**70, -5, v * 1000, str(v), 1.5])
        if isinstance(v, float):
            return r.choice([1e308, -1.0, 0.0, 1e-300, 2.0, str(v), None])
        if isinstance(v, str):
            return r.choice(["", "Pendulum-v1", "Hopper-v5", "NoSuchEnv-v0", "cuda", "native",
                             "torch", "learned", "builtin", v + "x", 3])
        if isinstance(v, list):
            return r.choice([[], v[:-1], v + v[-1:], [-1] * len(v), [10**9] * len(v), "x"])
        if isinstance(v, dict):
            return r.choice([{}, {"x": 1}, [], None])
        return r.choice([0, "x", [], None])

    # ------------------------------------------------------------ one input
    def mutate(self, files: dict[str, bytes]) -> tuple[dict[str, bytes], str, str]:
        """1-3 mutations of `files`; then the manifest: rewritten (usually), deleted, mutated
        or stale. Returns (files, what was done, what became of the manifest)."""
        r = self.rng
        files = dict(files)
        for _ in range(r.choice((1, 1, 1, 2, 3))):
            names = sorted(n for n in files if n != "MANIFEST.json")
            op = r.random()
            if op < 0.03 and names:
                name = r.choice(names)
                self.log.append(f"delete {name}")
                del files[name]
                continue
            if op < 0.05:
                self.log.append("latest")
                files["latest"] = r.choice([b"", b"ckpt-", b"ckpt-9", b"../x", b"\xff",
                                            b"ckpt-1\n", b"ckpt-" + b"9" * 30])
                continue
            name = r.choice(names)
            blob = files[name]
            if name.endswith(".pt"):
                files[name] = self.torch_file(blob)
            elif name.endswith(".safetensors"):
                files[name] = self.safetensors(blob)
            elif name.endswith(".bin"):
                files[name] = self.pool(blob)
            elif name == "config.json":
                files[name] = self.config(blob)
            else:
                self.log.append(f"bytes {name}")
                files[name] = self.bytes_(blob)
            self.log[-1] = f"{name}: {self.log[-1]}"
        u, policy = r.random(), "rewritten"
        if "MANIFEST.json" not in files:
            policy = "deleted"
        elif u < 0.05:
            policy = "deleted"
            del files["MANIFEST.json"]
        elif u < 0.1:
            policy = "mutated"
            files["MANIFEST.json"] = self.config(files["MANIFEST.json"])
        elif u < 0.13:
            policy = "stale"
        else:
            files["MANIFEST.json"] = _manifest(files)
        self.log.append(f"manifest {policy}")
        return files, "; ".join(self.log), policy


def _all_scalars(seq) -> bool:
    return len(seq) > 16 and all(isinstance(x, (int, float)) for x in seq[:16])


def _relayout(header: dict, data: bytes) -> bytes:
    """Offsets recomputed in order; each tensor's bytes cut or zero-padded to its new size."""
    sizes = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1}
    out = bytearray()
    for name, info in header.items():
        if name == "__metadata__" or not isinstance(info, dict):
            continue
        try:
            n = math.prod(info["shape"]) * sizes.get(info["dtype"], 4)
            a, b = info["data_offsets"]
        except Exception:
            continue
        if n < 0 or n > 1 << 24:  # claims beyond what a file would hold: keep the old span
            n = b - a
        chunk = data[a:b][:n]
        start = len(out)
        out += chunk + b"\0" * (n - len(chunk))
        info["data_offsets"] = [start, start + n]
    return bytes(out)


def _foreign_pool(r: random.Random) -> bytes:
    """A valid pool file of other dimensions (or an empty one)."""
    import numpy as np

    import mbpo_fast as mf

    od, ad, n = r.choice([(1, 1, 5), (3, 2, 4), (4, 1, 3), (3, 1, 0), (17, 6, 2)])
    pool = mf.ReplayPool(max(n, 1) + r.randrange(3), od, ad, seed=1)
    g = np.random.default_rng(r.randrange(1 << 30))
    if n:
        pool.add_batch(g.normal(size=(n, od)).astype(np.float32),
                       g.normal(size=(n, ad)).astype(np.float32),
                       g.normal(size=n).astype(np.float32),
                       g.normal(size=(n, od)).astype(np.float32), g.random(n) < 0.5)
    with tempfile.TemporaryDirectory() as d:
        pool.save(Path(d) / "p.bin")
        return (Path(d) / "p.bin").read_bytes()


def _manifest(files: dict[str, bytes]) -> bytes:
    """MANIFEST.json of `files`, as :func:`mbpo_fast.checkpoint.write_manifest` writes it."""
    entries = {n: {"bytes": len(b), "crc32": None if n.endswith(".bin") else zlib.crc32(b)}
               for n, b in sorted(files.items()) if n not in ("MANIFEST.json", "latest")}
    return json.dumps({"format": "mbpo_fast.checkpoint_manifest/1", "files": entries},
                      indent=1, sort_keys=True).encode()


# ============================================================================ one run
def verdict(exc: BaseException | None, logdir: Path) -> str | None:
    """None when the outcome is acceptable, else what is wrong with it."""
    if exc is None:
        return None
    msg = str(exc)
    names = str(logdir) in msg
    if isinstance(exc, MemoryError):  # documented for a pool capacity beyond memory only
        return None if names and ".bin" in msg else f"MemoryError not naming a pool file: {msg}"
    if not isinstance(exc, EXPECTED):
        return f"unexpected {type(exc).__name__}: {msg}"
    if not names:
        return f"{type(exc).__name__} that names no checkpoint file: {msg}"
    return None


def run_one(files: dict[str, bytes], logdir: Path, data_only: bool = False
            ) -> tuple[str | None, str]:
    """Resumes the run `files` describe, then takes one training step; (verdict, outcome).

    A resumed state must step: the loaders must reject what the kernels cannot use. Except
    when only ``config.json`` or the pools' rows changed (`data_only`): hyperparameters and
    transitions a fresh run can have too (a batch of 2**40 rows, lr = 1e308, an observation
    of -2e38 that overflows the model's training) fail there the same way; a clean exception
    in that step is counted, not a finding (a crash or a hang still is).
    Likewise a step stopped by the library's own guard against non-finite values (the
    ValueError a diverging fresh run gets): the loaders accept any finite weight, and a
    weight of -2e38 overflows the next forward pass; there is no principled bound to check
    (the Adam moments have one, and it is checked)."""
    from mbpo_fast.mbpo import MBPO

    write_run(files, logdir)
    try:
        algo = MBPO.resume(logdir, quiet=True)
    except BaseException as exc:  # noqa: BLE001 - judged by verdict()
        if isinstance(exc, KeyboardInterrupt):
            raise
        return verdict(exc, logdir), f"rejected: {type(exc).__name__}: {str(exc)[:160]}"
    try:
        algo._step()  # the loaded state drives env, model training, rollouts and SAC
    except Exception as exc:  # noqa: BLE001
        if data_only or (isinstance(exc, ValueError) and "non-finite" in str(exc)):
            return None, f"data refused in the step: {type(exc).__name__}: {str(exc)[:120]}"
        return (f"resumed, then the first step raised {type(exc).__name__}: {exc}",
                "step failed")
    finally:
        algo.close()
    return None, "resumed"


# ============================================================================ worker
def worker(args: argparse.Namespace) -> int:
    import resource
    import warnings

    import torch

    warnings.filterwarnings("ignore")  # torch's notes on odd pickle protocols, gym's on envs
    torch.set_num_threads(1)
    named = [(d.name, read_checkpoint(d)) for d in seed_dirs([Path(p) for p in args.seeds])]
    seeds = [files for _, files in named]
    replays = [(d, read_input(d)) for d in seed_dirs([Path(p) for p in args.replays
                                                      if p != "-"])]
    logdir = Path(args.scratch) / "run"
    current = Path(args.scratch) / "current"
    if "asan" not in os.environ.get("LD_PRELOAD", ""):  # ASan maps terabytes of shadow
        mapped = _mapped_bytes()
        limit = mapped + args.max_rss_mb * 2 * (1 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def report(tag: str, i: int, text: str) -> None:
        print(f"{tag} {i} {text}".replace("\n", " ")[:2000], flush=True)

    # every seed must resume and step; every regression input must resume or be rejected
    for i, (d, files) in enumerate(replays):
        _save_input(files, current, {"what": f"replay {d}", "seed": "", "manifest": ""})
        report("RUN", -1 - i, str(d))
        bad, outcome = run_one(files, logdir)
        if bad is None and d.parent.name == "checkpoint" and d.parent.parent.name == "corpus" \
                and outcome != "resumed":
            bad = f"seed checkpoint did not resume: {outcome}"
        if bad:
            report("FAIL", -1 - i, bad)
            return 1
        report("OK", -1 - i, f"{d.name}: {outcome}")
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    deadline = time.monotonic() + args.seconds
    i = args.start
    while time.monotonic() < deadline and (args.runs is None or i < args.start + args.runs):
        rng = random.Random(f"{args.seed}:{i}")
        mut = Mutator(rng, seeds)
        try:
            seed_name, seed = rng.choice(named)
            files, what, policy = mut.mutate(seed)
        except Exception as exc:  # a bug of this driver, not of the loader
            report("FAIL", i, f"the mutator itself raised {type(exc).__name__}: {exc} "
                              f"({'; '.join(mut.log)})")
            return 2
        _save_input(files, current, {"what": f"--seed {args.seed} input {i}: {what}",
                                     "seed": seed_name, "manifest": policy})
        report("RUN", i, what)
        changed = {n for n in set(files) | set(seed) if files.get(n) != seed.get(n)}
        data = {n for n in changed if n in files and (n == "config.json" or n.endswith(".bin"))}
        data_only = changed <= data | {"MANIFEST.json"}
        bad, outcome = run_one(files, logdir, data_only)
        if outcome == "step failed" and data:
            # with other mutations too: if the seed with these config.json / pool changes alone
            # fails the step the same way, they are the cause (see run_one), not the loaders
            alone = dict(seed, **{n: files[n] for n in data})
            alone["MANIFEST.json"] = _manifest(alone)
            _, why = run_one(alone, logdir, data_only=True)
            kind = bad.split(" raised ")[1].split(":")[0]
            if why.startswith(f"data refused in the step: {kind}"):
                bad, outcome = None, why
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        if bad is None and rss - baseline > args.max_rss_mb:
            if "config.json" in changed:
                # buffers and batches of the hyperparameters' size (built by the resume or by the
                # step), as in a fresh run with this config; the loaders' own memory is bounded
                # by the files' sizes. The peak is spent: the supervisor goes on in a fresh worker
                report("OK", i, f"{outcome} (the step used {rss - baseline} MB)")
                return _RESTART
            bad = f"peak RSS grew by {rss - baseline} MB (limit {args.max_rss_mb} MB)"
        if bad:
            report("FAIL", i, bad)
            return 1
        report("OK", i, outcome)
        i += 1
    return 0


def _mapped_bytes() -> int:
    total = 0
    with open("/proc/self/maps") as f:
        for line in f:
            a, b = line.split()[0].split("-")
            total += int(b, 16) - int(a, 16)
    return total


def _save_input(files: dict[str, bytes], where: Path, info: dict) -> None:
    """The input about to run, for the supervisor to keep if the worker dies on it."""
    tmp = where.with_name(where.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name, blob in files.items():
        (tmp / name).write_bytes(blob)
    (tmp / "FUZZ_INPUT.json").write_text(json.dumps(info) + "\n")
    if where.exists():
        shutil.rmtree(where)
    tmp.rename(where)


# ============================================================================ supervisor
_RESTART = 3  # worker exit status: start a fresh worker at the next input (see worker)


def supervise(args: argparse.Namespace) -> int:
    artifacts = Path(args.artifacts)
    scratch = Path(tempfile.mkdtemp(prefix="mbpo_fuzz_ckpt."))
    env = dict(os.environ)
    if importlib.util.find_spec("mbpo_fast") is None:  # not installed: the source tree
        env["PYTHONPATH"] = os.pathsep.join(
            [str(HERE.parents[1])] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    start = time.monotonic()
    counts = {"resumed": 0, "rejected": 0, "data": 0}
    last_run, failure, tail = None, None, []
    first, replays = args.start, args.replays
    while True:
        left = args.seconds - (time.monotonic() - start)
        runs = None if args.runs is None else args.runs - (first - args.start)
        cmd = [sys.executable, __file__, "--worker", "--scratch", str(scratch),
               "--seconds", str(max(left, 0.0)), "--seed", str(args.seed), "--start", str(first),
               "--max-rss-mb", str(args.max_rss_mb), *(["--runs", str(runs)] if runs else [])]
        cmd += [a for d in args.seeds for a in ("--seed-dir", d)]
        cmd += [a for d in replays for a in ("--replay", d)] or ["--replay", "-"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                text=True, bufsize=1)
        last_ok = first - 1
        try:
            while True:
                ready, _, _ = select.select([proc.stdout], [], [], args.timeout)
                if not ready:
                    failure = f"hang: no result within {args.timeout} s"
                    proc.send_signal(signal.SIGKILL)
                    break
                line = proc.stdout.readline()
                if not line:
                    break
                line = line.rstrip("\n")
                tag = line.split(" ", 1)[0]
                if tag == "RUN":
                    last_run = line
                elif tag == "OK":
                    last_ok = int(line.split(" ", 2)[1])
                    kind = "resumed" if line.endswith("resumed") else \
                        "data" if "data refused in the step" in line else "rejected"
                    counts[kind] += 1
                    if args.verbose:
                        print(line, flush=True)
                elif tag == "FAIL":
                    failure = line
                else:
                    tail = (tail + [line])[-40:]
        finally:
            rc = proc.wait()
        if failure is None and rc == _RESTART:  # the worker's peak RSS is spent: a fresh one
            first, replays = last_ok + 1, []
            continue
        if failure is None and rc != 0:
            failure = f"worker died (exit status {rc}, signal {-rc if rc < 0 else 0})"
        break
    total = sum(counts.values())
    print(f"== fuzz checkpoint: {total} inputs in {time.monotonic() - start:.0f} s "
          f"({counts['resumed']} resumed and stepped, {counts['rejected']} rejected with a "
          f"clear error, {counts['data']} whose hyperparameters, pool rows or extreme finite "
          f"values fail the first training step cleanly, as in a fresh run)")
    if failure is None:
        shutil.rmtree(scratch, ignore_errors=True)
        return 0
    artifacts.mkdir(parents=True, exist_ok=True)
    dest = artifacts / f"checkpoint-{args.seed}-{int(time.time())}"
    if (scratch / "current").exists():
        shutil.copytree(scratch / "current", dest)
    print("\n".join(tail))
    print(f"== fuzz checkpoint FAILED on {last_run}\n   {failure}\n   input: {dest}\n"
          f"   replay: PYTHONPATH=. python {__file__} --seconds 0 --replay {dest}")
    shutil.rmtree(scratch, ignore_errors=True)
    return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=30.0, help="time box of the mutation phase")
    p.add_argument("--runs", type=int, default=None, help="stop after this many inputs")
    p.add_argument("--seed", type=int, default=0, help="the mutation stream")
    p.add_argument("--start", type=int, default=0, help="index of the first input")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per input (a hang)")
    p.add_argument("--max-rss-mb", type=int, default=1024, help="peak RSS growth allowed")
    p.add_argument("--artifacts", default="build/fuzz/artifacts", help="where findings go")
    p.add_argument("--seed-dir", dest="seeds", action="append", default=None,
                   help="seed checkpoints (default: tests/fuzz/corpus/checkpoint)")
    p.add_argument("--replay", dest="replays", action="append", default=None,
                   help="inputs to run unmutated first (default: the seeds and "
                        "tests/fuzz/regressions/checkpoint); with --seconds 0, only these")
    p.add_argument("--save-regression", nargs=2, metavar=("ARTIFACT", "NAME"),
                   help="store a finding (once fixed) as regressions/checkpoint/NAME")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--scratch", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.save_regression:
        print(save_regression(Path(args.save_regression[0]), args.save_regression[1]))
        return 0
    if args.seeds is None:
        args.seeds = [str(CORPUS)]
    if args.replays is None:
        args.replays = [str(CORPUS), str(REGRESSIONS)] if args.worker is False else []
    if args.worker:
        return worker(args)
    return supervise(args)


if __name__ == "__main__":
    sys.exit(main())
