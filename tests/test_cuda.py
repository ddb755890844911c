"""CUDA kernels: the shared index math on the CPU (always runs) and device parity (gpu).

The CPU tests cover what the kernels compute without a GPU: the member of each row, the
grouping of rows by member and the block -> tile mapping (ensemble_step_plan runs the same
MBPO_HD bodies, kernels/ensemble_grouping.h, that the CUDA launch uses), plus the errors the
CUDA entry points raise when there is no CUDA build or device. The `gpu` tests compare the
device ops with the CPU backend: identical member choices and Philox draws, values within
1e-5 relative, pool semantics, bad inputs, and a compute-sanitizer run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import mbpo_fast as mf
from mbpo_fast import _backend

ROOT = Path(__file__).resolve().parents[1]
OBS, ACT = 11, 3
needs_native = pytest.mark.skipif(
    "native" not in _backend.available(), reason="needs the native extension"
)


def _native():
    return _backend.get("native")


def _cpu_model(seed: int = 0, hidden: int = 200, layers: int = 4, elites=(6, 2, 0, 4, 5)):
    """A Hopper-sized CPU model with non-trivial normalizer, logvar bounds and elites."""
    import torch

    model = mf.EnsembleDynamics(
        OBS, ACT, ensemble_size=7, num_elites=5, hidden_size=hidden, num_layers=layers, seed=seed
    )
    g = np.random.default_rng(seed + 100)
    with torch.no_grad():
        model.input_mean.copy_(torch.from_numpy(g.normal(size=OBS + ACT).astype(np.float32)))
        model.input_std.copy_(torch.from_numpy(g.uniform(0.5, 2.0, OBS + ACT).astype(np.float32)))
        model.max_logvar.copy_(torch.from_numpy(g.uniform(0.0, 0.5, OBS + 1).astype(np.float32)))
        model.min_logvar.copy_(torch.from_numpy(g.uniform(-6.0, -4.0, OBS + 1).astype(np.float32)))
    model.set_elites(list(elites))
    return model


def _rows(n: int, seed: int = 1):
    g = np.random.default_rng(seed)
    return g.normal(size=(n, OBS)).astype(np.float32), g.uniform(-1, 1, (n, ACT)).astype(np.float32)


def _plan(model, batch: int, seed: int, members=None, tile_rows=None):
    inf = model.inference
    kwargs = {} if tile_rows is None else {"tile_rows": tile_rows}
    return _native().ensemble_step_plan(batch, seed, *inf._params(), inf.elites, members, **kwargs)


# ---------------------------------------------------------------------------- CPU: index math


@needs_native
@pytest.mark.parametrize("batch", [1, 5, 33, 1000])
def test_plan_members_are_the_cpu_steps_choices(batch):
    model = _cpu_model(hidden=16, layers=2)
    obs, act = _rows(batch)
    for seed in (0, 7, 2**64 - 1):
        _, _, used = model.step(obs, act, seed=seed, return_members=True)
        plan = _plan(model, batch, seed)
        np.testing.assert_array_equal(plan["member"], used)


@needs_native
def test_member_choice_is_the_documented_philox_formula():
    """elites[(random_u32(seed, STREAM_MEMBER_CHOICE, i) * K) >> 32]: an independent reference."""
    native = _native()
    model = _cpu_model(hidden=16, layers=2)
    elites = np.asarray(model.elites)
    seed, batch = 123456789, 4096
    words = native.philox_fill_u32(seed, native.STREAM_MEMBER_CHOICE, 0, batch).astype(np.uint64)
    expected = elites[((words * np.uint64(len(elites))) >> np.uint64(32)).astype(np.int64)]
    np.testing.assert_array_equal(_plan(model, batch, seed)["member"], expected)
    # every elite is used, non-elites never
    assert set(np.unique(expected).tolist()) == set(elites.tolist())


@needs_native
@pytest.mark.parametrize(
    "batch,tile_rows", [(0, 32), (1, 32), (32, 32), (33, 32), (1000, 32), (999, 7), (64, 1)]
)
def test_plan_grouping_and_tiles_cover_every_row_once(batch, tile_rows):
    model = _cpu_model(hidden=16, layers=2)
    plan = _plan(model, batch, seed=3, tile_rows=tile_rows)
    member, start, order = plan["member"], plan["start"], plan["order"]
    E = model.ensemble_size
    counts = np.bincount(member, minlength=E)
    np.testing.assert_array_equal(start, np.concatenate([[0], np.cumsum(counts)]))
    np.testing.assert_array_equal(np.sort(order), np.arange(batch))
    for e in range(E):
        rows = order[start[e] : start[e + 1]]
        assert (member[rows] == e).all()
        assert (np.diff(rows) > 0).all()  # stable within a member on the CPU
    tm, tf, tr = plan["tile_member"], plan["tile_first"], plan["tile_rows"]
    assert len(tm) == sum(-(-c // tile_rows) for c in counts)
    assert len(tm) <= -(-batch // tile_rows) + E  # the CUDA grid bound (max_step_tiles)
    assert ((tr >= 1) & (tr <= tile_rows)).all()
    covered = np.zeros(batch, dtype=np.int64)
    for m, f, r in zip(tm, tf, tr, strict=True):
        assert start[m] <= f and f + r <= start[m + 1]
        covered[f : f + r] += 1
    np.testing.assert_array_equal(covered, np.ones(batch, dtype=np.int64))
    # tiles are numbered member by member, in increasing sorted position
    assert (np.diff(tf) > 0).all() if len(tf) > 1 else True


@needs_native
def test_plan_with_explicit_members_and_bad_members():
    model = _cpu_model(hidden=16, layers=2)
    members = np.array([3, 3, 1, 6, 0, 3], dtype=np.int64)
    plan = _plan(model, 6, seed=0, members=members)
    np.testing.assert_array_equal(plan["member"], members)
    np.testing.assert_array_equal(plan["order"], [4, 2, 0, 1, 5, 3])
    with pytest.raises(ValueError, match="members"):
        _plan(model, 6, seed=0, members=np.array([0, 1, 2, 3, 4, 7]))
    with pytest.raises(ValueError, match="tile_rows"):
        _plan(model, 6, seed=0, tile_rows=0)


@needs_native
def test_cuda_constants_exposed():
    native = _native()
    assert native.CUDA_ENSEMBLE_TILE_ROWS == 32
    assert native.CUDA_MAX_MEMBERS >= 7


@needs_native
def test_cuda_view_set_elites_is_validated_before_it_changes_anything():
    """CudaEnsembleView only holds pointers (nothing is dereferenced on the host but the
    elites), so it can be built here with fake non-null device pointers."""
    native = _native()
    if not hasattr(native, "CudaEnsembleView"):
        pytest.skip("extension built without the CUDA bindings")
    fake = 256
    widths = [OBS + ACT, 8, 2 * (OBS + 1)]
    view = native.CudaEnsembleView(
        OBS, ACT, 3, widths, fake, fake, [fake, fake], [fake, fake], fake, fake, [2, 0]
    )
    assert view.elites == [2, 0]
    with pytest.raises(ValueError, match="elites"):
        view.set_elites([1, 3])  # 3 is out of range for E = 3
    assert view.elites == [2, 0]  # unchanged: the failed call left the handle as it was
    view.set_elites([1])
    assert view.elites == [1]
    with pytest.raises(ValueError, match="elites"):
        native.CudaEnsembleView(
            OBS, ACT, 3, widths, fake, fake, [fake, fake], [fake, fake], fake, fake, [5]
        )


@pytest.mark.skipif(mf.has_cuda(), reason="checks the no-device errors")
def test_cuda_entry_points_fail_clearly_without_a_device():
    from mbpo_fast import cuda_ops

    assert cuda_ops.available() is False
    with pytest.raises(RuntimeError, match="CUDA|cuda|native"):
        mf.ReplayPool(16, OBS, ACT, device="cuda")
    with pytest.raises(RuntimeError, match="CUDA|cuda|native"):
        cuda_ops.require("test")
    with pytest.raises(RuntimeError, match="CUDA|cuda|native"):
        mf.ReplayPool.load("unused.bin", device="cuda")


def test_as_cuda_tensor_rejects_host_arrays_naming_the_argument():
    torch = pytest.importorskip("torch")
    from mbpo_fast.cuda_ops import as_cuda_tensor

    with pytest.raises(ValueError, match="obs: expected a CUDA tensor"):
        as_cuda_tensor("obs", torch.zeros(2, OBS), (None, OBS))
    with pytest.raises(TypeError, match="act: expected a torch CUDA tensor"):
        as_cuda_tensor("act", np.zeros((2, ACT), np.float32), (None, ACT))


def test_gpu_suite_exits_cleanly_without_a_gpu():
    if mf.has_cuda():
        pytest.skip("a GPU is present: the suite would run for real")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--no-build"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA device" in proc.stdout


def test_cuda_ensemble_adapter_passes_each_op_its_arguments_in_order(monkeypatch):
    """CudaEnsemble's wiring without a device: a recording stand-in for the native ops checks
    that step / step_uncertainty / predict / disagreement hand every kernel its inputs, its
    output buffers (those returned), the workspace and the stream, in the bindings' order."""
    import contextlib

    import torch

    from mbpo_fast import cuda_ops

    calls = {}

    class Native:
        def __getattr__(self, name):
            if name.endswith("_workspace_bytes"):
                return lambda *a: 64 + len(a)
            return lambda *a: calls.__setitem__(name, a)

    def as_tensor(name, x, shape, device=None):
        t = torch.as_tensor(np.asarray(x, np.float32))
        assert t.ndim == len(shape), name
        return t

    monkeypatch.setattr(cuda_ops, "as_cuda_tensor", as_tensor)
    monkeypatch.setattr(cuda_ops, "_stream", lambda device: 7)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    ens = object.__new__(cuda_ops.CudaEnsemble)
    ens._native, ens.view, ens.device = Native(), "VIEW", torch.device("cpu")
    ens.obs_dim, ens.act_dim, ens.ensemble_size, ens.elites = 3, 2, 5, [0, 2, 4]
    rng = np.random.default_rng(0)
    obs, act = rng.normal(size=(4, 3)), rng.normal(size=(4, 2))

    out = ens.step(obs, act, seed=9, deterministic=True, members=[1, 0, 4, 2])
    a = calls["cuda_ensemble_step"]
    assert a[0] == "VIEW" and a[3:6] == (4, 9, True) and a[6] != 0
    assert a[7:10] == tuple(t.data_ptr() for t in out) and out[2].dtype == torch.int64
    assert a[10:] == (a[10], 64 + 2, 7)
    assert [tuple(t.shape) for t in out] == [(4, 3), (4,), (4,)]
    out = ens.step(obs, act)
    assert calls["cuda_ensemble_step"][6] == 0  # no explicit members: null pointer

    out = ens.step_uncertainty(obs, act, seed=3)
    a = calls["cuda_ensemble_step_uncertainty"]
    assert a[3:6] == (4, 3, False) and a[6:9] == tuple(t.data_ptr() for t in out)
    assert a[10:] == (64 + 3, 7)

    mean, var = ens.predict(obs, act)
    a = calls["cuda_ensemble_predict"]
    assert a[3:] == (4, mean.data_ptr(), var.data_ptr(), 7) and mean.shape == (5, 4, 4)

    d = ens.disagreement(obs, act)
    a = calls["cuda_ensemble_disagreement"]
    assert a[3:6] == (4, [0, 2, 4], d.data_ptr()) and a[7:] == (64 + 3, 7)

    one = ens.step(obs[0], act[0])
    assert [tuple(t.shape) for t in one] == [(3,), (), ()]


# ---------------------------------------------------------------------------- GPU: parity


def _pair(seed: int = 0):
    """(cpu_model, cuda_model) with identical parameters."""
    cpu = _cpu_model(seed)
    gpu = mf.EnsembleDynamics(OBS, ACT, ensemble_size=7, num_elites=5, seed=seed, device="cuda")
    gpu.load_state_dict(cpu.state_dict())
    assert gpu.elites == cpu.elites
    return cpu, gpu


def _close(a, b, rtol=1e-5):
    a = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
    scale = max(1.0, float(np.abs(b).max()) if np.size(b) else 1.0)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 31, 32, 33, 256, 4099])
@pytest.mark.parametrize("deterministic", [False, True])
def test_step_matches_cpu(batch, deterministic):
    import torch

    cpu, gpu = _pair()
    obs, act = _rows(batch)
    seed = 2**40 + 17
    want_obs, want_rew, want_mem = cpu.step(
        obs, act, seed=seed, deterministic=deterministic, return_members=True
    )
    o, a = torch.from_numpy(obs).cuda(), torch.from_numpy(act).cuda()
    got_obs, got_rew, got_mem = gpu.step(
        o, a, seed=seed, deterministic=deterministic, return_members=True
    )
    assert got_obs.is_cuda and got_rew.is_cuda and got_obs.dtype == torch.float32
    np.testing.assert_array_equal(got_mem.cpu().numpy(), want_mem)
    _close(got_obs, want_obs)
    _close(got_rew, want_rew)


@pytest.mark.gpu
def test_step_explicit_members_single_row_and_side_stream():
    import torch

    cpu, gpu = _pair(1)
    obs, act = _rows(300, seed=5)
    members = np.random.default_rng(0).integers(0, 7, 300)
    want_obs, want_rew = cpu.step(obs, act, seed=9, members=members)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):  # the kernels must follow the caller's current stream
        o, a = torch.from_numpy(obs).cuda(), torch.from_numpy(act).cuda()
        got_obs, got_rew = gpu.step(o, a, seed=9, members=torch.from_numpy(members).cuda())
    s.synchronize()
    _close(got_obs, want_obs)
    _close(got_rew, want_rew)
    one_obs, one_rew = gpu.step(o[7], a[7], seed=9, members=int(members[7]))
    w1, r1 = cpu.step(obs[7], act[7], seed=9, members=int(members[7]))
    assert one_obs.shape == (OBS,)
    # row 0 of a one-row call draws the noise of row 0, so compare against a one-row CPU call
    _close(one_obs, w1)
    _close(one_rew, r1)


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 100, 1025])
def test_predict_and_disagreement_match_cpu(batch):
    import torch

    cpu, gpu = _pair(2)
    obs, act = _rows(batch, seed=8)
    o, a = torch.from_numpy(obs).cuda(), torch.from_numpy(act).cuda()
    mean, var = gpu.predict(o, a)
    want_mean, want_var = cpu.predict(obs, act)
    assert mean.shape == (7, batch, OBS + 1) and mean.is_cuda
    _close(mean, want_mean)
    _close(var, want_var)
    _close(gpu.disagreement(o, a), cpu.disagreement(obs, act), rtol=1e-4)
    _close(
        gpu.disagreement(o, a, members=[0, 1, 2, 3, 4, 5, 6]),
        cpu.disagreement(obs, act, members=[0, 1, 2, 3, 4, 5, 6]),
        rtol=1e-4,
    )


@pytest.mark.gpu
def test_step_bad_inputs_name_the_argument():
    import torch

    _, gpu = _pair()
    o = torch.zeros(4, OBS, device="cuda")
    a = torch.zeros(4, ACT, device="cuda")
    with pytest.raises(ValueError, match="act: expected a CUDA tensor"):
        gpu.step(o, torch.zeros(4, ACT))
    with pytest.raises(TypeError, match="obs: expected dtype torch.float32"):
        gpu.step(o.double(), a)
    with pytest.raises(ValueError, match="act: expected shape"):
        gpu.step(o, torch.zeros(5, ACT, device="cuda"))
    with pytest.raises(ValueError, match="obs: expected a C-contiguous"):
        gpu.step(torch.zeros(OBS, 4, device="cuda").t(), a)
    with pytest.raises(ValueError, match="members: entry 2 = 9"):
        gpu.step(o, a, members=torch.tensor([0, 1, 9, 2], device="cuda"))
    with pytest.raises(TypeError, match="members"):
        gpu.step(o, a, members=torch.zeros(4, device="cuda"))


@pytest.mark.gpu
def test_has_cuda_and_build_info():
    info = mf.build_info()
    assert mf.has_cuda() and info["cuda_compiled"] and info["cuda_architectures"]


# ---------------------------------------------------------------------------- GPU: pool


def _batch(n: int, seed: int):
    g = np.random.default_rng(seed)
    return (
        g.normal(size=(n, OBS)).astype(np.float32),
        g.normal(size=(n, ACT)).astype(np.float32),
        g.normal(size=n).astype(np.float32),
        g.normal(size=(n, OBS)).astype(np.float32),
        g.random(n) < 0.2,
    )


def _to_cuda(batch):
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(x)).cuda() for x in batch)


def _spread_pair(seed: int = 3, scale: float = 0.05):
    """(cpu_model, cuda_model), identical, with calm predictions: the output layer scaled by
    `scale`, log-variances in [-9, -5]. Rollouts live a few steps, some rows terminate, and the
    elites still disagree (d varies from row to row)."""
    import torch

    cpu = _cpu_model(seed)
    with torch.no_grad():
        cpu.layers[-1].weight.mul_(scale)
        cpu.layers[-1].bias.mul_(scale)
        cpu.max_logvar.fill_(-5.0)
        cpu.min_logvar.fill_(-9.0)
    cpu._invalidate_inference()
    gpu = mf.EnsembleDynamics(OBS, ACT, seed=seed, device="cuda")
    gpu.load_state_dict(cpu.state_dict())
    assert gpu.elites == cpu.elites
    return cpu, gpu


def _rollout_setup(seed: int = 3, capacity: int = 100_000, scale: float = 0.05):
    """Everything a CPU-against-device rollout comparison needs, in identical pairs:
    (cpu_model, gpu_model, agent_c, agent_g, real_c, real_g, pool_c, pool_g). The real pools
    hold 1,500 healthy Hopper-like start states; the model pools are empty, of `capacity`."""
    import torch

    cpu, gpu = _spread_pair(seed, scale)
    low, high = -np.ones(ACT), np.ones(ACT)
    agent_c = mf.SAC(OBS, ACT, low, high, seed=4)
    agent_g = mf.SAC(OBS, ACT, low, high, seed=4, device="cuda")
    agent_g.actor.load_state_dict(agent_c.actor.state_dict())
    real_c = mf.ReplayPool(2000, OBS, ACT, seed=1)
    real_g = mf.ReplayPool(2000, OBS, ACT, seed=1, device="cuda")
    b = list(_batch(1500, 12))
    b[0] = b[0] * 0.02
    b[0][:, 0] = 1.25  # Hopper's height: healthy start states
    b[3] = b[0].copy()
    real_c.add_batch(*b)
    real_g.add_batch(*_to_cuda(tuple(b)))
    pool_c = mf.ReplayPool(capacity, OBS, ACT)
    pool_g = mf.ReplayPool(capacity, OBS, ACT, device="cuda")
    assert torch.cuda.is_available()
    return cpu, gpu, agent_c, agent_g, real_c, real_g, pool_c, pool_g


def _assert_same(got, want):
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g.cpu().numpy(), w)


@pytest.mark.gpu
def test_device_pool_matches_cpu_pool():
    import torch

    cpu = mf.ReplayPool(100, OBS, ACT, seed=11)
    dev = mf.ReplayPool(100, OBS, ACT, seed=11, device="cuda")
    assert dev.device.startswith("cuda") and len(dev) == 0
    for n, s in ((30, 1), (50, 2), (45, 3), (250, 4)):  # wraps, then a batch larger than capacity
        b = _batch(n, s)
        cpu.add_batch(*b)
        dev.add_batch(*_to_cuda(b))
        assert (len(dev), dev.write_pos) == (len(cpu), cpu.write_pos)
        _assert_same(dev.transitions(), cpu.transitions())
    np.testing.assert_array_equal(dev.peek_indices(64), cpu.peek_indices(64))
    for n in (1, 256, 5000):
        got = dev.sample(n)
        assert got.obs.is_cuda and got.terminated.dtype == torch.bool
        _assert_same(got, cpu.sample(n))
        assert dev.rng_counter == cpu.rng_counter
    _assert_same(dev.sample(64, num_batches=3), cpu.sample(64, num_batches=3))
    dev.add(*(x[0] for x in _to_cuda(_batch(1, 9))))
    cpu.add(*(x[0] for x in _batch(1, 9)))
    _assert_same(dev.transitions(), cpu.transitions())
    for cap in (40, 250):  # shrink (keeps the newest rows), then grow
        dev.resize(cap)
        cpu.resize(cap)
        assert (len(dev), dev.capacity, dev.write_pos) == (len(cpu), cpu.capacity, cpu.write_pos)
        _assert_same(dev.transitions(), cpu.transitions())
        _assert_same(dev.sample(100), cpu.sample(100))
    dev.clear()
    assert len(dev) == 0 and dev.capacity == 250
    with pytest.raises(ValueError, match="empty"):
        dev.sample(4)


@pytest.mark.gpu
def test_device_sample_mixed_matches_cpu():
    real_c, model_c = mf.ReplayPool(500, OBS, ACT, seed=1), mf.ReplayPool(800, OBS, ACT, seed=2)
    real_d = mf.ReplayPool(500, OBS, ACT, seed=1, device="cuda")
    model_d = mf.ReplayPool(800, OBS, ACT, seed=2, device="cuda")
    for pc, pd, n, s in ((real_c, real_d, 400, 5), (model_c, model_d, 900, 6)):
        b = _batch(n, s)
        pc.add_batch(*b)
        pd.add_batch(*_to_cuda(b))
    for k in (None, 4):
        _assert_same(
            mf.sample_mixed(real_d, model_d, 256, 0.05, k),
            mf.sample_mixed(real_c, model_c, 256, 0.05, k),
        )
        _assert_same(
            mf.sample_mixed(real_d, real_d, 100, 0.3, k),
            mf.sample_mixed(real_c, real_c, 100, 0.3, k),
        )
    assert (real_d.rng_counter, model_d.rng_counter) == (real_c.rng_counter, model_c.rng_counter)
    with pytest.raises(TypeError, match="backend"):
        mf.sample_mixed(real_c, model_d, 10, 0.5)


@pytest.mark.gpu
def test_device_pool_rejects_bad_rows_and_stays_unchanged():
    import torch

    dev = mf.ReplayPool(50, OBS, ACT, device="cuda")
    good = _to_cuda(_batch(10, 1))
    dev.add_batch(*good)
    before = dev.transitions()
    bad_obs = good[0].clone()
    bad_obs[3, 2] = float("nan")
    with pytest.raises(ValueError, match="obs: non-finite value .* row 3"):
        dev.add_batch(bad_obs, *good[1:])
    with pytest.raises(ValueError, match="terminated"):
        dev.add_batch(*good[:4], torch.full((10,), 2, dtype=torch.int64, device="cuda"))
    with pytest.raises(ValueError, match="act: expected shape"):
        dev.add_batch(good[0], good[1][:5], *good[2:])
    assert len(dev) == 10
    _assert_same(dev.transitions(), tuple(x.cpu().numpy() for x in before))


@pytest.mark.gpu
def test_device_pool_gather_matches_cpu_and_checks_rows():
    import torch

    cpu = mf.ReplayPool(60, OBS, ACT, seed=4)
    dev = mf.ReplayPool(60, OBS, ACT, seed=4, device="cuda")
    b = _batch(90, 8)  # wraps: logical rows != physical slots
    cpu.add_batch(*b)
    dev.add_batch(*_to_cuda(b))
    rows = np.array([0, 59, 17, 17, 30, 1], dtype=np.int64)
    for r in (rows, rows.astype(np.int32), torch.from_numpy(rows).cuda(), rows[:0]):
        got = dev.gather(r)
        assert got.obs.is_cuda and got.terminated.dtype == torch.bool
        _assert_same(got, cpu.gather(np.asarray(r.cpu() if hasattr(r, "cpu") else r)))
    with pytest.raises(ValueError, match=r"rows: .* in \[0, 60\), got 60 at position 1"):
        dev.gather([3, 60])
    with pytest.raises(ValueError, match="rows"):
        dev.gather([-1])
    with pytest.raises(TypeError, match="rows"):
        dev.gather(np.array([0.5]))
    with pytest.raises(ValueError, match="rows: expected shape"):
        dev.gather(np.zeros((2, 2), np.int64))


@pytest.mark.gpu
@pytest.mark.parametrize("adds", [0, 37, 100, 130])  # empty, partial, exactly full, wrapped
def test_device_pool_save_load_is_the_cpu_file_format(tmp_path, adds):
    cpu = mf.ReplayPool(100, OBS, ACT, seed=21)
    dev = mf.ReplayPool(100, OBS, ACT, seed=21, device="cuda")
    if adds:
        b = _batch(adds, 3)
        cpu.add_batch(*b)
        dev.add_batch(*_to_cuda(b))
        cpu.sample(17)
        dev.sample(17)
    cpu.save(tmp_path / "cpu.bin")
    dev.save(tmp_path / "sub" / "dev.bin")  # parent directories are created, as for CPU pools
    # byte-identical files: same header (ring state, seed, rng_counter), rows and CRCs
    assert (tmp_path / "cpu.bin").read_bytes() == (tmp_path / "sub" / "dev.bin").read_bytes()
    # device file -> CPU pool, CPU file -> device pool: both continue the same draws
    back_cpu = mf.ReplayPool.load(tmp_path / "sub" / "dev.bin")
    back_dev = mf.ReplayPool.load(tmp_path / "cpu.bin", device="cuda")
    assert back_dev.device.startswith("cuda")
    for p in (back_cpu, back_dev):
        assert (len(p), p.capacity, p.write_pos, p.seed, p.rng_counter) == (
            len(cpu), cpu.capacity, cpu.write_pos, cpu.seed, cpu.rng_counter
        )
    _assert_same(back_dev.transitions(), cpu.transitions())
    if adds:
        want = cpu.sample(50)
        _assert_same(back_dev.sample(50), want)
        np.testing.assert_array_equal(back_cpu.sample(50).obs, want.obs)
    (tmp_path / "bad.bin").write_bytes(b"MBPOPOOL" + b"\0" * 100)
    with pytest.raises(ValueError, match="not a valid pool file"):
        mf.ReplayPool.load(tmp_path / "bad.bin", device="cuda")


# ---------------------------------------------------------------------------- GPU: rollout


@pytest.mark.gpu
@pytest.mark.parametrize("capacity", [100_000, 700])  # 700: the ring wraps
def test_device_rollout_matches_cpu_engine(capacity):
    """Same start states, actions, members, noise, terminations and order of stored rows."""

    from mbpo_fast import cuda_ops
    from mbpo_fast.rollout_native import run_native_rollout

    # small, calm predictions: rollouts live a few steps, some terminate
    cpu_model, gpu_model, agent_c, agent_g, real_c, real_g, pool_c, pool_g = _rollout_setup(
        3, capacity, scale=0.02
    )
    pool_c.add_batch(*_batch(50, 13))
    pool_g.add_batch(*_to_cuda(_batch(50, 13)))
    want = run_native_rollout(cpu_model, agent_c, "Hopper-v5", real_c, pool_c, 300, 4, 77,
                              compute_disagreement=False)
    got = cuda_ops.branched_rollout(gpu_model, agent_g, "Hopper-v5", real_g, pool_g, 300, 4, 77)
    for key in ("rows_added", "num_terminated", "nonfinite", "steps_run"):
        assert got[key] == want[key], key
    # exercised: termination, compaction over 4 steps and (capacity 700) the ring wrapping
    assert 0 < want["num_terminated"] < 300 and want["rows_added"] > 1000
    assert (len(pool_g), pool_g.write_pos) == (len(pool_c), pool_c.write_pos)
    g, c = pool_g.transitions(), pool_c.transitions()
    np.testing.assert_array_equal(g.terminated.cpu().numpy(), c.terminated)
    for x, y in zip(g[:4], c[:4], strict=True):
        _close(x, y, rtol=1e-4)  # four chained steps of float rounding


# ---------------------------------------------------------------------------- GPU: sanitizer

_SANITIZED = textwrap.dedent(
    """
    import numpy as np, torch, mbpo_fast as mf
    m = mf.EnsembleDynamics(11, 3, device="cuda")
    for b in (1, 33, 700):
        o = torch.randn(b, 11, device="cuda"); a = torch.randn(b, 3, device="cuda")
        m.step(o, a, seed=b); m.step(o, a, deterministic=True)
        m.predict(o, a); m.disagreement(o, a); m._cuda_native().step_uncertainty(o, a, seed=b)
    p = mf.ReplayPool(64, 11, 3, device="cuda")
    p.add_batch(torch.randn(100, 11, device="cuda"), torch.randn(100, 3, device="cuda"),
                torch.randn(100, device="cuda"), torch.randn(100, 11, device="cuda"),
                torch.zeros(100, dtype=torch.bool, device="cuda"))
    p.sample(300); p.transitions(); mf.sample_mixed(p, p, 64, 0.25, 3)
    from mbpo_fast import cuda_ops
    agent = mf.SAC(11, 3, -np.ones(3), np.ones(3), device="cuda")
    q = mf.ReplayPool(500, 11, 3, device="cuda")
    cuda_ops.branched_rollout(m, agent, "Hopper-v5", p, q, 200, 3, 5)
    cuda_ops.branched_rollout(m, agent, "Hopper-v5", p, q, 200, 3, 6, disagreement_quantile=0.9,
                              uncertainty_penalty=1.0)
    cuda_ops.branched_rollout(m, agent, mf.TerminationModel(11, 3), p, q, 200, 3, 7,
                              max_disagreement=0.5)
    start = np.zeros(11, np.float32); start[0] = 1.25
    for opt, prop in (("cem", "ts_inf"), ("random", "ts_1")):
        mpc = mf.MPC(m, -np.ones(3), np.ones(3), reward_fn="Hopper-v5", termination="Hopper-v5",
                     horizon=3, optimizer=opt, population=16, elites=4, iterations=2,
                     particles=2, propagation=prop)
        mpc.plan(start); mpc.evaluate(start, np.zeros((5, 3, 3), np.float32))
    torch.cuda.synchronize()
    print("ok")
    """
)


@pytest.mark.gpu
@pytest.mark.parametrize("tool", ["memcheck", "racecheck", "synccheck"])
def test_compute_sanitizer(tool):
    exe = shutil.which("compute-sanitizer")
    if exe is None:
        pytest.skip("compute-sanitizer is not on PATH")
    proc = subprocess.run(
        [exe, "--tool", tool, "--error-exitcode", "3", sys.executable, "-c", _SANITIZED],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-4000:]
