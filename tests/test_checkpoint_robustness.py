"""Checkpoints under damage and under a crash while saving.

* Every file of a checkpoint (and its manifest), truncated or with one byte changed, makes
  ``MBPO.resume`` raise a ValueError that names that file; legacy checkpoints without a
  manifest still name the truncated file (the parsers' own checks).
* Kill during save: a forked copy of a run saves its next checkpoint and dies (``os._exit``,
  no cleanup, like SIGKILL) at each of the save's filesystem operations in turn, before the
  operation runs and with the file being written cut in half; after every such death the
  run directory holds a complete checkpoint, the previous one or the new one, which passes
  its manifest and resumes; and the next save on that debris leaves exactly one checkpoint.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

import mbpo_fast as mf
from mbpo_fast.checkpoint import MANIFEST, verify_checkpoint, write_manifest
from mbpo_fast.config import MBPOConfig
from mbpo_fast.mbpo import _CKPT_FILES, MBPO, latest_checkpoint

TINY = ["init_random_steps=100", "model_train_freq=50", "rollout_batch_size=64",
        "rollout_schedule=[0,1,1,2]", "epoch_length=100", "retain_epochs=2",
        "num_sac_updates=1", "sac_hidden_size=32", "sac_batch_size=64", "model_hidden_size=16",
        "model_num_layers=2", "model_max_epochs=3", "eval_freq=100", "eval_episodes=1",
        "checkpoint_freq=100"]
_KILLED = 17


def _config(**kw) -> MBPOConfig:
    cfg = MBPOConfig().with_overrides(TINY)
    for k, v in kw.items():
        setattr(cfg, k, v)
    cfg.validate()
    return cfg


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished 150-step run with its checkpoint at step 150 (model fitted, pools filled)."""
    torch.set_num_threads(1)
    logdir = tmp_path_factory.mktemp("ckpt") / "run"
    algo = MBPO(_config(total_steps=150, checkpoint_freq=150), logdir=logdir, quiet=True)
    algo.train()
    algo.close()
    assert latest_checkpoint(logdir).name == "ckpt-150"
    return logdir


def _damage(path: Path, how: str) -> None:
    blob = bytearray(path.read_bytes())
    if how == "truncate":
        blob = blob[: len(blob) // 2]
    else:  # change one byte in the middle (a bit flip that keeps the size)
        blob[len(blob) // 2] ^= 0x20
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("how", ["truncate", "flip"])
@pytest.mark.parametrize("name", [*_CKPT_FILES, MANIFEST])
def test_damaged_file_is_named(run_dir, tmp_path, name, how, one_torch_thread):
    logdir = tmp_path / "run"
    shutil.copytree(run_dir, logdir)
    ckpt = latest_checkpoint(logdir)
    _damage(ckpt / name, how)
    with pytest.raises(ValueError, match=re.escape(str(ckpt / name))):
        MBPO.resume(logdir, quiet=True)


@pytest.mark.parametrize("name", _CKPT_FILES)
def test_legacy_checkpoint_without_manifest_names_a_truncated_file(run_dir, tmp_path, name,
                                                                    one_torch_thread):
    logdir = tmp_path / "run"
    shutil.copytree(run_dir, logdir)
    ckpt = latest_checkpoint(logdir)
    (ckpt / MANIFEST).unlink()
    _damage(ckpt / name, "truncate")
    with pytest.raises(ValueError, match=re.escape(str(ckpt / name))):
        MBPO.resume(logdir, quiet=True)
    # undamaged, the legacy checkpoint resumes
    shutil.rmtree(logdir)
    shutil.copytree(run_dir, logdir)
    (latest_checkpoint(logdir) / MANIFEST).unlink()
    assert MBPO.resume(logdir, quiet=True).env_steps == 150


def test_damaged_latest_pointer_falls_back_to_the_complete_checkpoint(run_dir, tmp_path,
                                                                      one_torch_thread):
    logdir = tmp_path / "run"
    shutil.copytree(run_dir, logdir)
    for junk in (b"\xff\xfe garbage", b"ckpt-99999", b"../../etc", b""):
        (logdir / "checkpoints" / "latest").write_bytes(junk)
        assert latest_checkpoint(logdir).name == "ckpt-150"
    assert MBPO.resume(logdir, quiet=True).env_steps == 150



# ------------------------------------------------------------------ hostile files
class _Payload:
    """Unpickling this calls open(path, "w"), i.e. creates a file: a stand-in for any code
    a pickle's __reduce__ can run (os.system, ...)."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("name", ["state.pt", "model_train.pt", "agent.pt"])
def test_a_pickle_that_runs_code_is_refused_and_never_runs(run_dir, tmp_path, name,
                                                           one_torch_thread):
    """Every *.pt file of a checkpoint is read weights-only: a file whose pickle would run
    code (here: create a file) is refused with a ValueError naming it, and the payload never
    runs, even with a manifest rewritten to match (it guards against accidents, not attacks)."""
    logdir = tmp_path / "run"
    shutil.copytree(run_dir, logdir)
    ckpt = latest_checkpoint(logdir)
    marker = tmp_path / "payload_ran"
    obj = torch.load(ckpt / name, weights_only=True, map_location="cpu") \
        if name != "state.pt" else {"format": "mbpo_fast.mbpo_checkpoint/1"}
    obj["payload"] = _Payload(marker)
    torch.save(obj, ckpt / name)
    write_manifest(ckpt, sorted(p.name for p in ckpt.iterdir() if p.name != MANIFEST))
    with pytest.raises(ValueError, match=re.escape(str(ckpt / name)) + ": unsafe checkpoint "
                       r"file, refused.*GLOBAL (io|builtins)\.open"):
        MBPO.resume(logdir, quiet=True)
    assert not marker.exists()


def test_a_compressed_torch_archive_is_refused(run_dir, tmp_path, one_torch_thread):
    """torch.save stores archive members uncompressed; a deflated member could expand a
    thousandfold in memory (a 1 MB file claiming a 1 GB tensor), so it is refused unread."""
    import zipfile

    logdir = tmp_path / "run"
    shutil.copytree(run_dir, logdir)
    ckpt = latest_checkpoint(logdir)
    src = zipfile.ZipFile(ckpt / "model_train.pt")
    members = [(i.filename, src.read(i.filename)) for i in src.infolist()]
    with zipfile.ZipFile(ckpt / "model_train.pt", "w", zipfile.ZIP_DEFLATED) as z:
        for n, d in members:
            z.writestr(n, d)
    write_manifest(ckpt, sorted(p.name for p in ckpt.iterdir() if p.name != MANIFEST))
    with pytest.raises(ValueError, match=re.escape(str(ckpt / "model_train.pt"))
                       + ".*is compressed"):
        MBPO.resume(logdir, quiet=True)


def test_new_state_files_hold_no_numpy_objects(run_dir):
    """state.pt loads with weights_only=True and no extra allowed globals at all."""
    state = torch.load(latest_checkpoint(run_dir) / "state.pt", weights_only=True)
    assert state["format"] == "mbpo_fast.mbpo_checkpoint/1"
    assert isinstance(state["numpy_rng"][1], list) and len(state["numpy_rng"][1]) == 624


def test_a_checkpoint_written_before_weights_only_loading_still_resumes(tmp_path,
                                                                       one_torch_thread):
    """tests/fuzz/corpus/checkpoint/legacy-learned was written by the code before this change
    (its state.pt pickles the numpy RNG key as an ndarray): it still resumes, with the same
    RNG states, and trains on."""
    src = Path(__file__).parent / "fuzz" / "corpus" / "checkpoint" / "legacy-learned"
    logdir = tmp_path / "run"
    shutil.copytree(src, logdir / "checkpoints" / "ckpt-150")
    (logdir / "checkpoints" / "latest").write_text("ckpt-150")
    old = torch.load(src / "state.pt", weights_only=False)  # trusted: our own test file
    algo = MBPO.resume(logdir, quiet=True)
    key = np.random.get_state()[1]
    assert np.array_equal(key, old["numpy_rng"][1]) and algo.env_steps == 150
    assert torch.equal(torch.get_rng_state(), old["torch_rng"])
    algo.config.total_steps = 160
    algo.train()
    assert algo.env_steps == 160
    algo.close()

# ------------------------------------------------------------------ kill during save
class _Killer:
    """Counts the filesystem operations a save makes; dies at operation `kill_at`
    (1-based; 0 = never) before performing it. A death at a file's fsync first cuts the
    file in half, as a death in the middle of writing it would leave it."""

    def __init__(self, kill_at: int) -> None:
        self.kill_at, self.count = kill_at, 0

    def tick(self, fd: int | None = None) -> None:
        self.count += 1
        if self.count == self.kill_at:
            if fd is not None and stat.S_ISREG(os.fstat(fd).st_mode):
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
            os._exit(_KILLED)

    def install(self) -> None:
        real_fsync, real_replace, real_rmtree = os.fsync, os.replace, shutil.rmtree
        real_pool_save = mf.ReplayPool.save

        def fsync(fd):
            self.tick(fd)
            return real_fsync(fd)

        def replace(*a, **kw):
            self.tick()
            return real_replace(*a, **kw)

        def rmtree(*a, **kw):
            self.tick()
            return real_rmtree(*a, **kw)

        def pool_save(pool, path):
            self.tick()  # before the native save (atomic itself: temp file + rename)
            real_pool_save(pool, path)
            self.tick()

        os.fsync, os.replace, shutil.rmtree = fsync, replace, rmtree
        mf.ReplayPool.save = pool_save


def _save_in_child(algo: MBPO, kill_at: int) -> tuple[int, int]:
    """Forks; the child saves a checkpoint with a _Killer(kill_at) installed and reports the
    number of operations it made through its exit status. Returns (status, operations)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no cleanup handlers, no pytest machinery
        try:
            os.close(read)
            mf.set_num_threads(1)  # the parent's pool workers do not exist here
            killer = _Killer(kill_at)
            killer.install()
            algo.save_checkpoint()
            os.write(write, str(killer.count).encode())
            os._exit(0)
        except BaseException:  # noqa: BLE001 - report, never return into pytest
            os._exit(3)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    ops = os.read(read, 64)
    os.close(read)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, _KILLED), f"the saving child failed (exit {code})"
    return code, int(ops) if ops else -1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_kill_during_save_at_every_operation(run_dir, tmp_path, one_torch_thread):
    pristine = tmp_path / "pristine"
    shutil.copytree(run_dir, pristine)
    algo = MBPO.resume(pristine, quiet=True, total_steps=200)
    for _ in range(20):  # a different state to save: step 170
        algo._step()
    assert algo.env_steps == 170
    logdir = algo.logdir = tmp_path / "run"

    shutil.copytree(pristine, logdir)
    code, n_ops = _save_in_child(algo, kill_at=0)
    assert code == 0 and n_ops >= 10  # files, manifest, fsyncs, renames, old checkpoint removal
    new_state = {k: v.clone() for k, v in algo.agent.actor.state_dict().items()}

    outcomes = set()
    for kill_at in range(1, n_ops + 1):
        shutil.rmtree(logdir)
        shutil.copytree(pristine, logdir)
        code, _ = _save_in_child(algo, kill_at)
        assert code == _KILLED
        ckpt = latest_checkpoint(logdir)
        assert ckpt.name in ("ckpt-150", "ckpt-170"), (kill_at, ckpt)
        assert verify_checkpoint(ckpt, _CKPT_FILES), (kill_at, ckpt)
        outcomes.add(ckpt.name)
        if kill_at in (1, n_ops // 2, n_ops):  # a full resume at a few points (slow)
            resumed = MBPO.resume(logdir, quiet=True)
            assert resumed.env_steps == int(ckpt.name[5:])
            if ckpt.name == "ckpt-170":
                for k, v in resumed.agent.actor.state_dict().items():
                    assert torch.equal(v, new_state[k]), k
            resumed.close()
        # the next save, on whatever the death left, ends with exactly one checkpoint
        code, _ = _save_in_child(algo, kill_at=0)
        assert code == 0
        names = sorted(p.name for p in (logdir / "checkpoints").iterdir())
        assert names == ["ckpt-170", "latest"], (kill_at, names)
        assert verify_checkpoint(logdir / "checkpoints" / "ckpt-170", _CKPT_FILES)
    # deaths early in the save keep the previous checkpoint; late ones the new one
    assert outcomes == {"ckpt-150", "ckpt-170"}
    algo.close()
    assert np.isfinite(n_ops)
