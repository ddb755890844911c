"""Uncertainty-aware branched rollouts (issue 16): the disagreement d(s, a), the adaptive stop
(max_disagreement, float and quantile form) and the uncertainty penalty, on every backend.

d(s, a) = mean over the obs dims of the UNBIASED variance across the elites of their predicted
mean next state. References here are float64 and recompute d from ``predict``-style forwards
of every elite (test_rollout_native's ref_forward), step by step, with only Philox fills.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_rollout_native import (
    AD,
    HOPPER,
    OD,
    assert_pool_equals,
    bounded,
    filled_pool,
    make_agent,
    make_model,
    ref_actor,
    ref_forward,
    ref_model_step,
    step_seed,
    u64_words,
)

import mbpo_fast as mf
from mbpo_fast import _backend
from mbpo_fast.ensemble_infer import EnsembleInference
from mbpo_fast.rollout_native import actor_params, model_params, run_native_rollout


def ref_d(inf, obs, act):
    """float64 d: unbiased variance across the elites of the mean next state, mean over obs."""
    x = (np.concatenate([obs, act], 1).astype(np.float64) - inf.input_mean) / inf.input_std
    mus = np.stack([ref_forward(inf, e, x)[:, :OD] for e in inf.elites])
    return torch.from_numpy(mus).var(dim=0).mean(dim=1).numpy()  # torch.var: unbiased


def predict_d(inf, obs, act):
    """d recomputed from the model's own ``predict`` (every member; elites' means, obs dims)."""
    mean, _ = inf.predict(obs, act)
    return mean[inf.elites][:, :, :OD].astype(np.float64).var(axis=0, ddof=1).mean(axis=1)


def ref_quantile(d, q):
    return float(np.quantile(np.asarray(d, np.float64)[np.isfinite(d)], q))


def ref_rollout_uncertain(ops, inf, agent, real_obs, num_starts, horizon, seed,
                          threshold=math.inf, quantile=-1.0, penalty=0.0):
    """Step-by-step float64 rollout following rollout.h step 4 (built-in Hopper termination)."""
    rows = bounded(u64_words(ops, seed, ops.STREAM_ROLLOUT_START, num_starts), len(real_obs))
    obs = real_obs[rows]
    parts, ds = [], []
    nonfinite = terminated = stopped = 0
    for t in range(horizon):
        if len(obs) == 0:
            break
        st = step_seed(ops, seed, t)
        eps = ops.philox_fill_normal(st, ops.STREAM_POLICY_NOISE, 0, len(obs) * AD)
        act = ref_actor(agent, obs, eps.reshape(-1, AD))[0].astype(np.float32)
        nxt, rew, _ = ref_model_step(ops, inf, obs, act, st)
        nxt = nxt.astype(np.float32)
        d = ref_d(inf, obs, act)
        if t == 0 and quantile >= 0:
            threshold = ref_quantile(d, quantile)
        rew = (rew - penalty * np.sqrt(d)).astype(np.float32)
        term = ops.termination(HOPPER, nxt)
        ok = np.isfinite(rew) & np.isfinite(nxt).all(1) & np.isfinite(d)
        nonfinite += int((~ok).sum())
        stop = ok & (d > threshold)
        stopped += int(stop.sum())
        ok &= ~stop
        obs, act, rew, nxt, term, d = obs[ok], act[ok], rew[ok], nxt[ok], term[ok], d[ok]
        parts.append((obs, act, rew, nxt, term))
        ds.append(d)
        terminated += int(term.sum())
        obs = nxt[~term]
    stored = [np.concatenate(p) for p in zip(*parts, strict=True)]
    d_all = np.concatenate(ds)
    stats = dict(rows_added=len(stored[2]), nonfinite=nonfinite, num_terminated=terminated,
                 num_stopped=stopped, frac_stopped=stopped / num_starts,
                 mean_uncertainty=float(d_all.mean()) if len(d_all) else math.nan,
                 mean_penalty=float((penalty * np.sqrt(d_all)).mean()) if len(d_all) else 0.0,
                 disagreement_threshold=threshold)
    return stored, stats, d_all


def spread_model(rng, elites=(0, 2, 3, 4)):
    """make_model with members whose Δobs means differ enough for d to vary across rows."""
    inf = make_model(rng, elites=elites)
    w = [x.copy() for x in inf.weights]
    w[-1][:, :, :OD] *= 4.0
    return EnsembleInference(OD, AD, inf.input_mean, inf.input_std, w, inf.biases,
                             inf.max_logvar, inf.min_logvar, inf.elites)


# ----------------------------------------------------------------------------- the op

def test_step_uncertainty_matches_step_and_float64_d(backend, rng):
    """Same transition as ensemble_step (same members and noise) and d = float64 reference."""
    inf = spread_model(rng)
    m = model_params(inf)
    obs = (1.5 * rng.standard_normal((333, OD))).astype(np.float32)
    act = rng.uniform(-1, 1, (333, AD)).astype(np.float32)
    args = [m[k] for k in ("input_mean", "input_std", "weights", "biases", "max_logvar",
                           "min_logvar", "elites")]
    nxt, rew, d = backend.ensemble_step_uncertainty(obs, act, *args, seed=77)
    n2, r2, _ = backend.ensemble_step(obs, act, *args, None, 77)
    np.testing.assert_allclose(nxt, n2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rew, r2, rtol=1e-5, atol=1e-5)
    assert d.dtype == np.float32 and d.shape == (333,)
    ref = ref_d(inf, obs, act)
    np.testing.assert_allclose(d, ref, rtol=2e-4, atol=1e-7)
    np.testing.assert_allclose(d, predict_d(inf, obs, act), rtol=2e-4, atol=1e-7)
    assert ref.std() > 0.1 * ref.mean() > 0  # d really varies across rows
    with pytest.raises(ValueError, match="elites"):
        backend.ensemble_step_uncertainty(obs, act, *args[:-1], np.array([2]), seed=1)


# ----------------------------------------------------------------------------- the rollout

@pytest.mark.parametrize("form", ["float", "quantile"])
def test_stop_rule_matches_float64_reference(backend, rng, form):
    agent, inf = make_agent(), spread_model(rng)
    real = filled_pool(rng, 300)
    pool = mf.ReplayPool(5000, OD, AD)
    d0 = ref_d(inf, real.transitions().obs, real.transitions().act)
    kw = dict(max_disagreement=float(np.quantile(d0, 0.6))) if form == "float" else \
        dict(disagreement_quantile=0.8)
    stats = run_native_rollout(inf, agent, "Hopper-v5", real, pool, 400, 5, 99, **kw)
    stored, ref, _ = ref_rollout_uncertain(
        backend, inf, agent, real.transitions().obs, 400, 5, 99,
        threshold=kw.get("max_disagreement", math.inf), quantile=kw.get("disagreement_quantile",
                                                                        -1.0))
    assert_pool_equals(pool, stored)
    for key in ("rows_added", "nonfinite", "num_terminated", "num_stopped"):
        assert stats[key] == ref[key], key
    for key in ("frac_stopped", "mean_uncertainty", "disagreement_threshold"):
        assert stats[key] == pytest.approx(ref[key], rel=1e-4), key
    assert stats["mean_penalty"] == 0.0
    assert 0 < ref["num_stopped"] < 400 and ref["num_terminated"] > 0  # both rules exercised


def test_stored_rows_satisfy_the_stop_rule_recomputed_from_predict(backend, rng):
    agent, inf = make_agent(), spread_model(rng)
    real = filled_pool(rng, 200)
    pool = mf.ReplayPool(5000, OD, AD)
    stats = run_native_rollout(inf, agent, "Hopper-v5", real, pool, 500, 6, 5,
                               disagreement_quantile=0.9)
    tr = pool.transitions()
    d = predict_d(inf, tr.obs, tr.act)
    thr = stats["disagreement_threshold"]
    assert np.isfinite(thr) and len(tr.rew) == stats["rows_added"] > 0
    assert (d <= thr * (1 + 1e-4)).all()  # every stored row passed the check
    assert stats["num_stopped"] > 0 and d.max() > 0.5 * thr
    # the threshold is the 0.9-quantile of d over the start states (step 0's rows)
    start = bounded(u64_words(backend, 5, backend.STREAM_ROLLOUT_START, 500), 200)
    obs0 = real.transitions().obs[start]
    eps = backend.philox_fill_normal(step_seed(backend, 5, 0), backend.STREAM_POLICY_NOISE, 0,
                                     500 * AD)
    act0 = ref_actor(agent, obs0, eps.reshape(-1, AD))[0].astype(np.float32)
    assert thr == pytest.approx(ref_quantile(ref_d(inf, obs0, act0), 0.9), rel=1e-4)


def test_penalty_subtracts_penalty_times_sqrt_d_for_the_same_seed(backend, rng):
    agent, inf = make_agent(), spread_model(rng)
    real = filled_pool(rng, 200)
    plain, pen = mf.ReplayPool(5000, OD, AD), mf.ReplayPool(5000, OD, AD)
    s0 = run_native_rollout(inf, agent, "Hopper-v5", real, plain, 300, 4, 8)
    s1 = run_native_rollout(inf, agent, "Hopper-v5", real, pen, 300, 4, 8,
                            uncertainty_penalty=2.5)
    a, b = plain.transitions(), pen.transitions()
    assert s0["rows_added"] == s1["rows_added"] == len(b.rew) > 300
    np.testing.assert_array_equal(a.terminated, b.terminated)
    for x, y in ((a.obs, b.obs), (a.act, b.act), (a.next_obs, b.next_obs)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
    d = predict_d(inf, b.obs, b.act)
    np.testing.assert_allclose(b.rew, a.rew - 2.5 * np.sqrt(d), rtol=1e-4, atol=1e-4)
    assert np.abs(a.rew - b.rew).min() > 1e-3  # the penalty is really there on every row
    assert s1["mean_penalty"] == pytest.approx(float(np.mean(2.5 * np.sqrt(d))), rel=1e-3)
    assert s1["mean_uncertainty"] == pytest.approx(float(d.mean()), rel=1e-3)
    assert math.isnan(s1["disagreement_threshold"]) and s1["num_stopped"] == 0
    assert math.isnan(s0["mean_uncertainty"]) and s0["mean_penalty"] == 0.0


def test_features_on_but_neutral_equal_the_plain_rollout(backend, rng):
    """A threshold that never triggers and penalty 0: the elites pass gives the same
    transitions as the plain rollout (to rounding), same members, same row counts."""
    agent, inf = make_agent(), spread_model(rng)
    real = filled_pool(rng, 200)
    plain, on = mf.ReplayPool(5000, OD, AD), mf.ReplayPool(5000, OD, AD)
    s0 = run_native_rollout(inf, agent, "Hopper-v5", real, plain, 400, 5, 3)
    s1 = run_native_rollout(inf, agent, "Hopper-v5", real, on, 400, 5, 3,
                            max_disagreement=1e30)
    for key in ("rows_added", "num_terminated", "nonfinite", "steps_run"):
        assert s0[key] == s1[key], key
    assert s1["num_stopped"] == 0 and s1["disagreement_threshold"] == 1e30
    assert np.isfinite(s1["mean_uncertainty"]) and s1["mean_uncertainty"] > 0
    a, b = plain.transitions(), on.transitions()
    np.testing.assert_array_equal(a.terminated, b.terminated)
    for x, y in zip(a[:4], b[:4], strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_backends_agree_on_uncertain_rollout(rng):
    if "native" not in _backend.available():
        pytest.skip("native extension not built")
    agent, inf = make_agent(), spread_model(rng)
    real_states = filled_pool(rng, 300).transitions()
    out = {}
    for name in ("native", "numba"):
        with _backend.use(name):
            real = mf.ReplayPool(300, OD, AD)
            real.add_batch(*real_states)
            pool = mf.ReplayPool(4000, OD, AD)
            stats = run_native_rollout(inf, agent, "Hopper-v5", real, pool, 600, 5, 41,
                                       disagreement_quantile=0.85, uncertainty_penalty=0.7)
            out[name] = (stats, pool.transitions())
    (s0, t0), (s1, t1) = out["native"], out["numba"]
    for key in ("rows_added", "nonfinite", "num_terminated", "num_stopped"):
        assert s0[key] == s1[key], key
    for key in ("mean_uncertainty", "mean_penalty", "disagreement_threshold", "frac_stopped"):
        assert s0[key] == pytest.approx(s1[key], rel=1e-4), key
    np.testing.assert_array_equal(t0.terminated, t1.terminated)
    for a, b in zip(t0[:4], t1[:4], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert s0["num_stopped"] > 0


def test_callable_termination_with_uncertainty(backend, rng):
    agent, inf = make_agent(), spread_model(rng)
    real = filled_pool(rng, 100)
    a, b = mf.ReplayPool(3000, OD, AD), mf.ReplayPool(3000, OD, AD)
    fn = mf.termination_fn("Hopper-v5")
    s0 = run_native_rollout(inf, agent, "Hopper-v5", real, a, 200, 4, 12,
                            disagreement_quantile=0.7, uncertainty_penalty=1.0)
    s1 = run_native_rollout(inf, agent, lambda o, x, n: fn(o, x, n), real, b, 200, 4, 12,
                            disagreement_quantile=0.7, uncertainty_penalty=1.0)
    assert s0["num_stopped"] == s1["num_stopped"] > 0
    for x, y in zip(a.transitions(), b.transitions(), strict=True):
        np.testing.assert_array_equal(x, y)


def test_bad_uncertainty_arguments_change_nothing(backend, rng):
    agent, inf = make_agent(), spread_model(rng)
    real = filled_pool(rng, 20)
    pool = filled_pool(rng, 5)
    a, m = actor_params(agent), model_params(inf)

    def call(**kw):
        args = dict(real_pool=real._impl, model_pool=pool._impl, termination=HOPPER,
                    num_starts=10, horizon=2, seed=0, **a, **m)
        args.update(kw)
        return backend.branched_rollout(**args)

    n0 = len(pool)
    with pytest.raises(ValueError, match="uncertainty_penalty"):
        call(uncertainty_penalty=-1.0)
    with pytest.raises(ValueError, match="uncertainty_penalty"):
        call(uncertainty_penalty=math.inf)
    with pytest.raises(ValueError, match="max_disagreement"):
        call(disagreement_quantile=1.5)
    with pytest.raises(ValueError, match="max_disagreement"):
        call(max_disagreement=-0.1)
    with pytest.raises(ValueError, match="2 elites"):
        call(elites=np.array([1]), uncertainty_penalty=0.5)
    assert len(pool) == n0
    call(elites=np.array([1]))  # one elite is fine with the features off
    assert len(pool) > n0


# ----------------------------------------------------------------------------- the class

def test_branched_rollout_class_arguments(backend, rng):
    from mbpo_fast.rollout import parse_max_disagreement

    assert parse_max_disagreement(None) == (math.inf, -1.0)
    assert parse_max_disagreement(0.25) == (0.25, -1.0)
    assert parse_max_disagreement("q0.9") == (math.inf, 0.9)
    for bad in ("0.9", "q1.5", "q", "qx", -1.0, float("nan"), True, [0.5]):
        with pytest.raises(ValueError, match="max_disagreement"):
            parse_max_disagreement(bad)
    agent, inf = make_agent(), spread_model(rng)
    for bad in (-0.5, float("inf"), "1", None):
        with pytest.raises(ValueError, match="uncertainty_penalty"):
            mf.BranchedRollout(inf, agent, "Hopper-v5", uncertainty_penalty=bad)


def _spread_dynamics():
    from mbpo_fast.ensemble import EnsembleDynamics

    model = EnsembleDynamics(OD, AD, ensemble_size=5, num_elites=4, hidden_size=24,
                             num_layers=3, seed=1)
    with torch.no_grad():  # spread the members (an unfitted model's members agree closely);
        gen = torch.Generator().manual_seed(0)  # the native views borrow these tensors
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def _copy_pool(real, seed):
    out = mf.ReplayPool(len(real), OD, AD, seed=seed)
    out.add_batch(*real.transitions())
    return out


@pytest.mark.parametrize("engine", ["native", "python"])
def test_branched_rollout_class_engines(backend, rng, engine):
    """The class runs the features on both engines (python: predict-based); every stored row
    satisfies the stop rule recomputed from predict; stats match the stored rows."""
    model, agent = _spread_dynamics(), make_agent()
    real = _copy_pool(filled_pool(rng, 200), 4)
    pool = mf.ReplayPool(5000, OD, AD)
    policy = agent if engine == "native" else (lambda o: agent.act(o, deterministic=True))
    ro = mf.BranchedRollout(model, policy, "Hopper-v5", max_disagreement="q0.75",
                            uncertainty_penalty=0.3, engine=engine)
    st = ro.run(real, pool, 300, 5, seed=6)
    tr = pool.transitions()
    d = model.predict(tr.obs, tr.act)[0][model.elites][:, :, :OD].astype(np.float64)
    d = d.var(axis=0, ddof=1).mean(axis=1)
    assert st.rows_added == len(tr.rew) > 0
    assert 0 < st.frac_stopped < 1 and np.isfinite(st.disagreement_threshold)
    assert (d <= st.disagreement_threshold * (1 + 1e-4)).all()
    assert st.mean_penalty == pytest.approx(float(np.mean(0.3 * np.sqrt(d))), rel=1e-3)
    assert st.mean_uncertainty == pytest.approx(float(d.mean()), rel=1e-3)


def test_python_engine_neutral_features_equal_plain(backend, rng):
    """Python engine: the predict-based sampling reproduces model.step (same members and
    noise), so a never-triggering threshold with penalty 0 stores the plain engine's rows."""
    model = _spread_dynamics()
    agent = make_agent()
    real = filled_pool(rng, 150)

    def policy(o):
        return agent.act(o, deterministic=True)

    out = []
    for kw in ({}, {"max_disagreement": 1e30}):
        pool = mf.ReplayPool(5000, OD, AD)
        st = mf.BranchedRollout(model, policy, "Hopper-v5", engine="python", **kw).run(
            _copy_pool(real, 9), pool, 250, 5, seed=17)
        out.append((st, pool.transitions()))
    (s0, a), (s1, b) = out
    assert s0.rows_added == s1.rows_added > 250 and s1.frac_stopped == 0
    assert math.isnan(s0.mean_uncertainty) and s1.mean_uncertainty > 0
    np.testing.assert_array_equal(a.terminated, b.terminated)
    for x, y in zip(a[:4], b[:4], strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4)
