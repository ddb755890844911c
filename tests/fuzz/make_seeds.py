"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/).

Small valid files of each kind the native code reads, written by the library itself, plus
a few edge cases (empty pool, wrapped ring, no optional tensors), and the regression inputs
(tests/fuzz/regressions/<target>/). Re-run after a format change:
``PYTHONPATH=. python tests/fuzz/make_seeds.py``. Deterministic (fixed seeds). Inputs a
fuzz run finds go into tests/fuzz/regressions/<target>/ as they are.
"""

from __future__ import annotations

import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

import mbpo_fast as mf
from mbpo_fast.io import load_safetensors, save_safetensors

HERE = Path(__file__).resolve().parent


def pools(out: Path) -> None:
    rng = np.random.default_rng(0)
    for name, (capacity, obs_dim, act_dim, rows) in {
        "empty": (4, 3, 2, 0),
        "partial": (8, 3, 2, 5),
        "wrapped": (6, 2, 1, 9),   # rows > capacity: the ring has wrapped
        "full": (5, 4, 3, 5),
    }.items():
        pool = mf.ReplayPool(capacity, obs_dim, act_dim, seed=7)
        if rows:
            pool.add_batch(rng.normal(size=(rows, obs_dim)).astype(np.float32),
                           rng.normal(size=(rows, act_dim)).astype(np.float32),
                           rng.normal(size=rows).astype(np.float32),
                           rng.normal(size=(rows, obs_dim)).astype(np.float32),
                           rng.random(rows) < 0.3)
            pool.sample(3)  # advances the RNG counter stored in the file
        pool.save(out / f"{name}.pool")


def ensembles(out: Path) -> None:
    for name, kw in {
        "small": dict(obs_dim=3, act_dim=2, ensemble_size=3, num_elites=2, hidden_size=4,
                      num_layers=2),
        "one_hidden": dict(obs_dim=2, act_dim=1, ensemble_size=2, num_elites=1, hidden_size=3,
                           num_layers=1),
    }.items():
        mf.EnsembleDynamics(**kw, seed=3).save(out / f"{name}.safetensors")


def actors(out: Path) -> None:
    agent = mf.SAC(3, 2, np.array([-1.0, -2.0]), np.array([1.0, 0.5]), hidden_size=4,
                   num_layers=2, seed=1)
    agent.export_actor(out / "actor.safetensors")
    # the older layout without the optional action box
    tensors, meta = load_safetensors(out / "actor.safetensors")
    del tensors["action_low"], tensors["action_high"]
    save_safetensors(out / "actor_no_box.safetensors", tensors, meta)


def _safetensors(path: Path, header: str, data: bytes = b"") -> None:
    raw = header.encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _pool(path: Path, capacity: int, obs_dim: int, act_dim: int, size: int) -> None:
    """A pool header with a valid checksum claiming `size` rows, and no rows."""
    head = struct.pack("<8sIIqqqqqQQ", b"MBPOPOOL", 1, 0, capacity, obs_dim, act_dim, size,
                       0 if size == capacity else size, 3, 0)
    head += struct.pack("<I", zlib.crc32(head)) + b"\0" * 4
    path.write_bytes(head + struct.pack("<I", zlib.crc32(head)))


def regressions(root: Path) -> None:
    """Inputs that once got past a check (each fixed; replayed by the fuzz targets and by
    tests/test_hardening.py). Names say what they exercise."""
    st, ens, act, pool = (root / t for t in ("safetensors", "ensemble_load", "actor_load",
                                             "pool_load"))
    # int64 product of the extents wrapped to 0 and matched offsets [0, 0]
    _safetensors(st / "shape_product_wraps.safetensors",
                 '{"x":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}')
    # numel fits but numel * 4 bytes does not
    _safetensors(st / "shape_bytes_overflow.safetensors",
                 '{"x":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}}')
    # unbounded recursion of the JSON reader on a nested value of an unknown key
    _safetensors(st / "deep_nesting.safetensors",
                 '{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"junk":'
                 + "[" * 200_000 + "]" * 200_000 + "}}", b"\0" * 4)
    # metadata sizes whose sums and products overflow int64 (obs_dim + act_dim, 2 * act_dim)
    meta = ('{"__metadata__":{"obs_dim":"9223372036854775807","act_dim":"9223372036854775807",'
            '"activation":"silu","num_layers":"1","format":"mbpo_fast.actor/1"},'
            '"input_mean":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}')
    _safetensors(ens / "dims_overflow.safetensors", meta)
    _safetensors(act / "dims_overflow.safetensors", meta)
    # pool headers (valid checksums) claiming 10**12 rows, and the largest allowed claim
    _pool(pool / "rows_1e12.pool", 10**12, 11, 3, 10**12)
    _pool(pool / "largest_claim.pool", 2**32 - 1, 2**24, 2**24, 2**32 - 1)
    _pool(pool / "capacity_beyond_memory.pool", 2**32 - 1, 2**24, 2**24, 0)


def main() -> int:
    targets = {"pool_load": pools, "ensemble_load": ensembles, "actor_load": actors}
    for target, make in targets.items():
        out = HERE / "corpus" / target
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        make(out)
    # the generic safetensors parser gets every safetensors seed
    st = HERE / "corpus" / "safetensors"
    shutil.rmtree(st, ignore_errors=True)
    st.mkdir(parents=True)
    for target in ("ensemble_load", "actor_load"):
        for f in (HERE / "corpus" / target).iterdir():
            shutil.copy(f, st / f"{target}-{f.name}")
    for target in ("safetensors", "ensemble_load", "actor_load", "pool_load"):
        (HERE / "regressions" / target).mkdir(parents=True, exist_ok=True)
    regressions(HERE / "regressions")
    for d in sorted((HERE / "corpus").iterdir()):
        print(d.name, sorted(p.name for p in d.iterdir()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
