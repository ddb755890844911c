"""Hostile files: headers that claim more than the file holds, shapes whose product
overflows int64, deep JSON nesting. Each is rejected with a ValueError (or MemoryError)
naming the file BEFORE anything of the claimed size is allocated: the loads run in a
subprocess under RLIMIT_AS (address space: what is mapped now + 1 GiB), where a claimed
allocation of even a few GiB would fail, and its peak RSS is checked too.
Also replays the fuzz regression inputs (tests/fuzz/regressions) through the Python API."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

import mbpo_fast as mf
from mbpo_fast import _backend
from mbpo_fast.io import load_safetensors, save_safetensors

ROOT = Path(__file__).resolve().parents[1]
# magic, version, pad, capacity, obs_dim, act_dim, size, write_pos, seed, rng counter
_HEADER = struct.Struct("<8sIIqqqqqQQ")


def _pool_file(path: Path, capacity: int, obs_dim: int, act_dim: int, size: int, write_pos: int,
               body: bytes = b"") -> Path:
    """A pool file whose header has a VALID checksum but claims the given sizes."""
    head = _HEADER.pack(b"MBPOPOOL", 1, 0, capacity, obs_dim, act_dim, size, write_pos, 3, 0)
    head += struct.pack("<I", zlib.crc32(head)) + b"\0" * 4
    assert len(head) == 80
    crc = zlib.crc32(head + body)
    path.write_bytes(head + body + struct.pack("<I", crc))
    return path


def _safetensors(path: Path, header: dict | str, data: bytes = b"") -> Path:
    raw = (header if isinstance(header, str) else json.dumps(header)).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


_CHILD = textwrap.dedent("""
    import os, resource, sys, json
    backend = sys.argv[1]
    os.environ["MBPO_FAST_BACKEND"] = backend
    import numpy, torch  # noqa: F401  (mapped before the limit is set)
    import mbpo_fast as mf
    from mbpo_fast.io import load_safetensors
    def mapped():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = mapped() + (1 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results = []
    for kind, path in json.loads(sys.argv[2]):
        try:
            if kind == "pool":
                mf.ReplayPool.load(path)
            elif kind == "ensemble":
                mf.EnsembleDynamics.load(path)
            elif kind == "safetensors":
                load_safetensors(path)
            elif kind == "actor":
                mf._backend.get("native").Actor.load(path)
            results.append(["loaded", ""])
        except (ValueError, MemoryError, OSError) as exc:  # FormatError is a ValueError
            kind = next(k for k in (ValueError, MemoryError, OSError) if isinstance(exc, k))
            results.append([kind.__name__, str(exc)])
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
    print(json.dumps({"results": results, "rss_growth_kb": grown}))
""")


def _load_bounded(backend: str, items: list[tuple[str, Path]]) -> list[tuple[str, str]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("LD_PRELOAD", None)  # ASan reserves terabytes of shadow memory: no RLIMIT_AS there
    if "MBPO_FAST_NATIVE_PATH" in env:
        pytest.skip("RLIMIT_AS cannot be combined with the AddressSanitizer build")
    out = subprocess.run([sys.executable, "-c", _CHILD, backend,
                          json.dumps([[k, str(p)] for k, p in items])],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["rss_growth_kb"] < 200 * 1024, report  # nothing big was touched
    return [tuple(r) for r in report["results"]]


@pytest.mark.parametrize("backend_name", _backend.available())
def test_pool_headers_claiming_huge_sizes_are_rejected_before_allocation(tmp_path, backend_name):
    items = [
        # 10^12 rows claimed (valid header checksum): more than the capacity limit
        ("pool", _pool_file(tmp_path / "rows.bin", 10**12, 11, 3, 10**12, 0)),
        # the largest header the limits allow, claiming every row: 2**32-1 rows x 201 MB each
        ("pool", _pool_file(tmp_path / "max.bin", 2**32 - 1, 2**24, 2**24, 2**32 - 1, 0)),
        # a plausible header whose rows are missing (truncated file)
        ("pool", _pool_file(tmp_path / "short.bin", 10**6, 11, 3, 10**6, 0, b"\0" * 105)),
        # negative and overflowing fields
        ("pool", _pool_file(tmp_path / "neg.bin", -1, 11, 3, 0, 0)),
        ("pool", _pool_file(tmp_path / "ovf.bin", 2**62, 2**62, 2**62, 2**62, 0)),
    ]
    results = _load_bounded(backend_name, items)
    for (_, path), (kind, message) in zip(items, results, strict=True):
        assert kind == "ValueError", (path.name, kind, message)
        assert str(path) in message, message
    assert "inconsistent header" in results[0][1] and "capacity 1000000000000" in results[0][1]
    assert "truncated" in results[1][1] and "truncated" in results[2][1]


@pytest.mark.parametrize("backend_name", _backend.available())
def test_pool_capacity_beyond_the_address_space_is_a_clear_memory_error(tmp_path, backend_name):
    # A valid empty pool whose capacity (2**32-1 rows of 201 MB) no machine can reserve.
    path = _pool_file(tmp_path / "huge_capacity.bin", 2**32 - 1, 2**24, 2**24, 0, 0)
    [(kind, message)] = _load_bounded(backend_name, [("pool", path)])
    assert kind == "MemoryError" and str(path) in message and "capacity 4294967295" in message


def test_safetensors_shapes_overflowing_int64_are_rejected(tmp_path):
    cases = {
        # product 2**64 wraps to 0 in int64 arithmetic: must not match offsets [0, 0]
        "wrap.safetensors": {"x": {"dtype": "F32", "shape": [2**32, 2**32],
                                   "data_offsets": [0, 0]}},
        "wrap3.safetensors": {"x": {"dtype": "F32", "shape": [2**62, 4, 1],
                                    "data_offsets": [0, 0]}},
        # bytes = numel * 4 overflows although numel fits
        "bytes.safetensors": {"x": {"dtype": "F32", "shape": [2**62], "data_offsets": [0, 0]}},
        # claims 10^12 floats that the file does not hold
        "claim.safetensors": {"x": {"dtype": "F32", "shape": [10**12],
                                    "data_offsets": [0, 4 * 10**12]}},
        "negative.safetensors": {"x": {"dtype": "F32", "shape": [-1, -4], "data_offsets": [0, 16]}},
    }
    items = [("safetensors", _safetensors(tmp_path / n, h, b"\0" * 16 if "negative" in n else b""))
             for n, h in cases.items()]
    if "native" in _backend.available():
        items += [("actor", p) for _, p in items]
    for (_, path), (kind, message) in zip(items, _load_bounded("auto", items), strict=True):
        assert kind == "ValueError", (path.name, kind, message)
        assert str(path) in message, message


def test_safetensors_deep_nesting_and_malformed_entries(tmp_path):
    deep = '{"__metadata__": {}, "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], ' \
           '"junk": ' + "[" * 100_000 + "]" * 100_000 + "}}"
    bad = {
        "deep.safetensors": (deep, b"\0" * 4),
        "meta_list.safetensors": ({"__metadata__": [1, 2]}, b""),
        "float_shape.safetensors": ({"x": {"dtype": "F32", "shape": [1.5],
                                           "data_offsets": [0, 4]}}, b"\0" * 4),
        "string_offsets.safetensors": ({"x": {"dtype": "F32", "shape": [1],
                                              "data_offsets": ["0", "4"]}}, b"\0" * 4),
        "three_offsets.safetensors": ({"x": {"dtype": "F32", "shape": [1],
                                             "data_offsets": [0, 4, 8]}}, b"\0" * 4),
    }
    for name, (header, data) in bad.items():
        path = _safetensors(tmp_path / name, header, data)
        with pytest.raises(ValueError, match=str(path)):
            load_safetensors(path)
        if "native" in _backend.available():
            with pytest.raises(ValueError, match=str(path)):
                _backend.get("native").Actor.load(str(path))


def test_ensemble_metadata_claiming_a_huge_model_is_rejected_before_allocation(tmp_path):
    model = mf.EnsembleDynamics(3, 2, ensemble_size=3, num_elites=2, hidden_size=4, num_layers=2)
    good = tmp_path / "good.safetensors"
    model.save(good)
    tensors, meta = load_safetensors(good)
    items = []
    for key, value in {"hidden_size": 10**9, "ensemble_size": 10**7, "num_layers": 10**8,
                       "obs_dim": 10**10}.items():
        path = tmp_path / f"{key}.safetensors"
        save_safetensors(path, tensors, {**meta, key: str(value)})
        items.append(("ensemble", path))
    for (_, path), (kind, message) in zip(items, _load_bounded("auto", items), strict=True):
        assert kind == "ValueError", (path.name, kind, message)
        assert str(path) in message, message
    # the unmodified file still loads, bit for bit
    again = mf.EnsembleDynamics.load(good)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert np.array_equal(a.numpy(), b.numpy()), k


def _regressions(target: str) -> list[Path]:
    d = ROOT / "tests" / "fuzz" / "regressions" / target
    return sorted(p for p in d.iterdir() if not p.name.startswith(".")) if d.is_dir() else []


@pytest.mark.parametrize("path", _regressions("safetensors") + _regressions("ensemble_load")
                         + _regressions("actor_load"), ids=lambda p: p.name)
def test_fuzz_regressions_safetensors(path):
    """Inputs a fuzz run once found: rejected cleanly by every Python-reachable reader."""
    for load in (load_safetensors, mf.EnsembleDynamics.load):
        try:
            load(path)
        except ValueError as exc:
            assert str(path) in str(exc)
    if "native" in _backend.available():
        try:
            _backend.get("native").Actor.load(str(path))
        except ValueError as exc:
            assert str(path) in str(exc)


@pytest.mark.parametrize("path", _regressions("pool_load"), ids=lambda p: p.name)
def test_fuzz_regressions_pool(path, backend):
    try:
        pool = mf.ReplayPool.load(path)
    except (ValueError, MemoryError) as exc:
        assert str(path) in str(exc)
    else:
        pool.transitions()


def _checkpoint_fuzzer():
    """tests/fuzz/fuzz_checkpoint.py as a module (tests/fuzz is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "fuzz_checkpoint", ROOT / "tests" / "fuzz" / "fuzz_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_CKPT_SEEDS = sorted((ROOT / "tests" / "fuzz" / "corpus" / "checkpoint").iterdir())


@pytest.mark.parametrize("path", _CKPT_SEEDS + _regressions("checkpoint"), ids=lambda p: p.name)
def test_fuzz_regressions_checkpoint(path, tmp_path, one_torch_thread):
    """The checkpoint fuzzer's seeds resume and take a training step; the inputs it once
    found (stored as differences from a seed) resume or are rejected with an error naming
    a file of the checkpoint, exactly as in a fuzz run."""
    fc = _checkpoint_fuzzer()
    bad, outcome = fc.run_one(fc.read_input(path), tmp_path / "run")
    assert bad is None, bad
    if path in _CKPT_SEEDS:
        assert outcome == "resumed"


@pytest.mark.parametrize("path", _regressions("checkpoint_load"), ids=lambda p: p.name)
def test_fuzz_regressions_checkpoint_load(path, tmp_path):
    """The native checkpoint target's inputs (a checkpoint's files in one buffer), file by
    file through the Python readers: each loads or is rejected naming the file."""
    blob, pos = path.read_bytes(), 8
    assert blob[:8] == b"MBPOCKPT"
    readers = [mf.ReplayPool.load, mf.ReplayPool.load, mf.EnsembleDynamics.load,
               mf.TerminationModel.load, None]
    for i, read in enumerate(readers):
        (n,) = struct.unpack("<I", blob[pos:pos + 4])
        section, pos = blob[pos + 4:pos + 4 + n], pos + 4 + n
        if read is None or not section:
            continue
        file = tmp_path / f"section{i}"
        file.write_bytes(section)
        try:
            read(file)
        except (ValueError, MemoryError) as exc:
            assert str(file) in str(exc)
