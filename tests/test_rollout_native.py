"""Native SAC actor and branched-rollout engine, on every backend.

References written here, in float64: the actor from the SAC agent's torch weights, the
ensemble step from the model's arrays, and a step-by-step rollout that follows the
algorithm documented in csrc/include/mbpo_fast/rollout.h using only Philox fills.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import expit

import mbpo_fast as mf
from mbpo_fast import _backend
from mbpo_fast.ensemble_infer import EnsembleInference
from mbpo_fast.rollout_native import actor_act, actor_params, model_params, run_native_rollout
from mbpo_fast.sac import SAC, squashed_gaussian

OD, AD = 11, 3  # Hopper widths, so the built-in Hopper termination applies
HOPPER = 1  # TerminationId::kHopper
NEVER = 0  # TerminationId::kNever


# ----------------------------------------------------------------------------- fixtures

def make_agent(low=(-1.0, -0.5, -2.0), high=(1.0, 1.5, 0.0), seed=3, hidden=32) -> SAC:
    """A small SAC agent with an asymmetric action box (scale and bias both matter)."""
    agent = SAC(OD, len(low), np.array(low), np.array(high), hidden_size=hidden, num_layers=2,
                seed=seed)
    with torch.no_grad():  # make log_std vary between rows, and reach the clamp for some
        agent.actor.layers[-1].weight[0, :, AD:] *= 8.0
    return agent


def make_model(rng, ensemble_size=5, hidden=24, n_layers=3, elites=(0, 2, 3, 4)):
    """Random ensemble whose members differ clearly (so a wrong member choice shows)."""
    in_dim = OD + AD
    widths = [in_dim] + [hidden] * (n_layers - 1) + [2 * (OD + 1)]
    weights, biases = [], []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        w = rng.standard_normal((ensemble_size, a, b)) / math.sqrt(a)
        weights.append(w.astype(np.float32))
        biases.append((0.1 * rng.standard_normal((ensemble_size, b))).astype(np.float32))
    weights[-1][:, :, :OD + 1] *= 0.05  # small Δobs: states stay in a sensible range
    biases[-1][:, :OD + 1] *= 0.3
    input_mean = (0.1 * rng.standard_normal(in_dim)).astype(np.float32)
    input_std = rng.uniform(0.5, 2.0, in_dim).astype(np.float32)
    max_logvar = (-5.5 + 0.2 * rng.standard_normal(OD + 1)).astype(np.float32)
    min_logvar = np.full(OD + 1, -9.0, np.float32)
    return EnsembleInference(OD, AD, input_mean, input_std, weights, biases, max_logvar,
                             min_logvar, np.array(elites, np.int64))


def hopper_states(rng, n):
    """Healthy Hopper-like observations: z in (1.0, 1.4), angle in (-0.12, 0.12)."""
    obs = rng.standard_normal((n, OD)).astype(np.float32)
    obs[:, 0] = rng.uniform(1.0, 1.4, n)
    obs[:, 1] = rng.uniform(-0.12, 0.12, n)
    return obs


def filled_pool(rng, n, seed=0) -> mf.ReplayPool:
    pool = mf.ReplayPool(4 * n, OD, AD, seed=seed)
    pool.add_batch(hopper_states(rng, n), rng.uniform(-1, 1, (n, AD)).astype(np.float32),
                   rng.standard_normal(n).astype(np.float32), hopper_states(rng, n),
                   np.zeros(n, bool))
    return pool


# ----------------------------------------------------------------------------- references

def u64_words(ops, seed, stream, n):
    return ops.philox_fill_u32(seed, stream, 0, n).astype(np.uint64)


def bounded(words, n):
    return ((words * np.uint64(n)) >> np.uint64(32)).astype(np.int64)


def step_seed(ops, seed, t):
    w = ops.philox_fill_u32(seed, ops.STREAM_ROLLOUT_START + 1 + t, 0, 2)
    return int(w[0]) | (int(w[1]) << 32)


def ref_actor(agent, obs, eps):
    """float64 policy from the agent's weights: (act clamped to the box, log_prob)."""
    with torch.no_grad():
        h = torch.from_numpy(np.asarray(obs, np.float64))
        layers = agent.actor.layers
        for i, layer in enumerate(layers):
            h = h @ layer.weight[0].double() + layer.bias[0].double()
            if i + 1 < len(layers):
                h = torch.relu(h)
        mean, log_std = h[:, :AD], h[:, AD:].clamp(-20.0, 2.0)
        e = None if eps is None else torch.from_numpy(np.asarray(eps, np.float64))
        a, lp = squashed_gaussian(mean, log_std, e, agent.action_scale.double(),
                                  agent.action_bias.double())
        a = torch.minimum(torch.maximum(a, agent._low.double()), agent._high.double())
    return a.numpy(), lp.numpy()


def ref_forward(inf, e, x):
    h = x
    last = len(inf.weights) - 1
    for i, (w, b) in enumerate(zip(inf.weights, inf.biases, strict=True)):
        h = h @ w[e].astype(np.float64) + b[e].astype(np.float64)
        if i != last:
            h = h * expit(h)  # SiLU
    return h


def ref_model_step(ops, inf, obs, act, seed_t):
    """float64 ensemble step with the documented member choice and noise."""
    n, od1 = obs.shape[0], OD + 1
    members = inf.elites[bounded(u64_words(ops, seed_t, ops.STREAM_MEMBER_CHOICE, n),
                                 len(inf.elites))]
    eps = ops.philox_fill_normal(seed_t, ops.STREAM_MODEL_NOISE, 0, n * od1).reshape(n, od1)
    x = (np.concatenate([obs, act], 1).astype(np.float64) - inf.input_mean) / inf.input_std
    head = np.empty((n, 2 * od1))
    for e in np.unique(members):
        head[members == e] = ref_forward(inf, e, x[members == e])
    mu, raw = head[:, :od1], head[:, od1:]
    mx, mn = inf.max_logvar.astype(np.float64), inf.min_logvar.astype(np.float64)
    lv = mx - np.logaddexp(0.0, mx - raw)
    lv = mn + np.logaddexp(0.0, lv - mn)
    out = mu + np.exp(0.5 * lv) * eps
    return obs + out[:, :OD], out[:, OD], members


def ref_disagreement(inf, obs, act):
    x = (np.concatenate([obs, act], 1).astype(np.float64) - inf.input_mean) / inf.input_std
    mus = np.stack([ref_forward(inf, e, x)[:, :OD + 1] for e in inf.elites])
    return mus.std(axis=0).mean(axis=1)


def ref_rollout(ops, inf, agent, termination, real_obs, num_starts, horizon, seed, dis_rows=-1):
    """Step-by-step rollout following rollout.h; returns stored transitions and stats."""
    rows = bounded(u64_words(ops, seed, ops.STREAM_ROLLOUT_START, num_starts), len(real_obs))
    obs = real_obs[rows]
    parts, dis, members_per_step = [], [], []
    nonfinite = terminated = steps = 0
    with np.errstate(all="ignore"):
        for t in range(horizon):
            if len(obs) == 0:
                break
            steps += 1
            st = step_seed(ops, seed, t)
            eps = ops.philox_fill_normal(st, ops.STREAM_POLICY_NOISE, 0, len(obs) * AD)
            act = ref_actor(agent, obs, eps.reshape(-1, AD))[0].astype(np.float32)
            nxt, rew, members = ref_model_step(ops, inf, obs, act, st)
            members_per_step.append(members)
            nxt, rew = nxt.astype(np.float32), rew.astype(np.float32)
            if callable(termination):
                term = np.asarray(termination(obs, act, nxt), bool)
            else:
                term = ops.termination(termination, nxt)
            ok = np.isfinite(rew) & np.isfinite(nxt).all(1) & np.isfinite(act).all(1)
            nonfinite += int((~ok).sum())
            obs, act, rew, nxt, term = obs[ok], act[ok], rew[ok], nxt[ok], term[ok]
            parts.append((obs, act, rew, nxt, term))
            if dis_rows == "auto":  # one stored row in 256, at least one (written out here)
                m = (len(obs) + 255) // 256
            else:
                m = len(obs) if dis_rows < 0 else min(len(obs), dis_rows)
            if m:
                dis.append(ref_disagreement(inf, obs[:m], act[:m]))
            terminated += int(term.sum())
            obs = nxt[~term]
    stored = [np.concatenate(p) for p in zip(*parts, strict=True)] if parts else None
    n = 0 if stored is None else len(stored[2])
    stats = dict(rows_added=n, nonfinite=nonfinite,
                 disagreement_rows=sum(len(d) for d in dis), num_terminated=terminated,
                 steps_run=steps,
                 mean_length=n / num_starts, frac_terminated=terminated / num_starts,
                 mean_disagreement=float(np.concatenate(dis).mean()) if dis else math.nan)
    return stored, stats, members_per_step


def assert_pool_equals(pool, stored, start=0):
    tr = pool.transitions()
    got = [np.asarray(x)[start:] for x in tr]
    assert len(got[2]) == len(stored[2])
    np.testing.assert_array_equal(got[4], stored[4])  # terminated flags: exact
    for g, r in zip(got[:4], stored[:4], strict=True):
        np.testing.assert_allclose(g, r, rtol=2e-4, atol=2e-4)


# ----------------------------------------------------------------------------- actor

@pytest.mark.parametrize("deterministic", [False, True])
def test_actor_matches_float64_reference(backend, rng, deterministic):
    agent = make_agent()
    obs = (2.0 * rng.standard_normal((301, OD))).astype(np.float32)
    act, lp = actor_act(agent, obs, seed=11, deterministic=deterministic, noise_offset=5)
    eps = None
    if not deterministic:
        eps = backend.philox_fill_normal(11, backend.STREAM_POLICY_NOISE, 5, 301 * AD)
        eps = eps.reshape(301, AD)
    ra, rlp = ref_actor(agent, obs, eps)
    assert act.dtype == np.float32 and act.shape == (301, AD) and lp.shape == (301,)
    np.testing.assert_allclose(act, ra, rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(lp, rlp, rtol=1e-4, atol=2e-4)
    assert (act >= agent._low_np).all() and (act <= agent._high_np).all()
    if deterministic:  # the agent's own deterministic action
        np.testing.assert_allclose(act, agent.act(obs, deterministic=True), rtol=1e-5, atol=2e-6)


def test_actor_noise_offset_splits_the_batch(backend, rng):
    agent = make_agent()
    obs = rng.standard_normal((250, OD)).astype(np.float32)
    whole, lp = actor_act(agent, obs, seed=7)
    a1, l1 = actor_act(agent, obs[:97], seed=7)
    a2, l2 = actor_act(agent, obs[97:], seed=7, noise_offset=97 * AD)
    if _backend.name == "native":  # row results never depend on the batch composition
        np.testing.assert_array_equal(np.concatenate([a1, a2]), whole)
        np.testing.assert_array_equal(np.concatenate([l1, l2]), lp)
    else:  # BLAS may block rows differently per batch size: same noise, values to rounding
        np.testing.assert_allclose(np.concatenate([a1, a2]), whole, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(np.concatenate([l1, l2]), lp, rtol=1e-5, atol=1e-5)
    other, _ = actor_act(agent, obs, seed=8)
    assert not np.allclose(other, whole)


def test_actor_backends_agree(rng):
    if "native" not in _backend.available():
        pytest.skip("native extension not built")
    agent = make_agent()
    obs = rng.standard_normal((1000, OD)).astype(np.float32)
    out = {}
    for name in ("native", "numba"):
        with _backend.use(name):
            out[name] = actor_act(agent, obs, seed=2**63 + 5)
    np.testing.assert_allclose(out["native"][0], out["numba"][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["native"][1], out["numba"][1], rtol=1e-4, atol=1e-4)


def test_actor_load_matches_agent(backend, rng, tmp_path):
    agent = make_agent(low=(-1.0, -1.0, -1.0), high=(1.0, 1.0, 1.0))
    path = tmp_path / "actor.safetensors"
    agent.export_actor(path)
    loaded = backend.Actor.load(path)
    assert (loaded.obs_dim, loaded.act_dim) == (OD, AD)
    assert list(loaded.widths) == [OD, 32, 32, 2 * AD]
    obs = rng.standard_normal((77, OD)).astype(np.float32)
    for det in (False, True):
        a, lp = loaded.act(obs, seed=4, noise_offset=3, deterministic=det)
        ra, rlp = actor_act(agent, obs, seed=4, noise_offset=3, deterministic=det)
        np.testing.assert_array_equal(a, ra)
        np.testing.assert_array_equal(lp, rlp)


def test_actor_load_keeps_the_agents_exact_action_box(backend, rng, tmp_path):
    """With this box, bias -/+ scale in float32 lands one ulp outside float32(low/high) on
    every dimension; saturated actions must still equal the agent's own clamp."""
    from mbpo_fast.io import load_safetensors, save_safetensors

    low, high = (-0.705, -2.083, -1.13), (1.606, 0.659, 0.987)
    agent = make_agent(low=low, high=high)
    with torch.no_grad():  # saturate tanh: every action sits on a bound
        agent.actor.layers[-1].weight[0, :, :AD] *= 1e4
    low32, high32 = np.float32(low), np.float32(high)
    derived_low = agent.action_bias.numpy() - agent.action_scale.numpy()
    assert np.all(derived_low != low32)  # the case this test is about
    path = tmp_path / "actor.safetensors"
    agent.export_actor(path)
    tensors, meta = load_safetensors(path)
    np.testing.assert_array_equal(tensors["action_low"], low32)
    np.testing.assert_array_equal(tensors["action_high"], high32)
    obs = rng.standard_normal((200, OD)).astype(np.float32)
    a, _ = backend.Actor.load(path).act(obs, seed=1, deterministic=True)
    ra, _ = actor_act(agent, obs, seed=1, deterministic=True)
    np.testing.assert_array_equal(a, ra)
    on_bound = (a == low32) | (a == high32)
    assert on_bound.mean() > 0.9 and np.all((a >= low32) & (a <= high32))
    # ... and on the bounds the torch agent's own act() clamps to (off them, the torch
    # and native forwards differ by float rounding, amplified here by the 1e4 weights).
    np.testing.assert_array_equal(a[on_bound], agent.act(obs, deterministic=True)[on_bound])
    # A file without the box (written before it was exported) still loads, with the derived box.
    old = {k: v for k, v in tensors.items() if k not in ("action_low", "action_high")}
    save_safetensors(tmp_path / "old.safetensors", old, meta)
    a_old, _ = backend.Actor.load(tmp_path / "old.safetensors").act(obs, seed=1, deterministic=True)
    derived_high = agent.action_bias.numpy() + agent.action_scale.numpy()
    np.testing.assert_array_equal(a_old[on_bound & (a == low32)], np.broadcast_to(
        derived_low, a.shape)[on_bound & (a == low32)])
    np.testing.assert_array_equal(a_old[on_bound & (a == high32)], np.broadcast_to(
        derived_high, a.shape)[on_bound & (a == high32)])
    # Only one half of the box is a format error.
    save_safetensors(tmp_path / "half.safetensors", {**old, "action_low": low32}, meta)
    with pytest.raises(ValueError, match="action_low"):
        backend.Actor.load(tmp_path / "half.safetensors")


def test_actor_load_rejects_bad_files(backend, tmp_path):
    from mbpo_fast.io import save_safetensors

    agent = make_agent()
    good = tmp_path / "a.safetensors"
    agent.export_actor(good)
    data = good.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError):
        backend.Actor.load(tmp_path / "trunc.safetensors")
    with pytest.raises(OSError):
        backend.Actor.load(tmp_path / "missing.safetensors")
    tensors = {f"layers.{i}.{k}": np.asarray(getattr(layer, k).detach()[0])
               for i, layer in enumerate(agent.actor.layers) for k in ("weight", "bias")}
    tensors.update(action_scale=agent.action_scale.numpy(), action_bias=agent.action_bias.numpy())
    meta = {"format": "mbpo_fast.actor/1", "obs_dim": str(OD), "act_dim": "2",  # wrong act_dim
            "num_layers": "2", "activation": "relu"}
    save_safetensors(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(ValueError):
        backend.Actor.load(tmp_path / "bad.safetensors")


def test_actor_bad_inputs(backend, rng):
    p = actor_params(make_agent())
    w, b, s, bias = p["actor_weights"], p["actor_biases"], p["action_scale"], p["action_bias"]
    obs = rng.standard_normal((4, OD)).astype(np.float32)
    with pytest.raises(ValueError, match="obs"):
        backend.actor_act(obs[:, :5], w, b, s, bias)
    with pytest.raises(ValueError, match="obs"):
        backend.actor_act(np.full((2, OD), np.nan, np.float32), w, b, s, bias)
    with pytest.raises(ValueError, match="weights"):
        backend.actor_act(obs, [], [], s, bias)
    with pytest.raises(ValueError, match="biases"):
        backend.actor_act(obs, w, b[:-1], s, bias)
    with pytest.raises(ValueError, match=r"weights\[1\]"):
        backend.actor_act(obs, [w[0], w[0], w[2]], b, s, bias)
    with pytest.raises(ValueError, match="action_scale"):
        backend.actor_act(obs, w, b, -s, bias)
    with pytest.raises(ValueError, match="action_scale"):
        backend.actor_act(obs, w, b, s[:2], bias)
    with pytest.raises(ValueError, match="action_low"):
        backend.actor_act(obs, w, b, s, bias, action_low=np.zeros(AD, np.float32))
    with pytest.raises(TypeError):
        backend.actor_act(obs.astype(str), w, b, s, bias)
    with pytest.raises((TypeError, ValueError)):
        backend.actor_act(obs, w, b, s, bias, seed=-1)


# ----------------------------------------------------------------------------- rollout

def test_rollout_matches_step_by_step_reference(backend, rng):
    """Identical start rows, member choices (members differ clearly, so a wrong choice would
    break the values), actions and terminations; pool contents to rounding; identical stats."""
    agent, inf = make_agent(), make_model(rng)
    real = filled_pool(rng, 300)
    model_pool = mf.ReplayPool(5000, OD, AD)
    stats = run_native_rollout(inf, agent, "Hopper-v5", real, model_pool, num_starts=400,
                               horizon=4, seed=2024, compute_disagreement=True,
                               disagreement_rows=-1)
    stored, ref, members = ref_rollout(backend, inf, agent, HOPPER, real.transitions().obs, 400, 4,
                                       2024)
    assert_pool_equals(model_pool, stored)
    for key in ("rows_added", "nonfinite", "num_terminated", "steps_run", "disagreement_rows"):
        assert stats[key] == ref[key], key
    assert stats["mean_length"] == pytest.approx(ref["mean_length"])
    assert stats["frac_terminated"] == pytest.approx(ref["frac_terminated"])
    assert stats["mean_disagreement"] == pytest.approx(ref["mean_disagreement"], rel=1e-4)
    assert stats["num_starts"] == 400 and stats["seconds"] > 0
    # the scenario exercises what it should: terminations at several steps, several members
    assert 0 < ref["num_terminated"] < 400 and ref["steps_run"] == 4
    assert len(np.unique(np.concatenate(members))) == 4
    assert len(real) == 300 and real.rng_counter == 0  # the real pool is only read


def test_disagreement_on_the_first_rows_of_each_step(backend, rng):
    agent, inf = make_agent(), make_model(rng)
    real = filled_pool(rng, 100)
    pool = mf.ReplayPool(2000, OD, AD)
    stats = run_native_rollout(inf, agent, "Hopper-v5", real, pool, 150, 3, 5,
                               disagreement_rows=40)
    _, ref, _ = ref_rollout(backend, inf, agent, HOPPER, real.transitions().obs, 150, 3, 5,
                            dis_rows=40)
    assert stats["disagreement_rows"] == ref["disagreement_rows"] <= 3 * 40
    assert stats["mean_disagreement"] == pytest.approx(ref["mean_disagreement"], rel=1e-4)
    off = run_native_rollout(inf, agent, "Hopper-v5", real, pool, 150, 3, 5,
                             compute_disagreement=False)
    assert math.isnan(off["mean_disagreement"]) and off["disagreement_rows"] == 0
    assert off["rows_added"] == stats["rows_added"]  # the statistic never changes the rollout


def test_disagreement_auto_measures_one_row_in_256(backend, rng):
    """The default rule: ceil(stored / 256) rows per step, the first stored ones."""
    agent, inf = make_agent(), make_model(rng)
    real = filled_pool(rng, 100)
    pool = mf.ReplayPool(9000, OD, AD)
    stats = run_native_rollout(inf, agent, "Hopper-v5", real, pool, 1100, 3, 6)
    _, ref, _ = ref_rollout(backend, inf, agent, HOPPER, real.transitions().obs, 1100, 3, 6,
                            dis_rows="auto")
    assert stats["disagreement_rows"] == ref["disagreement_rows"]
    assert 3 <= stats["disagreement_rows"] <= 15  # 5 rows at the first step (1,100 stored)
    assert stats["mean_disagreement"] == pytest.approx(ref["mean_disagreement"], rel=1e-4)
    # measuring (natively: on the step's own pass over the elites) never changes the rollout
    a, b = mf.ReplayPool(9000, OD, AD), mf.ReplayPool(9000, OD, AD)
    run_native_rollout(inf, agent, "Hopper-v5", real, a, 1100, 3, 6)
    run_native_rollout(inf, agent, "Hopper-v5", real, b, 1100, 3, 6, compute_disagreement=False)
    for x, y in zip(a.transitions(), b.transitions(), strict=True):
        np.testing.assert_array_equal(x, y)
    # "auto" and "all" by name; the engines' integer rules; anything else names the argument
    for rule, rows in (("auto", stats["disagreement_rows"]), ("all", stats["rows_added"]),
                       (-1, stats["rows_added"]), (-2, stats["disagreement_rows"])):
        again = run_native_rollout(inf, agent, "Hopper-v5", real, pool, 1100, 3, 6,
                                   disagreement_rows=rule)
        assert again["disagreement_rows"] == rows and again["rows_added"] == stats["rows_added"]
    size = len(pool)
    for bad in ("most", -3, 2.5, True):
        with pytest.raises(ValueError, match="disagreement_rows"):
            run_native_rollout(inf, agent, "Hopper-v5", real, pool, 1100, 3, 6,
                               disagreement_rows=bad)
    with pytest.raises(ValueError, match="disagreement_rows"):  # the op's own check
        backend.branched_rollout(real._impl, pool._impl, termination=0, num_starts=10,
                                 horizon=2, seed=0, compute_disagreement=True,
                                 disagreement_rows=-3, **actor_params(agent), **model_params(inf))
    assert len(pool) == size


def test_rollout_callable_termination_equals_builtin(backend, rng):
    agent, inf = make_agent(), make_model(rng)
    real = filled_pool(rng, 200)
    pools = [mf.ReplayPool(3000, OD, AD) for _ in range(2)]
    calls = []

    def hopper(obs, act, next_obs):
        calls.append(len(obs))
        assert obs.shape == next_obs.shape == (len(obs), OD) and act.shape == (len(obs), AD)
        return mf.termination_fn("Hopper-v5")(obs, act, next_obs)

    s0 = run_native_rollout(inf, agent, mf.termination_fn("Hopper-v5"), real, pools[0], 300, 5, 9)
    s1 = run_native_rollout(inf, agent, hopper, real, pools[1], 300, 5, 9)
    for a, b in zip(pools[0].transitions(), pools[1].transitions(), strict=True):
        np.testing.assert_array_equal(a, b)
    for key in ("rows_added", "nonfinite", "num_terminated", "steps_run"):
        assert s0[key] == s1[key]
    assert calls[0] == 300 and len(calls) == s1["steps_run"]


def test_rollout_callable_error_leaves_model_pool_unchanged(backend, rng):
    agent, inf = make_agent(), make_model(rng)
    real = filled_pool(rng, 50)
    model_pool = filled_pool(rng, 10)
    before = model_pool.transitions()
    step = []

    def flaky(obs, act, next_obs):
        step.append(0)
        if len(step) == 3:
            raise RuntimeError("boom at step 3")
        return np.zeros(len(obs), bool)

    with pytest.raises(RuntimeError, match="boom"):
        run_native_rollout(inf, agent, flaky, real, model_pool, 40, 5, 1)
    for a, b in zip(before, model_pool.transitions(), strict=True):
        np.testing.assert_array_equal(a, b)
    for bad, err in (
        (lambda o, a, n: np.zeros(len(o) + 1, bool), ValueError),
        (lambda o, a, n: np.full(len(o), 2), ValueError),
        (lambda o, a, n: np.zeros(len(o), np.float32), TypeError),
    ):
        with pytest.raises(err, match="termination"):
            run_native_rollout(inf, agent, bad, real, model_pool, 40, 2, 1)
    assert len(model_pool) == 10


def test_terminated_rows_stored_once_and_stop(backend, rng):
    agent, inf = make_agent(), make_model(rng)
    real = filled_pool(rng, 64)
    pool = mf.ReplayPool(1000, OD, AD)
    stats = run_native_rollout(inf, agent, lambda o, a, n: np.ones(len(o), bool), real, pool,
                               100, 6, 3, compute_disagreement=False)
    assert stats["rows_added"] == 100 and stats["steps_run"] == 1
    assert stats["frac_terminated"] == 1.0 and stats["mean_length"] == 1.0
    assert math.isnan(stats["mean_disagreement"])
    assert pool.transitions().terminated.all()
    # terminate only rows whose next z is below the start z: each stops after its first hit
    pool2 = mf.ReplayPool(5000, OD, AD)
    stats2 = run_native_rollout(inf, agent, lambda o, a, n: n[:, 0] < o[:, 0], real, pool2,
                                100, 6, 3)
    tr = pool2.transitions()
    np.testing.assert_array_equal(tr.terminated, tr.next_obs[:, 0] < tr.obs[:, 0])
    assert stats2["num_terminated"] == int(tr.terminated.sum())
    # a terminated row's next_obs never starts another transition; every transition after
    # the first step continues exactly one non-terminated row
    starts = {o.tobytes() for o in tr.obs}
    assert not any(n.tobytes() in starts for n in tr.next_obs[tr.terminated])
    continued = sum(n.tobytes() in starts for n in tr.next_obs[~tr.terminated])
    assert stats2["nonfinite"] == 0 and continued == stats2["rows_added"] - 100
    assert 0 < stats2["num_terminated"] <= 100 and stats2["steps_run"] > 1


def test_horizon_end_is_truncation(backend, rng):
    agent, inf = make_agent(), make_model(rng)
    real = filled_pool(rng, 64)
    pool = mf.ReplayPool(10_000, OD, AD)
    stats = run_native_rollout(inf, agent, NEVER, real, pool, 250, 3, 5)
    assert stats["rows_added"] == 750 and stats["mean_length"] == 3.0
    assert stats["num_terminated"] == 0 and stats["frac_terminated"] == 0.0
    tr = pool.transitions()
    assert not tr.terminated.any()
    # rows keep their order: step t+1's obs are step t's next_obs
    np.testing.assert_array_equal(tr.obs[250:500], tr.next_obs[:250])
    np.testing.assert_array_equal(tr.obs[500:], tr.next_obs[250:500])
    # zero work: nothing happens
    for n, h in ((0, 3), (10, 0)):
        s = run_native_rollout(inf, agent, NEVER, real, pool, n, h, 5)
        assert s["rows_added"] == 0 and s["steps_run"] == 0
    assert len(pool) == 750


def test_nonfinite_rows_dropped_and_counted(backend, rng):
    agent, inf = make_agent(), make_model(rng)
    # member 2 (an elite) overflows to +inf in float32 for rows with a large first input:
    # its first-layer weight of input 0 is huge, SiLU(+inf) = inf reaches the output.
    inf.weights[0][2, 0, :] = 3e37
    inf.weights[-1][2, :, 0] = np.abs(inf.weights[-1][2, :, 0]) + 0.01
    real = filled_pool(rng, 300)
    pool = mf.ReplayPool(5000, OD, AD)
    stats = run_native_rollout(inf, agent, NEVER, real, pool, 400, 3, 77)
    assert stats["nonfinite"] > 0
    assert stats["rows_added"] + stats["nonfinite"] < 400 * 3  # dropped rows stop
    tr = pool.transitions()
    assert len(tr.rew) == stats["rows_added"]
    for x in tr[:4]:
        assert np.isfinite(x).all()
    # the same drops as the reference
    with np.errstate(all="ignore"):
        inf64 = inf  # the reference reads the same arrays
        _, ref, _ = ref_rollout(backend, inf64, agent, NEVER, real.transitions().obs, 400, 3, 77)
    assert stats["nonfinite"] == ref["nonfinite"]
    assert stats["rows_added"] == ref["rows_added"]


def test_backends_agree_on_rollout(rng):
    if "native" not in _backend.available():
        pytest.skip("native extension not built")
    agent, inf = make_agent(), make_model(rng)
    states = hopper_states(rng, 500)
    out = {}
    for name in ("native", "numba"):
        with _backend.use(name):
            real = mf.ReplayPool(500, OD, AD)
            real.add_batch(states, np.zeros((500, AD), np.float32), np.zeros(500, np.float32),
                           states, np.zeros(500, bool))
            pool = mf.ReplayPool(1000, OD, AD)  # wraps: 600 starts x up to 5 steps
            stats = run_native_rollout(inf, agent, "Hopper-v5", real, pool, 600, 5, 31)
            out[name] = (stats, pool.transitions(), pool.write_pos)
    (s0, t0, w0), (s1, t1, w1) = out["native"], out["numba"]
    for key in ("rows_added", "nonfinite", "num_terminated", "steps_run"):
        assert s0[key] == s1[key]
    assert s0["rows_added"] > 1000 and w0 == w1
    np.testing.assert_array_equal(t0.terminated, t1.terminated)
    for a, b in zip(t0[:4], t1[:4], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert s0["mean_disagreement"] == pytest.approx(s1["mean_disagreement"], rel=1e-4)


def test_bf16_model_weights(rng):
    """Opt-in bf16 ensemble weights (EnsembleInference.use_bf16) run inside the rollout:
    identical member choices and terminations across backends, values close to float32."""
    agent = make_agent()
    states = hopper_states(rng, 300)
    out = {}
    for name in _backend.available():
        with _backend.use(name):
            inf = make_model(np.random.default_rng(1))
            real = mf.ReplayPool(300, OD, AD)
            real.add_batch(states, np.zeros((300, AD), np.float32), np.zeros(300, np.float32),
                           states, np.zeros(300, bool))
            res = []
            for bf16 in (False, True):
                inf.use_bf16(bf16)
                pool = mf.ReplayPool(2000, OD, AD)
                run_native_rollout(inf, agent, NEVER, real, pool, 400, 1, 12)
                res.append(pool.transitions())
            out[name] = res
    for name, (f32, bf16) in out.items():
        np.testing.assert_array_equal(f32.obs, bf16.obs)
        np.testing.assert_array_equal(f32.act, bf16.act)
        assert not np.array_equal(f32.next_obs, bf16.next_obs), name  # bf16 really ran
        np.testing.assert_allclose(bf16.next_obs, f32.next_obs, atol=0.02)
    if len(out) == 2:
        np.testing.assert_allclose(out["native"][1].next_obs, out["numba"][1].next_obs,
                                   rtol=1e-4, atol=1e-4)


def test_native_rollout_independent_of_thread_count(rng):
    if "native" not in _backend.available():
        pytest.skip("native extension not built")
    agent, inf = make_agent(), make_model(rng)
    with _backend.use("native") as ops:
        real = filled_pool(rng, 400)
        saved = ops.num_threads()
        results = []
        try:
            for threads in (1, 2):
                ops.set_num_threads(threads)
                pool = mf.ReplayPool(20_000, OD, AD)
                run_native_rollout(inf, agent, "Hopper-v5", real, pool, 2000, 3, 8)
                results.append(pool.transitions())
        finally:
            ops.set_num_threads(saved)
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)


def test_rollout_with_ensemble_dynamics_object(backend, rng):
    from mbpo_fast.ensemble import EnsembleDynamics

    model = EnsembleDynamics(OD, AD, ensemble_size=3, num_elites=2, hidden_size=16,
                                num_layers=2, seed=0)
    agent = make_agent()
    real = filled_pool(rng, 50)
    pool = mf.ReplayPool(1000, OD, AD)
    stats = run_native_rollout(model, agent, "Hopper-v5", real, pool, 64, 2, 0)
    assert stats["rows_added"] == len(pool) > 0
    p = model_params(model)
    np.testing.assert_array_equal(p["elites"], np.asarray(model.elites))


def test_rollout_bad_inputs_change_nothing(backend, rng):
    agent, inf = make_agent(), make_model(rng)
    real = filled_pool(rng, 20)
    pool = filled_pool(rng, 5)
    a, m = actor_params(agent), model_params(inf)
    ops = backend

    def call(**kw):
        args = dict(real_pool=real._impl, model_pool=pool._impl, termination=HOPPER,
                    num_starts=10, horizon=2, seed=0, **a, **m)
        args.update(kw)
        return ops.branched_rollout(**args)

    call()  # valid
    n0 = len(pool)
    with pytest.raises(TypeError, match="real_pool"):
        call(real_pool=real)  # the Python wrapper, not the backend pool
    with pytest.raises(TypeError, match="model_pool"):
        call(model_pool=object())
    with pytest.raises(ValueError, match="model_pool"):
        call(model_pool=mf.ReplayPool(10, OD, AD + 1)._impl)
    with pytest.raises(ValueError, match="real_pool"):
        call(real_pool=mf.ReplayPool(10, OD, AD)._impl)  # empty
    with pytest.raises(ValueError, match="num_starts"):
        call(num_starts=-1)
    with pytest.raises(ValueError, match="horizon"):
        call(horizon=-2)
    with pytest.raises(ValueError):
        call(termination=99)
    with pytest.raises(ValueError):
        call(termination=2)  # Walker2d needs obs_dim 17
    with pytest.raises(TypeError, match="termination"):
        call(termination="Hopper-v5")  # the op takes ids; run_native_rollout resolves names
    with pytest.raises(ValueError, match="elites"):
        call(elites=None)
    with pytest.raises(ValueError, match="elites"):
        call(elites=np.array([7]))
    with pytest.raises(ValueError):
        call(actor_weights=a["actor_weights"][:-1], actor_biases=a["actor_biases"][:-1])
    small = make_model(np.random.default_rng(0))
    with pytest.raises(ValueError, match="input_std"):
        call(input_std=np.zeros(OD + AD, np.float32))
    with pytest.raises(ValueError):
        call(input_mean=small.input_mean[:-1])
    assert len(pool) == n0
    with pytest.raises(TypeError, match="termination"):
        run_native_rollout(inf, agent, 3.5, real, pool, 10, 2, 0)
