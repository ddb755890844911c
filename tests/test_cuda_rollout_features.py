"""Issue 16 on the device: the uncertainty step, the adaptive stop, the reward penalty and the
learned termination inside the CUDA rollout (csrc/cuda/rollout.cu, ensemble_step.cu).

The `gpu` tests compare the device against the CPU engine (same seed: same start states,
members, noise, stops and stored order; values to float rounding) and against float64
references of d; the CPU tests check what needs no device (argument errors before anything
runs, the Python wiring of BranchedRollout to the device engine).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_cuda import ACT, OBS, _close, _rollout_setup, _rows, _spread_pair

import mbpo_fast as mf
from mbpo_fast import _backend

needs_native = pytest.mark.skipif(
    "native" not in _backend.available(), reason="needs the native extension"
)


def _term_model(seed: int = 5):
    """A learned termination model with random weights and normalizer (no fit needed): on
    _rollout_setup's rollouts it ends ~30 % of the start rows within 4 steps (CPU engine)."""
    import torch

    tm = mf.TerminationModel(OBS, ACT, hidden_size=32, num_layers=2, seed=seed)
    g = np.random.default_rng(seed)
    in_dim = 2 * OBS + ACT
    tm.input_mean = (0.05 * g.standard_normal(in_dim)).astype(np.float32)
    tm.input_std = g.uniform(0.02, 0.2, in_dim).astype(np.float32)
    with torch.no_grad():
        tm.biases[-1].fill_(-0.6)
    return tm


def _assert_rollouts_agree(got, want, pool_g, pool_c):
    for key in ("rows_added", "num_terminated", "nonfinite", "steps_run", "num_stopped"):
        assert got[key] == want[key], (key, got[key], want[key])
    for key in ("frac_stopped", "mean_uncertainty", "mean_penalty", "disagreement_threshold"):
        a, b = float(got[key]), float(want[key])
        # d is small here (~1e-9): relative agreement only
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-4, abs=1e-30), key
    assert (len(pool_g), pool_g.write_pos) == (len(pool_c), pool_c.write_pos)
    g, c = pool_g.transitions(), pool_c.transitions()
    np.testing.assert_array_equal(g.terminated.cpu().numpy(), c.terminated)
    for x, y in zip(g[:4], c[:4], strict=True):
        _close(x, y, rtol=1e-4)  # chained steps of float rounding


# ---------------------------------------------------------------------------- CPU (no device)


@needs_native
@pytest.mark.skipif(mf.has_cuda(), reason="checks the no-device path")
def test_branched_rollout_on_device_pools_no_longer_refuses_the_features():
    """The CUDA engine is reached with the uncertainty features on (it then needs a device);
    the old 'not implemented by the CUDA engine' refusal is gone."""
    from mbpo_fast import cuda_ops

    with pytest.raises(RuntimeError, match="CUDA|device"):
        cuda_ops.branched_rollout(None, None, "Hopper-v5", None, None, 10, 2, 0,
                                  disagreement_quantile=0.9, uncertainty_penalty=1.0)


def test_cuda_termination_rejects_custom_callables_before_anything_runs():
    from mbpo_fast import cuda_ops

    if not cuda_ops.available():
        pytest.skip("the entry point first requires a CUDA device")
    with pytest.raises(TypeError, match="custom callables"):
        cuda_ops.branched_rollout(None, None, lambda o, a, n: None, None, None, 10, 2, 0)


# ---------------------------------------------------------------------------- GPU: the ops


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 31, 33, 1000])
@pytest.mark.parametrize("deterministic", [False, True])
def test_step_uncertainty_matches_cpu_and_the_plain_step(batch, deterministic):
    """The device uncertainty step: the same transition as the device step (same members and
    noise), the CPU op's transition and d, and d = the float64 unbiased variance of the elites'
    predicted mean next states (from predict)."""
    import torch

    cpu, gpu = _spread_pair(0)
    obs, act = _rows(batch, seed=batch)
    seed = 2**33 + 5
    inf = cpu.inference
    want_n, want_r, want_d = _backend.get("native").ensemble_step_uncertainty(
        obs, act, *inf._params(), inf.elites, seed=seed, deterministic=deterministic)
    o, a = torch.from_numpy(obs).cuda(), torch.from_numpy(act).cuda()
    native = gpu._cuda_native()
    got_n, got_r, got_d = native.step_uncertainty(o, a, seed=seed, deterministic=deterministic)
    plain_n, plain_r, _ = native.step(o, a, seed=seed, deterministic=deterministic)
    np.testing.assert_array_equal(got_n.cpu().numpy(), plain_n.cpu().numpy())
    np.testing.assert_array_equal(got_r.cpu().numpy(), plain_r.cpu().numpy())
    _close(got_n, want_n)
    _close(got_r, want_r)
    d = got_d.cpu().numpy()
    tol = dict(rtol=1e-3, atol=1e-6 * float(np.abs(want_d).max()))  # d is a difference of means
    np.testing.assert_allclose(d, want_d, **tol)
    mean, _ = cpu.predict(obs, act)
    ref = np.asarray(mean)[cpu.elites][:, :, :OBS].astype(np.float64).var(axis=0, ddof=1)
    np.testing.assert_allclose(d, ref.mean(axis=1), **tol)


@pytest.mark.gpu
def test_step_uncertainty_needs_two_elites():
    import torch

    _, gpu = _spread_pair(0)
    gpu.set_elites([3])
    o, a = torch.zeros(4, OBS, device="cuda"), torch.zeros(4, ACT, device="cuda")
    with pytest.raises(ValueError, match="at least 2 elites"):
        gpu._cuda_native().step_uncertainty(o, a)


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 32, 1000])
def test_termination_mlp_matches_cpu(batch):
    import torch

    from mbpo_fast import cuda_ops

    tm = _term_model()
    obs, act = _rows(batch, seed=7)
    nxt = obs + 0.1 * np.random.default_rng(8).standard_normal(obs.shape).astype(np.float32)
    want = tm.logits(obs, act, nxt)
    dev = cuda_ops.CudaTermination(tm, "cuda")
    term, logits = dev(*(torch.from_numpy(x).cuda() for x in (obs, act, nxt)))
    _close(logits, want)
    sure = np.abs(want) > 1e-4  # the sign of a logit within rounding of 0 may differ
    np.testing.assert_array_equal(term.cpu().numpy()[sure], (want > 0)[sure])
    assert 0 < (want > 0).sum() < batch or batch < 32


# ---------------------------------------------------------------------------- GPU: rollout


_FEATURES = {
    "threshold": dict(max_disagreement=None, disagreement_quantile=-1.0, uncertainty_penalty=0.0),
    "quantile+penalty": dict(disagreement_quantile=0.8, uncertainty_penalty=0.5),
    "penalty": dict(uncertainty_penalty=1.5),
    "quantile0": dict(disagreement_quantile=0.0),  # the smallest d: nearly every row stops
}


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(_FEATURES))
@pytest.mark.parametrize("capacity", [100_000, 700])  # 700: the ring wraps
def test_device_rollout_with_uncertainty_matches_cpu_engine(name, capacity):
    from mbpo_fast import cuda_ops
    from mbpo_fast.rollout_native import run_native_rollout

    cpu, gpu, agent_c, agent_g, real_c, real_g, pool_c, pool_g = _rollout_setup(3, capacity)
    kw = dict(_FEATURES[name])
    if kw.get("max_disagreement", 0) is None:
        # a fixed threshold between step 0's d values (7 % above their median)
        probe = run_native_rollout(cpu, agent_c, "Hopper-v5", real_c, mf.ReplayPool(10, OBS, ACT),
                                   300, 1, 77, compute_disagreement=False,
                                   disagreement_quantile=0.5)
        kw["max_disagreement"] = float(probe["disagreement_threshold"]) * 1.07
        kw["disagreement_quantile"] = -1.0
    want = run_native_rollout(cpu, agent_c, "Hopper-v5", real_c, pool_c, 300, 4, 77,
                              compute_disagreement=False, **kw)
    got = cuda_ops.branched_rollout(gpu, agent_g, "Hopper-v5", real_g, pool_g, 300, 4, 77, **kw)
    _assert_rollouts_agree(got, want, pool_g, pool_c)
    assert want["rows_added"] > 0
    if kw.get("disagreement_quantile", -1) >= 0 or kw.get("max_disagreement", math.inf) < math.inf:
        assert want["num_stopped"] > 0


@pytest.mark.gpu
def test_device_rollout_neutral_features_store_the_plain_rows():
    """A threshold that never triggers and a zero penalty: the uncertainty path stores the plain
    device rollout's rows (the uncertainty step's transition is the plain step's)."""
    from mbpo_fast import cuda_ops

    _, gpu, _, agent_g, _, real_g, _, pool_a = _rollout_setup(3)
    pool_b = mf.ReplayPool(100_000, OBS, ACT, device="cuda")
    s0 = cuda_ops.branched_rollout(gpu, agent_g, "Hopper-v5", real_g, pool_a, 300, 4, 9)
    s1 = cuda_ops.branched_rollout(gpu, agent_g, "Hopper-v5", real_g, pool_b, 300, 4, 9,
                                   max_disagreement=1e30)
    assert s0["rows_added"] == s1["rows_added"] and s1["num_stopped"] == 0
    assert math.isnan(s0["mean_uncertainty"]) and s1["mean_uncertainty"] > 0
    for x, y in zip(pool_a.transitions(), pool_b.transitions(), strict=True):
        np.testing.assert_array_equal(x.cpu().numpy(), y.cpu().numpy())


@pytest.mark.gpu
def test_device_rollout_stored_rows_satisfy_the_stop_rule_and_penalty():
    """Every stored row has d(s, a) <= threshold (recomputed from predict) and its reward is
    the unpenalized reward of the same seed minus penalty * sqrt(d)."""
    import torch

    from mbpo_fast import cuda_ops

    cpu, gpu, _, agent_g, _, real_g, _, pool_pen = _rollout_setup(3)
    pool_plain = mf.ReplayPool(100_000, OBS, ACT, device="cuda")
    kw = dict(disagreement_quantile=0.6)
    s_plain = cuda_ops.branched_rollout(gpu, agent_g, "Hopper-v5", real_g, pool_plain, 300, 3, 5,
                                        **kw)
    s_pen = cuda_ops.branched_rollout(gpu, agent_g, "Hopper-v5", real_g, pool_pen, 300, 3, 5,
                                      uncertainty_penalty=2.0, **kw)
    assert s_plain["num_stopped"] == s_pen["num_stopped"] > 0
    a, b = pool_plain.transitions(), pool_pen.transitions()
    mean, _ = gpu.predict(a.obs, a.act)
    d = mean[gpu.elites][:, :, :OBS].double().var(dim=0).mean(dim=1)  # torch.var: unbiased
    assert bool((d <= s_plain["disagreement_threshold"] * (1 + 1e-5)).all())
    want = a.rew.double() - 2.0 * torch.sqrt(d)
    _close(b.rew, want.cpu().numpy(), rtol=1e-4)
    assert s_pen["mean_penalty"] == pytest.approx(float((2.0 * torch.sqrt(d)).mean()), rel=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "features", [{}, {"disagreement_quantile": 0.9, "uncertainty_penalty": 0.3}]
)
def test_device_rollout_with_learned_termination_matches_cpu_engine(features):
    from mbpo_fast import cuda_ops
    from mbpo_fast.rollout_native import run_native_rollout

    cpu, gpu, agent_c, agent_g, real_c, real_g, pool_c, pool_g = _rollout_setup(3, 700)
    tm = _term_model()
    want = run_native_rollout(cpu, agent_c, tm, real_c, pool_c, 300, 4, 21,
                              compute_disagreement=False, **features)
    got = cuda_ops.branched_rollout(gpu, agent_g, tm, real_g, pool_g, 300, 4, 21, **features)
    _assert_rollouts_agree(got, want, pool_g, pool_c)
    assert 30 < want["num_terminated"] < 270


@pytest.mark.gpu
def test_branched_rollout_class_runs_the_features_on_device_pools():
    cpu, gpu, agent_c, agent_g, real_c, real_g, pool_c, pool_g = _rollout_setup(3)
    tm = _term_model()
    want = mf.BranchedRollout(cpu, agent_c, tm, max_disagreement="q0.85",
                              uncertainty_penalty=0.25, disagreement_rows=0).run(
        real_c, pool_c, 300, 3, 31)
    got = mf.BranchedRollout(gpu, agent_g, tm, max_disagreement="q0.85",
                             uncertainty_penalty=0.25).run(real_g, pool_g, 300, 3, 31)
    assert got.rows_added == want.rows_added and got.frac_stopped == want.frac_stopped > 0
    for key in ("mean_penalty", "mean_uncertainty", "disagreement_threshold"):
        assert getattr(got, key) == pytest.approx(getattr(want, key), rel=1e-4), key


@pytest.mark.gpu
def test_device_rollout_feature_errors():
    from mbpo_fast import cuda_ops

    _, gpu, _, agent_g, _, real_g, _, pool_g = _rollout_setup(3)
    before = (len(pool_g), pool_g.write_pos)
    gpu.set_elites([1])
    with pytest.raises(ValueError, match="at least 2 elites"):
        cuda_ops.branched_rollout(gpu, agent_g, "Hopper-v5", real_g, pool_g, 10, 2, 0,
                                  uncertainty_penalty=1.0)
    gpu.set_elites([1, 2])
    with pytest.raises(ValueError, match="uncertainty_penalty"):
        cuda_ops.branched_rollout(gpu, agent_g, "Hopper-v5", real_g, pool_g, 10, 2, 0,
                                  uncertainty_penalty=-1.0)
    with pytest.raises(ValueError, match="quantile"):
        cuda_ops.branched_rollout(gpu, agent_g, "Hopper-v5", real_g, pool_g, 10, 2, 0,
                                  disagreement_quantile=1.5)
    with pytest.raises(ValueError, match="obs_dim"):
        cuda_ops.branched_rollout(gpu, agent_g, mf.TerminationModel(OBS + 1, ACT), real_g, pool_g,
                                  10, 2, 0)
    with pytest.raises(TypeError, match="custom callables"):
        cuda_ops.branched_rollout(gpu, agent_g, lambda o, a, n: o[:, 0] > 0, real_g, pool_g,
                                  10, 2, 0)
    assert (len(pool_g), pool_g.write_pos) == before
