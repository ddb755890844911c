"""Learned termination (issue 16): mf.TerminationModel fit / __call__ / save / load, the
native MLP against a float64 torch reference on every backend, and the model running natively
inside a rollout (equal to the same model as a Python callable)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_rollout_native import AD, OD, filled_pool, make_agent, make_model

import mbpo_fast as mf
from mbpo_fast.io import load_safetensors, save_safetensors
from mbpo_fast.rollout_native import run_native_rollout


def hopper_like(rng, n):
    """Transitions labelled by Hopper's own rule on next_obs (healthy z and angle)."""
    obs = rng.standard_normal((n, OD)).astype(np.float32)
    act = rng.uniform(-1, 1, (n, AD)).astype(np.float32)
    nxt = obs.copy()
    nxt[:, 0] = rng.uniform(0.5, 1.6, n)
    nxt[:, 1] = rng.uniform(-0.4, 0.4, n)
    term = ~((nxt[:, 0] > 0.7) & (np.abs(nxt[:, 1]) < 0.2))
    return obs, act, nxt, term


def ref_logits(tm, obs, act, nxt):
    x = torch.from_numpy(np.concatenate([obs, act, nxt], 1).astype(np.float64))
    h = (x - torch.from_numpy(tm.input_mean).double()) / torch.from_numpy(tm.input_std).double()
    for i, (w, b) in enumerate(zip(tm.weights, tm.biases, strict=True)):
        h = h @ w.double() + b.double()
        if i + 1 < len(tm.weights):
            h = torch.nn.functional.silu(h)
    return h[:, 0].numpy()


def test_fit_learns_the_rule_with_class_balance(rng):
    obs, act, nxt, term = hopper_like(rng, 4000)
    tm = mf.TerminationModel(OD, AD, hidden_size=32, num_layers=2, seed=1)
    stats = tm.fit(obs, act, nxt, term, max_epochs=60)
    assert 0.2 < stats["positive_fraction"] < 0.8
    assert stats["holdout_balanced_accuracy"] > 0.9 and 1 <= stats["epochs"] <= 60
    o2, a2, n2, t2 = hopper_like(np.random.default_rng(7), 2000)  # fresh held-out data
    pred = tm(o2, a2, n2)
    assert pred.dtype == bool and pred.shape == (2000,)
    assert 0.5 * (pred[t2].mean() + (~pred[~t2]).mean()) > 0.9


def test_native_mlp_matches_float64_reference(backend, rng):
    tm = mf.TerminationModel(OD, AD, hidden_size=24, num_layers=3, seed=4)
    tm.input_mean = (0.1 * rng.standard_normal(2 * OD + AD)).astype(np.float32)
    tm.input_std = rng.uniform(0.5, 2, 2 * OD + AD).astype(np.float32)
    obs, act, nxt, _ = hopper_like(rng, 700)
    got = tm.logits(obs, act, nxt)
    ref = ref_logits(tm, obs, act, nxt)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    clear = np.abs(ref) > 1e-4
    np.testing.assert_array_equal(tm(obs, act, nxt)[clear], (ref > 0)[clear])
    with pytest.raises(ValueError, match="act"):
        tm(obs, act[:, :2], nxt)
    with pytest.raises(ValueError, match="next_obs"):
        tm(obs, act, nxt[:5])


def test_save_load_round_trip(rng, tmp_path):
    obs, act, nxt, term = hopper_like(rng, 600)
    tm = mf.TerminationModel(OD, AD, hidden_size=16, num_layers=2, seed=2)
    tm.fit(obs, act, nxt, term, max_epochs=5)
    path = tmp_path / "term.safetensors"
    tm.save(path)
    back = mf.TerminationModel.load(path)
    np.testing.assert_array_equal(back.logits(obs, act, nxt), tm.logits(obs, act, nxt))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError):
        mf.TerminationModel.load(bad)



@pytest.mark.parametrize("edit,match", [
    (lambda t, m: t.update({"layers.1.weight": np.zeros((16, 15), np.float32)}),
     r"'layers.1.weight' expected shape \(16, 16\) float32, got \(16, 15\)"),
    (lambda t, m: t.update({"layers.2.bias": np.zeros(2, np.float32)}), "'layers.2.bias'"),
    (lambda t, m: t.update({"input_std": np.zeros(2 * OD + AD, np.float32)}), "input_std"),
    (lambda t, m: t["layers.0.weight"].__setitem__((0, 0), np.nan), "non-finite"),
    (lambda t, m: t.pop("layers.2.weight"), "missing tensor 'layers.2.weight'"),
    (lambda t, m: t.update({"layers.3.weight": np.zeros((1, 1), np.float32)}), "unexpected"),
    (lambda t, m: m.update(hidden_size="1000000000"), "'layers.0.weight' expected shape"),
    (lambda t, m: m.update(obs_dim="4611686018427387904"), "obs_dim"),
    (lambda t, m: m.update(num_layers="1000000"), "num_layers"),
    (lambda t, m: m.update(seed="-1"), r"metadata seed: expected an int in \[0, 2\*\*64\)"),
])
def test_load_checks_every_tensor_before_building(tmp_path, edit, match):
    """Every tensor against the metadata (the tensor named, with the expected and actual
    shape), before a model of the metadata's size is built: a 10^9 hidden_size claim with
    small tensors is a shape error, not a 10^9-wide allocation."""
    tm = mf.TerminationModel(OD, AD, hidden_size=16, num_layers=2, seed=2)
    path = tmp_path / "term.safetensors"
    tm.save(path)
    tensors, meta = load_safetensors(path)
    edit(tensors, meta)
    save_safetensors(path, tensors, meta)
    with pytest.raises(ValueError, match=match):
        mf.TerminationModel.load(path)

def test_fit_bad_inputs(rng):
    tm = mf.TerminationModel(OD, AD)
    obs, act, nxt, term = hopper_like(rng, 50)
    with pytest.raises(ValueError, match="terminated"):
        tm.fit(obs, act, nxt, term[:10])
    with pytest.raises(ValueError, match="act"):
        tm.fit(obs, act[:, :1], nxt, term)
    with pytest.raises(ValueError, match="holdout_ratio"):
        tm.fit(obs, act, nxt, term, holdout_ratio=1.5)
    for bad in ({"obs_dim": 0}, {"hidden_size": -1}, {"num_layers": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            mf.TerminationModel(**({"obs_dim": OD, "act_dim": AD} | bad))


def test_learned_termination_runs_natively_in_the_rollout(backend, rng):
    """Passed as the rollout's termination, the model runs natively (no Python per step) and
    gives exactly what the same model gives as a Python callable."""
    agent, inf = make_agent(), make_model(rng)
    real = filled_pool(rng, 200)
    tm = mf.TerminationModel(OD, AD, hidden_size=16, num_layers=2, seed=3)
    tr = real.transitions()  # shift the logit so that about a third of the rows terminate
    tm.biases[-1] -= float(np.quantile(tm.logits(tr.obs, tr.act, tr.next_obs), 0.7))
    a, b = mf.ReplayPool(5000, OD, AD), mf.ReplayPool(5000, OD, AD)
    s0 = run_native_rollout(inf, agent, tm, real, a, 300, 4, 5)
    s1 = run_native_rollout(inf, agent, lambda o, x, n: tm(o, x, n), real, b, 300, 4, 5)
    assert 0 < s0["num_terminated"] < 300 and s0["num_terminated"] == s1["num_terminated"]
    for x, y in zip(a.transitions(), b.transitions(), strict=True):
        np.testing.assert_array_equal(x, y)
    tr = a.transitions()
    np.testing.assert_array_equal(tr.terminated, tm(tr.obs, tr.act, tr.next_obs))
