"""EnsembleDynamics.step's per-call fast path (the bound parameters of
``inference.handle()``) and its preallocated outputs (``out=``), on every backend: the same
numbers as the general path, the same checks, and nothing written on bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mbpo_fast as mf

OBS, ACT = 5, 2


def make_model(seed: int = 3) -> mf.EnsembleDynamics:
    model = mf.EnsembleDynamics(OBS, ACT, ensemble_size=4, num_elites=3, hidden_size=24,
                                num_layers=3, seed=seed)
    with torch.no_grad():  # informative biases so members and rows differ clearly
        for layer in model.layers:
            layer.bias.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(seed))
    return model


def rows(rng, b: int) -> tuple[np.ndarray, np.ndarray]:
    return (rng.standard_normal((b, OBS), dtype=np.float32),
            rng.standard_normal((b, ACT), dtype=np.float32))


def test_fast_path_equals_the_general_path(backend, rng):
    model = make_model()
    obs, act = rows(rng, 33)
    fast = model.step(obs, act, seed=11, return_members=True)
    # float64 inputs take the general path (converted and checked in Python)
    slow = model.step(obs.astype(np.float64), act.astype(np.float64), seed=11,
                      return_members=True)
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_array_equal(a, b)
    assert fast[0].dtype == np.float32 and fast[0].shape == (33, OBS)
    assert fast[1].shape == (33,) and set(fast[2].tolist()) <= set(model.elites)
    # and the single-row form of the same rows gives row 0 of a one-row batch
    one = model.step(obs[0], act[0], seed=5)
    batch1 = model.step(obs[:1], act[:1], seed=5)
    np.testing.assert_array_equal(one[0], batch1[0][0])
    assert one[1] == batch1[1][0]


def test_out_receives_the_results_and_is_returned(backend, rng):
    model = make_model()
    obs, act = rows(rng, 17)
    ref_next, ref_rew = model.step(obs, act, seed=4)
    out_next = np.full((17, OBS), np.nan, np.float32)
    out_rew = np.full(17, np.nan, np.float32)
    got_next, got_rew = model.step(obs, act, seed=4, out=(out_next, out_rew))
    assert got_next is out_next and got_rew is out_rew
    np.testing.assert_array_equal(out_next, ref_next)
    np.testing.assert_array_equal(out_rew, ref_rew)
    # deterministic steps through out= as well; a new seed gives new samples in the same arrays
    model.step(obs, act, seed=5, out=(out_next, out_rew))
    assert not np.array_equal(out_next, ref_next)
    # the general path (float64 input) accepts out= too
    model.step(obs.astype(np.float64), act, seed=4, out=(out_next, out_rew))
    np.testing.assert_array_equal(out_next, ref_next)


def test_bad_out_names_the_argument_and_writes_nothing(backend, rng):
    model = make_model()
    obs, act = rows(rng, 8)
    good_next, good_rew = np.zeros((8, OBS), np.float32), np.zeros(8, np.float32)
    read_only = np.zeros((8, OBS), np.float32)
    read_only.flags.writeable = False
    bad = [
        ((np.zeros((7, OBS), np.float32), good_rew), ValueError, r"out\[0\].*shape"),
        ((good_next, np.zeros(8, np.float64)), TypeError, r"out\[1\].*float32"),
        ((np.zeros((8, 2 * OBS), np.float32)[:, ::2], good_rew), ValueError,
         r"out\[0\].*(shape|contiguous)"),
        ((read_only, good_rew), ValueError, r"out\[0\].*writeable"),
        ((obs, good_rew), ValueError, "(share memory|shape)"),
        ([good_next], TypeError, "out: expected a pair"),
    ]
    for out, exc, match in bad:
        sentinel = [o.copy() for o in out if isinstance(o, np.ndarray)]
        with pytest.raises(exc, match=match):
            model.step(obs, act, seed=1, out=out)
        for o, s in zip([o for o in out if isinstance(o, np.ndarray)], sentinel, strict=True):
            np.testing.assert_array_equal(o, s)
    # an output aliasing an input of the same shape is refused (in-place stepping would read
    # rows that were already overwritten)
    obs_copy = obs.copy()
    with pytest.raises(ValueError, match="share memory"):
        model.step(obs, obs[:, :ACT].copy(), seed=1, out=(obs, good_rew))
    np.testing.assert_array_equal(obs, obs_copy)
    with pytest.raises(ValueError, match="out: preallocated outputs need batched rows"):
        model.step(obs[0], act[0], out=(good_next[:1], good_rew[:1]))


def test_fast_path_keeps_the_checks(backend, rng):
    model = make_model()
    obs, act = rows(rng, 4)
    with pytest.raises(ValueError, match="obs.*shape"):
        model.step(np.zeros((4, OBS + 1), np.float32), act)
    with pytest.raises(ValueError, match="act.*shape"):
        model.step(obs, np.zeros((3, ACT), np.float32))
    bad = obs.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="obs: contains a non-finite value"):
        model.step(bad, act)
    with pytest.raises(ValueError, match="seed"):
        model.step(obs, act, seed=-1)
    with pytest.raises((TypeError, ValueError), match="seed"):
        model.step(obs, act, seed=True)
    with pytest.raises(TypeError, match="act"):  # an integer array is not silently converted
        model.step(obs, np.zeros((4, ACT), np.int64))


def test_bound_parameters_follow_the_model(backend, rng):
    model = make_model()
    obs, act = rows(rng, 64)
    before = model.step(obs, act, seed=2, deterministic=True)
    with torch.no_grad():  # an in-place update (an optimizer step) is seen by the next call
        model.layers[-1].bias.add_(0.5)
    after = model.step(obs, act, seed=2, deterministic=True)
    assert not np.array_equal(before[0], after[0])
    model.set_elites([3, 1, 0])  # new elites: the bound handle is rebuilt
    _, _, used = model.step(obs, act, seed=9, return_members=True)
    assert set(used.tolist()) == {0, 1, 3}
    ref = model.step(obs, act, seed=2, deterministic=True)
    model.use_bf16(True)  # bf16 weights: rebuilt again, results move by bf16 rounding only
    bf = model.step(obs, act, seed=2, deterministic=True)
    np.testing.assert_allclose(bf[0], ref[0], atol=0.02)
    assert not np.array_equal(bf[0], ref[0])
