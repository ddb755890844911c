"""Fused ensemble inference (step / predict / disagreement) against float64 references,
across backends, kernels (AVX-512 vs portable) and thread counts; bad input."""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from mbpo_fast import _backend
from mbpo_fast.ensemble_infer import EnsembleInference
from mbpo_fast.io import save_safetensors

STREAM_MEMBER_CHOICE = 2 << 32
STREAM_MODEL_NOISE = 3 << 32


# ---------------------------------------------------------------------------- helpers


def make_model(rng, obs_dim=11, act_dim=3, ensemble=7, hidden=(200, 200, 200, 200), elites=None):
    """Random parameters at realistic scales (MBPO init), non-trivial normalizer and bounds."""
    widths = [obs_dim + act_dim, *hidden, 2 * (obs_dim + 1)]
    weights, biases = [], []
    for i in range(len(widths) - 1):
        std = 1.0 / (2.0 * math.sqrt(widths[i]))
        w = np.clip(rng.standard_normal((ensemble, widths[i], widths[i + 1])), -2, 2) * std
        weights.append(np.ascontiguousarray(w, dtype=np.float32))
        biases.append((0.1 * rng.standard_normal((ensemble, widths[i + 1]))).astype(np.float32))
    # Push the raw logvars near the bounds so both softplus branches of the clamp matter.
    biases[-1][:, obs_dim + 1 :] += rng.uniform(-6.0, 2.0, size=obs_dim + 1).astype(np.float32)
    od1 = obs_dim + 1
    return dict(
        input_mean=rng.normal(0.0, 2.0, obs_dim + act_dim).astype(np.float32),
        input_std=rng.uniform(0.3, 3.0, obs_dim + act_dim).astype(np.float32),
        weights=weights,
        biases=biases,
        max_logvar=rng.uniform(-0.5, 1.0, od1).astype(np.float32),
        min_logvar=rng.uniform(-8.0, -4.0, od1).astype(np.float32),
        elites=np.array(
            elites if elites is not None else [0, 2, 3, 5, 6][: max(1, min(5, ensemble))],
            dtype=np.int64,
        )
        % ensemble,
        obs_dim=obs_dim,
        act_dim=act_dim,
    )


def params(m):
    return (
        m["input_mean"],
        m["input_std"],
        m["weights"],
        m["biases"],
        m["max_logvar"],
        m["min_logvar"],
    )


def infer(m) -> EnsembleInference:
    return EnsembleInference(m["obs_dim"], m["act_dim"], *params(m), m["elites"])


def inputs(rng, m, batch):
    obs = m["input_mean"][: m["obs_dim"]] + rng.standard_normal((batch, m["obs_dim"])) * 1.5
    act = rng.uniform(-1, 1, (batch, m["act_dim"]))
    return obs.astype(np.float32), act.astype(np.float32)


def softplus64(x):
    return np.logaddexp(0.0, x)


def reference(m, obs, act):
    """float64 (mean, var) [E, B, obs_dim + 1] of every member."""
    x = (np.concatenate([obs, act], axis=1).astype(np.float64) - m["input_mean"]) / m["input_std"]
    h = np.broadcast_to(x, (len(m["weights"][0]), *x.shape))
    n = len(m["weights"])
    for i, (w, b) in enumerate(zip(m["weights"], m["biases"], strict=True)):
        h = h @ w.astype(np.float64) + b[:, None, :].astype(np.float64)
        if i < n - 1:
            h = h / (1.0 + np.exp(-h))
    od1 = m["obs_dim"] + 1
    mean, raw = h[..., :od1], h[..., od1:]
    mx, mn = m["max_logvar"].astype(np.float64), m["min_logvar"].astype(np.float64)
    lv = mx - softplus64(mx - raw)
    lv = mn + softplus64(lv - mn)
    return mean, np.exp(lv)


def philox_members(ops, seed, elites, batch):
    words = ops.philox_fill_u32(seed, STREAM_MEMBER_CHOICE, 0, batch).astype(np.uint64)
    return elites[((words * np.uint64(len(elites))) >> np.uint64(32)).astype(np.int64)]


def philox_noise(ops, seed, batch, od1):
    return ops.philox_fill_normal(seed, STREAM_MODEL_NOISE, 0, batch * od1).reshape(batch, od1)


def step_reference(ops, m, obs, act, seed, deterministic, members):
    mean, var = reference(m, obs, act)
    rows = np.arange(obs.shape[0])
    mu, sd = mean[members, rows], np.sqrt(var[members, rows])
    if not deterministic:
        mu = mu + sd * philox_noise(ops, seed, obs.shape[0], m["obs_dim"] + 1)
    return obs + mu[:, : m["obs_dim"]], mu[:, m["obs_dim"]]


def assert_close(actual, expected, rel=1e-5, name=""):
    """|a - e| <= rel * (max|e| over the array + |e|): relative to the array's scale."""
    expected = np.asarray(expected, dtype=np.float64)
    err = np.abs(np.asarray(actual, dtype=np.float64) - expected)
    bound = rel * (np.abs(expected).max() + np.abs(expected))
    assert (err <= bound).all(), f"{name}: max error {err.max():.3g} (bound {rel} x scale)"


@pytest.fixture
def native():
    if "native" not in _backend.available():
        pytest.skip("native extension not built")
    with _backend.use("native") as ops:
        yield ops


# ---------------------------------------------------------------------------- values


@pytest.mark.parametrize("batch", [1, 7, 33, 1000])
def test_predict_matches_float64_reference(backend, rng, batch):
    m = make_model(rng)
    obs, act = inputs(rng, m, batch)
    mean, var = infer(m).predict(obs, act)
    ref_mean, ref_var = reference(m, obs, act)
    assert mean.dtype == np.float32 and mean.shape == (7, batch, 12) and var.shape == mean.shape
    assert_close(mean, ref_mean, 1e-5, "mean")
    np.testing.assert_array_less(np.abs(var / ref_var - 1.0), 1e-5)


@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("batch", [1, 7, 33, 1000])
def test_step_matches_float64_reference(backend, rng, batch, deterministic):
    m = make_model(rng)
    obs, act = inputs(rng, m, batch)
    seed = 1234567890123
    next_obs, rew, used = infer(m).step(obs, act, seed=seed, deterministic=deterministic)
    assert next_obs.shape == (batch, 11) and rew.shape == (batch,) and used.shape == (batch,)
    assert next_obs.dtype == np.float32 and rew.dtype == np.float32 and used.dtype == np.int64
    np.testing.assert_array_equal(used, philox_members(backend, seed, m["elites"], batch))
    ref_next, ref_rew = step_reference(backend, m, obs, act, seed, deterministic, used)
    assert_close(next_obs - obs, ref_next - obs, 2e-5, "delta obs")
    assert_close(rew, ref_rew, 2e-5, "reward")


def test_deterministic_step_is_the_chosen_members_mean(backend, rng):
    m = make_model(rng)
    obs, act = inputs(rng, m, 64)
    model = infer(m)
    next_obs, rew, used = model.step(obs, act, seed=3, deterministic=True)
    mean, _ = model.predict(obs, act)
    rows = np.arange(64)
    np.testing.assert_allclose(next_obs, obs + mean[used, rows, :11], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rew, mean[used, rows, 11], rtol=1e-5, atol=1e-5)


def test_stochastic_step_noise_is_gaussian_with_predicted_std(backend, rng):
    m = make_model(rng, ensemble=3, elites=[1], hidden=(32, 32))
    obs, act = inputs(rng, m, 1)
    obs, act = np.repeat(obs, 20000, axis=0), np.repeat(act, 20000, axis=0)
    model = infer(m)
    next_obs, rew, _ = model.step(obs, act, seed=9)
    mean, var = model.predict(obs[:1], act[:1])
    z = (np.concatenate([next_obs - obs, rew[:, None]], axis=1) - mean[1, 0]) / np.sqrt(var[1, 0])
    assert np.abs(z.mean(axis=0)).max() < 0.05
    assert np.abs(z.std(axis=0) - 1.0).max() < 0.05


def test_seed_changes_members_and_noise_but_is_reproducible(backend, rng):
    m = make_model(rng)
    obs, act = inputs(rng, m, 200)
    model = infer(m)
    a = model.step(obs, act, seed=1)
    b = model.step(obs, act, seed=1)
    c = model.step(obs, act, seed=2)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert (a[2] != c[2]).any() and (a[0] != c[0]).any()


def test_member_choice_is_uniform_over_elites(backend, rng):
    from scipy import stats

    m = make_model(rng, hidden=(8,), elites=[1, 2, 4, 6])
    obs, act = inputs(rng, m, 40000)
    _, _, used = infer(m).step(obs, act, seed=77, deterministic=True)
    counts = np.bincount(used, minlength=7)
    assert counts[[0, 3, 5]].sum() == 0  # never a non-elite
    assert stats.chisquare(counts[[1, 2, 4, 6]]).pvalue > 1e-4


def test_members_override(backend, rng):
    m = make_model(rng)
    obs, act = inputs(rng, m, 50)
    members = rng.integers(0, 7, 50)  # any member, elite or not
    next_obs, rew, used = infer(m).step(obs, act, seed=5, members=members)
    np.testing.assert_array_equal(used, members)
    ref_next, ref_rew = step_reference(backend, m, obs, act, 5, False, members)
    assert_close(next_obs - obs, ref_next - obs, 2e-5, "delta obs")
    assert_close(rew, ref_rew, 2e-5, "reward")


@pytest.mark.parametrize("members", [None, [0, 1, 4]])
def test_disagreement_matches_reference(backend, rng, members):
    m = make_model(rng)
    obs, act = inputs(rng, m, 77)
    out = infer(m).disagreement(obs, act, members=members)
    mean, _ = reference(m, obs, act)
    chosen = m["elites"] if members is None else np.asarray(members)
    expected = mean[chosen].std(axis=0).mean(axis=1)
    assert out.dtype == np.float32 and out.shape == (77,)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("obs_dim", "act_dim", "hidden"),
    [
        (1, 1, (37,)),
        (2, 0, (64, 37)),
        (5, 2, (200, 64, 37)),
        (17, 6, (37, 200)),
        (11, 3, (16,) * 6),
    ],
)
@pytest.mark.parametrize("batch", [1, 7, 33])
def test_odd_widths_and_batches(backend, rng, obs_dim, act_dim, hidden, batch):
    m = make_model(rng, obs_dim, act_dim, ensemble=4, hidden=hidden, elites=[0, 3])
    obs, act = inputs(rng, m, batch)
    model = infer(m)
    mean, var = model.predict(obs, act)
    ref_mean, ref_var = reference(m, obs, act)
    assert_close(mean, ref_mean, 1e-5, "mean")
    np.testing.assert_array_less(np.abs(var / ref_var - 1.0), 1e-5)
    next_obs, rew, used = model.step(obs, act, seed=11)
    ref_next, ref_rew = step_reference(backend, m, obs, act, 11, False, used)
    assert_close(next_obs - obs, ref_next - obs, 2e-5, "delta obs")
    assert_close(rew, ref_rew, 2e-5, "reward")


def test_single_row_api(backend, rng):
    m = make_model(rng)
    obs, act = inputs(rng, m, 4)
    model = infer(m)
    next_obs, rew, used = model.step(obs[0], act[0], seed=21)
    assert next_obs.shape == (11,) and np.ndim(rew) == 0 and np.ndim(used) == 0
    batch = model.step(obs[:1], act[:1], seed=21)
    np.testing.assert_array_equal(next_obs, batch[0][0])
    mean, var = model.predict(obs[0], act[0])
    assert mean.shape == (7, 12) and var.shape == (7, 12)
    assert np.ndim(model.disagreement(obs[0], act[0])) == 0


def test_row_result_does_not_depend_on_the_batch(backend, rng):
    m = make_model(rng)
    obs, act = inputs(rng, m, 40)
    model = infer(m)
    members = rng.integers(0, 7, 40)
    full = model.step(obs, act, deterministic=True, members=members)
    for i in (0, 17, 39):
        one = model.step(
            obs[i : i + 1], act[i : i + 1], deterministic=True, members=members[i : i + 1]
        )
        np.testing.assert_allclose(one[0][0], full[0][i], rtol=1e-6, atol=1e-6)


def test_empty_batch(backend, rng):
    m = make_model(rng, hidden=(8,))
    obs, act = inputs(rng, m, 0)
    next_obs, rew, used = infer(m).step(obs, act)
    assert next_obs.shape == (0, 11) and rew.shape == (0,) and used.shape == (0,)
    mean, var = infer(m).predict(obs, act)
    assert mean.shape == (7, 0, 12)


# ---------------------------------------------------------------------------- agreement


def test_backends_agree(rng):
    if "native" not in _backend.available():
        pytest.skip("native extension not built")
    m = make_model(rng)
    obs, act = inputs(rng, m, 500)
    results = {}
    for name in ("native", "numba"):
        with _backend.use(name):
            model = infer(m)
            results[name] = (
                model.step(obs, act, seed=99),
                model.predict(obs, act),
                model.disagreement(obs, act),
            )
    (sn, pn, dn), (sb, pb, db) = results["native"], results["numba"]
    np.testing.assert_array_equal(sn[2], sb[2])  # exact member choices
    assert_close(sn[0] - obs, sb[0] - obs, 2e-5, "delta obs")
    assert_close(sn[1], sb[1], 2e-5, "reward")
    assert_close(pn[0], pb[0], 1e-5, "mean")
    np.testing.assert_allclose(pn[1], pb[1], rtol=1e-5)
    np.testing.assert_allclose(dn, db, rtol=1e-4, atol=1e-7)


def test_portable_and_avx512_kernels_agree(native, rng):
    m = make_model(rng, hidden=(200, 64, 37))
    obs, act = inputs(rng, m, 300)
    out = {}
    try:
        for kernel in ("portable", "avx512"):
            try:
                native.ensemble_set_kernel(kernel)
            except ValueError:
                pytest.skip("this CPU/build has no AVX-512")
            assert native.ensemble_kernel() == kernel
            model = infer(m)
            out[kernel] = (model.step(obs, act, seed=4), model.predict(obs, act))
    finally:
        native.ensemble_set_kernel("auto")
    (sp, pp), (sa, pa) = out["portable"], out["avx512"]
    np.testing.assert_array_equal(sp[2], sa[2])
    assert_close(sp[0] - obs, sa[0] - obs, 2e-5, "delta obs")
    assert_close(sp[1], sa[1], 2e-5, "reward")
    assert_close(pp[0], pa[0], 1e-5, "mean")
    np.testing.assert_allclose(pp[1], pa[1], rtol=1e-5)


def test_results_do_not_depend_on_the_thread_count(native, rng):
    m = make_model(rng)
    obs, act = inputs(rng, m, 1000)
    model = infer(m)
    saved = native.num_threads()
    try:
        out = {}
        for threads in (1, 2):
            native.set_num_threads(threads)
            out[threads] = (
                *model.step(obs, act, seed=8),
                *model.predict(obs, act),
                model.disagreement(obs, act),
            )
    finally:
        native.set_num_threads(saved)
    for a, b in zip(out[1], out[2], strict=True):
        np.testing.assert_array_equal(a, b)


def test_results_do_not_depend_on_thread_placement(native, rng, tmp_path):
    """MBPO_FAST_THREAD_PLACEMENT=0 (workers never migrate) gives the same bits as the default."""
    m = make_model(rng)
    obs, act = inputs(rng, m, 700)
    saved = native.num_threads()
    try:
        native.set_num_threads(2)
        expected = infer(m).step(obs, act, seed=3)
    finally:
        native.set_num_threads(saved)
    # The setting is read once per process (when the thread pool starts): a fresh one.
    with open(tmp_path / "case.pkl", "wb") as f:
        pickle.dump((m, obs, act), f)
    script = f"""
import pickle, numpy as np
from mbpo_fast import _backend
from mbpo_fast.ensemble_infer import EnsembleInference
_backend.ops.set_num_threads(2)
with open({str(tmp_path / "case.pkl")!r}, "rb") as f:
    m, obs, act = pickle.load(f)
model = EnsembleInference(m["obs_dim"], m["act_dim"], m["input_mean"], m["input_std"], m["weights"],
                          m["biases"], m["max_logvar"], m["min_logvar"], m["elites"])
np.savez({str(tmp_path / "out.npz")!r}, *model.step(obs, act, seed=3))
"""
    env = {**os.environ, "MBPO_FAST_THREAD_PLACEMENT": "0", "MBPO_FAST_BACKEND": "native"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)
    got = np.load(tmp_path / "out.npz")
    for i, want in enumerate(expected):
        np.testing.assert_array_equal(got[f"arr_{i}"], want)


# ---------------------------------------------------------------------------- borrowing


def test_parameters_are_borrowed_not_copied(backend, rng):
    m = make_model(rng, hidden=(16, 16))
    tensors = {
        k: torch.from_numpy(v.copy())
        for k, v in m.items()
        if k in ("input_mean", "input_std", "max_logvar", "min_logvar")
    }
    weights = [torch.from_numpy(w.copy()) for w in m["weights"]]
    biases = [torch.from_numpy(b.copy()) for b in m["biases"]]
    model = EnsembleInference(
        11,
        3,
        tensors["input_mean"],
        tensors["input_std"],
        weights,
        biases,
        tensors["max_logvar"],
        tensors["min_logvar"],
        m["elites"],
    )
    assert np.shares_memory(model.weights[0], weights[0].numpy())
    obs, act = inputs(rng, m, 5)
    before, _ = model.predict(obs, act)
    with torch.no_grad():
        biases[-1][:, 0] += 1.0  # an in-place update (optimizer step) is seen by the next call
    after, _ = model.predict(obs, act)
    np.testing.assert_allclose(after[..., 0] - before[..., 0], 1.0, rtol=1e-5)


def test_from_safetensors_round_trip(backend, rng, tmp_path):
    m = make_model(rng, hidden=(32, 32))
    tensors = {
        "input_mean": m["input_mean"],
        "input_std": m["input_std"],
        "max_logvar": m["max_logvar"],
        "min_logvar": m["min_logvar"],
        "elites": m["elites"],
    }
    for i, (w, b) in enumerate(zip(m["weights"], m["biases"], strict=True)):
        tensors[f"layers.{i}.weight"] = w
        tensors[f"layers.{i}.bias"] = b
    path = tmp_path / "model.safetensors"
    save_safetensors(path, tensors, {"obs_dim": "11", "act_dim": "3", "activation": "silu"})
    loaded = EnsembleInference.from_safetensors(path)
    obs, act = inputs(rng, m, 9)
    for a, b in zip(loaded.step(obs, act, seed=3), infer(m).step(obs, act, seed=3), strict=True):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------- bad input


def _call_step(ops, m, obs, act, **over):
    args = dict(
        zip(
            ("input_mean", "input_std", "weights", "biases", "max_logvar", "min_logvar"),
            params(m),
            strict=True,
        )
    )
    args.update(elites=m["elites"], members=None, seed=0, deterministic=False)
    args.update(over)
    return ops.ensemble_step(
        obs,
        act,
        args["input_mean"],
        args["input_std"],
        args["weights"],
        args["biases"],
        args["max_logvar"],
        args["min_logvar"],
        args["elites"],
        args["members"],
        args["seed"],
        args["deterministic"],
    )


def _bad_cases(m, obs, act):
    nan_obs = obs.copy()
    nan_obs[2, 3] = np.nan
    inf_act = act.copy()
    inf_act[1, 0] = np.inf
    w_bad = list(m["weights"])
    w_bad[1] = w_bad[1][:, :-1]
    b_bad = list(m["biases"])
    b_bad[0] = b_bad[0][:, :-1]
    std0 = m["input_std"].copy()
    std0[4] = 0.0
    return [
        ("obs", ValueError, dict(obs=obs[:, :-1])),
        ("act", ValueError, dict(act=act[:-1])),
        ("obs", ValueError, dict(obs=nan_obs)),
        ("act", ValueError, dict(act=inf_act)),
        ("obs", TypeError, dict(obs=obs.astype(np.complex64))),
        ("members", ValueError, dict(members=np.full(len(obs), 7))),
        ("members", ValueError, dict(members=np.full(len(obs), -1))),
        ("members", ValueError, dict(members=np.zeros(len(obs) + 1, dtype=np.int64))),
        ("members", TypeError, dict(members=np.zeros(len(obs), dtype=np.float32))),
        ("elites", ValueError, dict(elites=np.array([0, 9]))),
        ("elites", ValueError, dict(elites=np.zeros(0, dtype=np.int64))),
        ("weights[1]", ValueError, dict(weights=w_bad)),
        ("biases[0]", ValueError, dict(biases=b_bad)),
        ("biases", ValueError, dict(biases=m["biases"][:-1])),
        ("input_std", ValueError, dict(input_std=std0)),
        ("max_logvar", ValueError, dict(max_logvar=m["max_logvar"][:-1])),
    ]


@pytest.mark.parametrize("case", range(16))
def test_bad_input_raises_naming_the_argument(backend, rng, case):
    m = make_model(rng, hidden=(16,))
    obs, act = inputs(rng, m, 6)
    name, exc, over = _bad_cases(m, obs, act)[case]
    snapshot = [a.copy() for a in (obs, act, *m["weights"], *m["biases"])]
    o, a = over.pop("obs", obs), over.pop("act", act)
    with pytest.raises(exc, match=name.replace("[", r"\[").replace("]", r"\]")):
        _call_step(backend, m, o, a, **over)
    for before, after in zip(snapshot, (obs, act, *m["weights"], *m["biases"]), strict=True):
        np.testing.assert_array_equal(before, after)  # nothing written


def test_predict_and_disagreement_validate(backend, rng):
    m = make_model(rng, hidden=(16,))
    obs, act = inputs(rng, m, 4)
    model = infer(m)
    bad = obs.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="obs"):
        model.predict(bad, act)
    with pytest.raises(ValueError, match="act"):
        model.predict(obs, act[:, :2])
    with pytest.raises(ValueError, match="members"):
        model.disagreement(obs, act, members=[0, 7])
    with pytest.raises(ValueError, match="members"):
        model.disagreement(obs, act, members=np.zeros(0, dtype=np.int64))


def test_adapter_rejects_bad_parameters(rng):
    m = make_model(rng, hidden=(16,))
    with pytest.raises(TypeError, match="weights\\[0\\]"):
        EnsembleInference(
            11,
            3,
            m["input_mean"],
            m["input_std"],
            [m["weights"][0].astype(np.float64), m["weights"][1]],
            m["biases"],
            m["max_logvar"],
            m["min_logvar"],
            m["elites"],
        )
    with pytest.raises(ValueError, match="C-contiguous"):
        EnsembleInference(
            11,
            3,
            m["input_mean"],
            m["input_std"],
            [np.asfortranarray(m["weights"][0]), m["weights"][1]],
            m["biases"],
            m["max_logvar"],
            m["min_logvar"],
            m["elites"],
        )
    with pytest.raises(ValueError, match="elites"):
        EnsembleInference(11, 3, *params(m), np.array([7]))
    with pytest.raises(ValueError, match="activation"):
        EnsembleInference(11, 3, *params(m), m["elites"], activation="relu")


# ---------------------------------------------------------------------------- bf16 (opt-in)


def test_bf16_packing_layout_and_rounding(backend, rng):
    m = make_model(rng, hidden=(37,))
    packed = backend.ensemble_pack_bf16(m["weights"])
    w = m["weights"][0]  # [E, 14, 37]
    # [E, P, C, 2]: P = ceil(ceil(14 / 2) / 16) * 16, C = ceil(37 / 16) * 16, zero padded
    assert packed[0].shape == (7, 16, 48, 2) and packed[0].dtype == np.uint16
    assert (packed[0][:, 7:] == 0).all() and (packed[0][:, :, 37:] == 0).all()
    widened = (packed[0].astype(np.uint32) << 16).view(np.float32)
    # pair p of column j holds rows 2p and 2p + 1 of W, each within bf16 rounding (2^-9).
    np.testing.assert_allclose(widened[:, 3, 5, 0], w[:, 6, 5], rtol=2.0**-8)
    np.testing.assert_allclose(widened[:, 3, 5, 1], w[:, 7, 5], rtol=2.0**-8)
    assert (packed[1][:, 18, :, 1] == 0).all()  # odd in = 37: the last pair is zero-padded
    assert (packed[1][:, 18, :24, 0] != 0).any()


def test_bf16_error_is_far_below_the_predicted_std(backend, rng):
    m = make_model(rng)
    obs, act = inputs(rng, m, 300)
    model = infer(m)
    mean, var = model.predict(obs, act)
    step32 = model.step(obs, act, seed=6)
    model.use_bf16()
    mean16, var16 = model.predict(obs, act)
    step16 = model.step(obs, act, seed=6)
    err = np.abs(mean16 - mean) / np.sqrt(var)
    assert err.max() < 0.02 and np.median(err) < 1e-3, (err.max(), np.median(err))
    np.testing.assert_array_equal(step16[2], step32[2])  # same members
    model.use_bf16(False)
    np.testing.assert_array_equal(model.predict(obs, act)[0], mean)


def test_bf16_backends_agree(rng):
    if "native" not in _backend.available():
        pytest.skip("native extension not built")
    m = make_model(rng, hidden=(64, 37))
    obs, act = inputs(rng, m, 100)
    out = {}
    for name in ("native", "numba"):
        with _backend.use(name):
            model = infer(m)
            model.use_bf16()
            out[name] = (model.predict(obs, act), model.weights_bf16)
    for a, b in zip(out["native"][1], out["numba"][1], strict=True):
        np.testing.assert_array_equal(a, b)  # identical packing
    (mn, vn), (mb, vb) = out["native"][0], out["numba"][0]
    # Both round activations to bf16; a one-ulp float difference can flip a bf16 rounding,
    # so they agree to bf16 (not float) precision, far below the predicted std.
    assert (np.abs(mn - mb) / np.sqrt(vn)).max() < 0.02
    np.testing.assert_allclose(vn, vb, rtol=1e-2)


def test_bf16_bad_packed_weights(backend, rng):
    m = make_model(rng, hidden=(16,))
    obs, act = inputs(rng, m, 3)
    packed = backend.ensemble_pack_bf16(m["weights"])
    with pytest.raises(ValueError, match="weights_bf16"):
        backend.ensemble_predict(obs, act, *params(m), packed[:1])
    with pytest.raises(ValueError, match=r"weights_bf16\[1\]"):
        backend.ensemble_predict(obs, act, *params(m), [packed[0], packed[1][:, :, :-1]])
    with pytest.raises(TypeError, match=r"weights_bf16\[0\]"):
        backend.ensemble_predict(obs, act, *params(m), [packed[0].astype(np.int32), packed[1]])


def test_bf16_portable_and_avx512_kernels_agree(native, rng):
    m = make_model(rng, hidden=(200, 37))
    obs, act = inputs(rng, m, 50)
    model = infer(m)
    model.use_bf16()
    out = {}
    try:
        for kernel in ("portable", "avx512"):
            try:
                native.ensemble_set_kernel(kernel)
            except ValueError:
                pytest.skip("this CPU/build has no AVX-512")
            out[kernel] = model.predict(obs, act)
    finally:
        native.ensemble_set_kernel("auto")
    (mp, vp), (ma, va) = out["portable"], out["avx512"]
    assert (np.abs(mp - ma) / np.sqrt(va)).max() < 0.02
    np.testing.assert_allclose(vp, va, rtol=1e-2)
