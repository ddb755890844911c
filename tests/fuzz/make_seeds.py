"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/).

Small valid files of each kind the native code reads, written by the library itself, plus
a few edge cases (empty pool, wrapped ring, no optional tensors), and the regression inputs
(tests/fuzz/regressions/<target>/). Re-run after a format change:
``PYTHONPATH=. python tests/fuzz/make_seeds.py``. Deterministic (fixed seeds; the checkpoint
seeds' timing fields differ from run to run). Inputs a fuzz run finds go into
tests/fuzz/regressions/<target>/ as they are (checkpoint directories: see
``fuzz_checkpoint.py --save-regression``).
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


# A run small enough that each fuzz input resumes in ~50 ms, with every kind of file.
_TINY_RUN = ["total_steps=150", "init_random_steps=100", "model_train_freq=50",
             "rollout_batch_size=16", "rollout_schedule=[0,1,1,2]", "epoch_length=100",
             "retain_epochs=1", "num_sac_updates=1", "sac_hidden_size=8", "sac_batch_size=16",
             "model_hidden_size=8", "model_num_layers=2", "model_max_epochs=2",
             "ensemble_size=3", "num_elites=2", "eval_freq=1000", "eval_episodes=1",
             "checkpoint_freq=150"]


def checkpoints(out: Path) -> None:
    """Checkpoint directories of a tiny Pendulum run (builtin and learned termination) for
    fuzz_checkpoint.py. ``legacy-learned/`` (written before state.pt became weights-only:
    its numpy RNG state is a pickled array) is kept as committed, not regenerated."""
    import tempfile

    import torch

    from mbpo_fast.config import MBPOConfig
    from mbpo_fast.mbpo import MBPO, latest_checkpoint

    torch.set_num_threads(1)
    for name, extra in (("builtin", []), ("learned", ["termination=learned"])):
        cfg = MBPOConfig().with_overrides(_TINY_RUN + extra)
        with tempfile.TemporaryDirectory() as tmp:
            algo = MBPO(cfg, logdir=Path(tmp) / "run", quiet=True)
            algo.train()
            algo.close()
            shutil.rmtree(out / name, ignore_errors=True)
            shutil.copytree(latest_checkpoint(Path(tmp) / "run"), out / name)


def bundle(sections: list[bytes]) -> bytes:
    """An input of fuzz_checkpoint_load: "MBPOCKPT", then each file as u32 length + bytes."""
    return b"MBPOCKPT" + b"".join(struct.pack("<I", len(x)) + x for x in sections)


def checkpoint_files(ckpt: Path, termination: bytes | None = None) -> list[bytes]:
    """The sections of fuzz_checkpoint_load for checkpoint directory `ckpt`: its pools, model,
    termination model (empty: builtin) and its agent's actor (exported as C++ reads it)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        mf.SAC.load(ckpt / "agent.pt").export_actor(Path(tmp) / "actor.safetensors")
        actor = (Path(tmp) / "actor.safetensors").read_bytes()
    term = ckpt / "termination_model.safetensors"
    if termination is None:
        termination = term.read_bytes() if term.exists() else b""
    return [(ckpt / "real_pool.bin").read_bytes(), (ckpt / "model_pool.bin").read_bytes(),
            (ckpt / "model.safetensors").read_bytes(), termination, actor]


def checkpoint_bundles(out: Path) -> None:
    for ckpt in sorted((HERE / "corpus" / "checkpoint").iterdir()):
        (out / f"{ckpt.name}.bundle").write_bytes(bundle(checkpoint_files(ckpt)))


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
    # a checkpoint assembled from two runs: a learned termination model of another obs_dim
    # than the dynamics model (the rollout must refuse it, not read rows of the wrong width)
    import tempfile

    learned = HERE / "corpus" / "checkpoint" / "learned"
    ckl = root / "checkpoint_load"
    with tempfile.TemporaryDirectory() as tmp:
        mf.TerminationModel(5, 1, hidden_size=4, seed=1).save(Path(tmp) / "t.safetensors")
        other = (Path(tmp) / "t.safetensors").read_bytes()
    (ckl / "termination_of_other_dims.bundle").write_bytes(
        bundle(checkpoint_files(learned, termination=other)))
    # termination metadata whose 2 * obs_dim + act_dim overflows int64
    raw = (b'{"__metadata__":{"format":"mbpo_fast.termination_model/1","obs_dim":'
           b'"4611686018427387904","act_dim":"4611686018427387904","num_layers":"1"},'
           b'"input_mean":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}')
    (ckl / "termination_dims_overflow.bundle").write_bytes(bundle(
        checkpoint_files(learned, termination=struct.pack("<Q", len(raw)) + raw)))


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
    for target in ("safetensors", "ensemble_load", "actor_load", "pool_load", "checkpoint_load"):
        (HERE / "regressions" / target).mkdir(parents=True, exist_ok=True)
    (HERE / "corpus" / "checkpoint").mkdir(exist_ok=True)
    checkpoints(HERE / "corpus" / "checkpoint")  # (legacy-learned is kept as committed)
    (HERE / "regressions" / "checkpoint").mkdir(parents=True, exist_ok=True)
    regressions(HERE / "regressions")
    ckl = HERE / "corpus" / "checkpoint_load"
    shutil.rmtree(ckl, ignore_errors=True)
    ckl.mkdir()
    checkpoint_bundles(ckl)
    for d in sorted((HERE / "corpus").iterdir()):
        print(d.name, sorted(p.name for p in d.iterdir()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
