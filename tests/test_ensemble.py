"""EnsembleDynamics: training recipe, inference through the fused kernels, save/load, bad input."""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest
import torch
from scipy import stats

import mbpo_fast as mf
from mbpo_fast.ensemble import EnsembleDynamics, layer_weight_decays
from mbpo_fast.io import load_safetensors, save_safetensors

OBS, ACT = 3, 2
# every trainer this build can run ("native" needs the extension)
TRAINERS = ["torch"] + (["native"] if mf.backend() == "native" else [])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _system(seed: int = 0):
    """A made-up nonlinear system with heteroscedastic noise (std 0.04 where obs[0] > 0, 0.01
    elsewhere): obs' = obs + 0.1 tanh(A obs + B act) + noise, reward = smooth fn + noise."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(OBS, OBS))
    B = rng.normal(size=(OBS, ACT))

    def truth(o, a):
        delta = 0.1 * np.tanh(o @ A.T + a @ B.T)
        rew = 0.5 * np.tanh(o[:, 0] + 0.5 * a[:, 0]) + 0.1 * o[:, 1]
        return np.concatenate([delta, rew[:, None]], axis=1)

    def noise_std(o):
        return np.where(o[:, :1] > 0, 0.04, 0.01)

    def sample(n, rng=rng):
        o = rng.normal(size=(n, OBS))
        a = rng.uniform(-1, 1, size=(n, ACT))
        y = truth(o, a) + noise_std(o) * rng.normal(size=(n, OBS + 1))
        f32 = np.float32
        return o.astype(f32), a.astype(f32), y[:, -1].astype(f32), (o + y[:, :OBS]).astype(f32)

    return truth, noise_std, sample


def _inputs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fresh float32 obs [n, OBS] ~ N(0, 1) and act [n, ACT] ~ U(-1, 1)."""
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(n, OBS)).astype(np.float32),
        rng.uniform(-1, 1, size=(n, ACT)).astype(np.float32),
    )


def _data(n, seed=1):
    o, a = _inputs(n, seed)
    r = (np.sin(o[:, 0]) + a[:, 0]).astype(np.float32)
    no = (o + 0.1 * np.tanh(o + a[:, :1])).astype(np.float32)
    return o, a, r, no


def _small(**kw):
    args = dict(ensemble_size=4, num_elites=3, hidden_size=32, num_layers=2, seed=3)
    args.update(kw)
    return EnsembleDynamics(OBS, ACT, **args)


def _randomize(model: EnsembleDynamics, seed: int = 7) -> EnsembleDynamics:
    """Fresh non-trivial parameters: random biases, normalizer and logvar bounds."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.mul_(1.5)
            layer.bias.copy_(0.3 * torch.randn(layer.bias.shape, generator=g))
        model.max_logvar.copy_(0.5 + 0.2 * torch.randn(model.out_dim, generator=g))
        model.min_logvar.copy_(-6.0 + 0.5 * torch.randn(model.out_dim, generator=g))
        model.input_mean.copy_(0.5 * torch.randn(model.in_dim, generator=g))
        model.input_std.copy_(0.5 + torch.rand(model.in_dim, generator=g))
    return model


def _reference_forward(path, obs, act):
    """float64 numpy forward written from the SAVED file: (mean, var) [E, B, obs_dim + 1]."""
    t, meta = load_safetensors(path)
    od = int(meta["obs_dim"])
    x = (np.concatenate([obs, act], 1).astype(np.float64) - t["input_mean"]) / t["input_std"]
    h = np.broadcast_to(x, (t["layers.0.weight"].shape[0], *x.shape))
    n = int(meta["num_layers"]) + 1
    for i in range(n):
        h = h @ t[f"layers.{i}.weight"].astype(np.float64) + t[f"layers.{i}.bias"][:, None, :]
        if i < n - 1:
            h = h / (1.0 + np.exp(-h))
    mean, raw = h[..., : od + 1], h[..., od + 1 :]
    mx, mn = t["max_logvar"].astype(np.float64), t["min_logvar"].astype(np.float64)
    lv = mx - np.logaddexp(0.0, mx - raw)
    lv = mn + np.logaddexp(0.0, lv - mn)
    return mean, np.exp(lv)


# ---------------------------------------------------------------------------- training


def test_fit_identifies_a_nonlinear_system_and_its_noise_levels():
    truth, noise_std, sample = _system()
    model = EnsembleDynamics(OBS, ACT, ensemble_size=4, num_elites=3, hidden_size=64, num_layers=3)
    st = model.fit(*sample(5000), max_epochs=80, seed=0)
    assert st["epochs"] >= 5 and st["elites"] == model.elites

    o, a = _inputs(4000, seed=99)
    mean, var = model.predict(o, a)
    target = truth(o.astype(np.float64), a.astype(np.float64))
    mu = mean[model.elites].mean(0)
    r2 = 1 - ((mu - target) ** 2).sum(0) / ((target - target.mean(0)) ** 2).sum(0)
    assert (r2 > 0.95).all(), r2

    # learned std per region (away from the noise boundary) vs the true noise std
    sd = np.sqrt(var[model.elites]).mean(0)
    hi, lo = o[:, 0] > 0.5, o[:, 0] < -0.5
    true_hi = noise_std(o[hi])[0, 0]
    true_lo = noise_std(o[lo])[0, 0]
    learned_hi, learned_lo = sd[hi].mean(), sd[lo].mean()
    print(f"noise std: true {true_hi} / {true_lo}, learned {learned_hi:.4f} / {learned_lo:.4f}")
    assert 1 / 1.6 < learned_hi / true_hi < 1.6
    assert 1 / 1.6 < learned_lo / true_lo < 1.6
    assert learned_hi / learned_lo > 2.5


def test_early_stopping_stops_and_restores_each_members_best_snapshot(monkeypatch):
    model = _small()
    E = model.ensemble_size
    # Scripted holdout MSE per evaluation (row 0 = before training, reported only). Every
    # member's best starts at +inf, so all improve at epoch 1; then member 0 improves at
    # epoch 3, member 1 at 2, member 2 never again by > 1 %, member 3 at 4.
    script = np.array(
        [
            [1.00, 1.00, 1.00, 1.00],
            [0.50, 1.20, 0.995, 0.80],
            [0.60, 0.70, 0.999, 0.90],
            [0.40, 0.71, 0.992, 0.85],
            [0.45, 0.90, 1.000, 0.50],
        ]
        + [[0.9, 0.9, 0.9995, 0.9]] * 10
    )
    states = []
    calls = {"n": 0}

    def scripted(x, y):
        states.append([layer.weight.detach().clone() for layer in model.layers])
        k = calls["n"]
        calls["n"] += 1
        return torch.tensor(script[min(k, len(script) - 1)], dtype=torch.float64)

    monkeypatch.setattr(model, "_member_mse", scripted)
    st = model.fit(*_data(300), patience=3, max_epochs=50)
    # last improvement at epoch 4, then stop once MORE than 3 epochs passed without one
    assert st["epochs"] == 8
    assert st["initial_holdout_mse"] == [1.0] * E
    best_epoch = [3, 2, 1, 4]  # member 2 keeps epoch 1: the pre-fit weights never count
    for m in range(E):
        for i, layer in enumerate(model.layers):
            torch.testing.assert_close(layer.weight[m], states[best_epoch[m]][i][m], rtol=0, atol=0)
    # the weights did move during training, so the restore is not vacuous
    assert not torch.equal(states[7][0][0], states[3][0][0])


def test_early_stopping_always_keeps_epoch_one_even_without_improvement(monkeypatch):
    # The original MBPO resets every member's best at each training call: a fit is never a
    # no-op, even when the pre-fit weights would score better on the re-drawn holdout.
    model = _small()
    before = [layer.weight.detach().clone() for layer in model.layers]
    states = []
    real = model._member_mse

    def recording(x, y):
        states.append([layer.weight.detach().clone() for layer in model.layers])
        return real(x, y)

    monkeypatch.setattr(model, "_member_mse", recording)
    st = model.fit(*_data(400), patience=2, improvement_threshold=1e6)
    assert st["epochs"] == 4  # epoch 1 kept, then 3 (> patience) epochs without a gain
    after = [layer.weight.detach() for layer in model.layers]
    for b, a, e1 in zip(before, after, states[1], strict=True):
        assert not torch.equal(a, b)
        assert torch.equal(a, e1)


def test_elites_are_the_lowest_holdout_members_of_the_restored_weights():
    o, a, r, no = _data(1000)
    model = _small(ensemble_size=5, num_elites=2)
    st = model.fit(o, a, r, no, max_epochs=3, seed=11)
    hold = torch.randperm(1000, generator=torch.Generator().manual_seed(11))[:200].numpy()
    mean, _ = model.predict(o[hold], a[hold])
    y = np.concatenate([no[hold] - o[hold], r[hold, None]], 1)
    mse = ((mean - y) ** 2).mean(axis=(1, 2))
    np.testing.assert_allclose(st["holdout_mse"], mse, rtol=1e-4)
    assert st["elites"] == list(np.argsort(mse)[:2]) == model.elites
    assert st["holdout_mse_elite_mean"] == pytest.approx(np.sort(mse)[:2].mean(), rel=1e-4)


def test_warm_start_continues_from_the_previous_weights():
    data = _data(1500)
    model = _small()
    first = model.fit(*data, max_epochs=25, seed=4)
    second = model.fit(*data, max_epochs=2, seed=4)  # same split -> same normalizer
    np.testing.assert_allclose(second["initial_holdout_mse"], first["holdout_mse"], rtol=1e-5)
    fresh = _small().fit(*data, max_epochs=1, seed=4)
    assert np.mean(fresh["initial_holdout_mse"]) > 2 * np.mean(second["initial_holdout_mse"])


def test_normalizer_is_refit_on_the_training_split_at_every_fit():
    o, a, r, no = _data(1000)
    a[:, 1] = 0.25  # a constant column: std < 1e-12 -> 1
    model = _small()
    model.fit(o, a, r, no, max_epochs=1, seed=2)
    train = torch.randperm(1000, generator=torch.Generator().manual_seed(2))[200:].numpy()
    x = np.concatenate([o, a], 1)[train].astype(np.float64)
    std = x.std(0)
    std[std < 1e-12] = 1.0
    np.testing.assert_allclose(model.input_mean.numpy(), x.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.input_std.numpy(), std, rtol=1e-5)
    assert model.input_std[OBS + 1] == 1.0
    model.fit(o + 5.0, a, r, no + 5.0, max_epochs=1, seed=2)
    np.testing.assert_allclose(model.input_mean.numpy()[:OBS], x.mean(0)[:OBS] + 5.0, rtol=1e-5)


def test_weight_decay_per_layer_on_weights_only():
    assert layer_weight_decays(5) == [2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4]
    assert layer_weight_decays(3) == [2.5e-5, 5e-5, 1e-4]
    assert layer_weight_decays(2) == [2.5e-5, 1e-4]
    assert layer_weight_decays(7) == [2.5e-5, 5e-5] + [7.5e-5] * 4 + [1e-4]
    model = EnsembleDynamics(OBS, ACT, hidden_size=16)  # default depth: 5 linear layers
    assert model.weight_decays == [2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4]
    model.weight_decay_loss().backward()
    for wd, layer in zip(model.weight_decays, model.layers, strict=True):
        torch.testing.assert_close(layer.weight.grad, wd * layer.weight.detach())
        assert layer.bias.grad is None
    assert model.max_logvar.grad is None and model.min_logvar.grad is None
    expected = sum(
        0.5 * wd * float((layer.weight.detach().double() ** 2).sum())
        for wd, layer in zip(model.weight_decays, model.layers, strict=True)
    )
    assert float(model.weight_decay_loss().detach()) == pytest.approx(expected, rel=1e-5)


def test_training_applies_weight_decay_through_adam_exactly_as_the_l2_loss_term():
    decays = [0.05, 0.1, 0.2]  # large, so a missing or misplaced term shows in 3 steps
    model = _randomize(_small(weight_decays=decays))
    groups = model._make_optimizer().param_groups
    for wd, layer, group in zip(model.weight_decays, model.layers, groups, strict=False):
        assert group["params"] == [layer.weight] and group["weight_decay"] == wd
    no_decay = groups[-1]
    assert no_decay["weight_decay"] == 0.0
    assert {id(p) for p in no_decay["params"]} == {
        id(p) for p in [*(layer.bias for layer in model.layers), model.max_logvar, model.min_logvar]
    }
    # one step of the training optimizer on the data loss == plain Adam on loss + L2 term
    twin = _small(weight_decays=decays)
    twin.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(model.ensemble_size, 64, model.in_dim, generator=g)
    y = torch.randn(model.ensemble_size, 64, model.out_dim, generator=g)
    opt = model._make_optimizer()
    for _ in range(3):
        opt.zero_grad()
        model._data_loss(x, y).backward()
        opt.step()
    plain = torch.optim.Adam(twin.parameters(), lr=twin.lr)
    for _ in range(3):
        plain.zero_grad()
        (twin._data_loss(x, y) + twin.weight_decay_loss()).backward()
        plain.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_loss_matches_a_float64_hand_computation():
    model = _randomize(_small())
    o, a, r, no = _data(64, seed=5)
    got = model.compute_loss(o, a, r, no)
    x = (
        np.concatenate([o, a], 1).astype(np.float64) - model.input_mean.double().numpy()
    ) / model.input_std.double().numpy()
    y = np.concatenate([no - o, r[:, None]], 1).astype(np.float64)
    nll = []
    for m in range(model.ensemble_size):
        h = x
        for i, layer in enumerate(model.layers):
            w, b = layer.weight[m].detach().double(), layer.bias[m].detach().double()
            h = h @ w.numpy() + b.numpy()
            if i < len(model.layers) - 1:
                h = h * (1 / (1 + np.exp(-h)))
        mu, raw = h[:, : OBS + 1], h[:, OBS + 1 :]
        mx = model.max_logvar.detach().double().numpy()
        mn = model.min_logvar.detach().double().numpy()
        lv = mx - np.log1p(np.exp(mx - raw))
        lv = mn + np.log1p(np.exp(lv - mn))
        nll.append(np.mean((mu - y) ** 2 * np.exp(-lv)) + np.mean(lv))
    bound = 0.01 * (model.max_logvar.double().sum() - model.min_logvar.double().sum()).item()
    decay = sum(
        0.5 * wd * (layer.weight.double() ** 2).sum().item()
        for wd, layer in zip(model.weight_decays, model.layers, strict=True)
    )
    np.testing.assert_allclose(got["nll"], nll, rtol=1e-4)
    assert got["logvar_bound"] == pytest.approx(bound, rel=1e-6)
    assert got["total"] == pytest.approx(sum(nll) + bound + decay, rel=1e-4)


def test_each_member_trains_on_its_own_bootstrap_set(monkeypatch):
    model = _small()
    seen = []
    original = model._bootstrap_indices

    def capture(n_train, gen):
        idx = original(n_train, gen)
        seen.append(idx.clone())
        return idx

    monkeypatch.setattr(model, "_bootstrap_indices", capture)
    model.fit(*_data(2000), max_epochs=1)
    (idx,) = seen
    assert idx.shape == (model.ensemble_size, 1600)
    assert int(idx.min()) >= 0 and int(idx.max()) < 1600
    for i in range(model.ensemble_size):
        unique = idx[i].unique().numel() / 1600
        assert 0.58 < unique < 0.68  # with replacement: ~1 - 1/e distinct rows
        for j in range(i):
            assert not torch.equal(idx[i], idx[j])


def test_fit_limits_holdout_cap_and_progress_bar(capsys):
    model = _small()
    st = model.fit(*_data(600), max_epochs=2, progress=True)
    assert st["epochs"] == 2 and st["seconds"] > 0 and np.isfinite(st["train_loss"])
    assert "ensemble fit" in capsys.readouterr().err
    st = model.fit(*_data(600), max_seconds=1e-7)  # checked after each epoch: stops after one
    assert st["epochs"] == 1
    # holdout cap: 20 % of 1000 = 200 rows, capped at 50 -> the normalizer sees 950 rows
    o, a, r, no = _data(1000)
    model.fit(o, a, r, no, max_holdout=50, max_epochs=1, seed=8)
    train = torch.randperm(1000, generator=torch.Generator().manual_seed(8))[50:].numpy()
    np.testing.assert_allclose(
        model.input_mean.numpy()[:OBS], o[train].mean(0), rtol=1e-4, atol=1e-6
    )


@pytest.mark.parametrize("trainer", TRAINERS)
def test_fit_syncs_with_the_host_once_per_epoch_not_per_batch(monkeypatch, trainer):
    syncs = {"n": 0}

    def count(epochs: int) -> int:
        model = _small(trainer=trainer)
        for name in ("item", "__float__", "__bool__", "__int__", "tolist", "numpy"):
            original = getattr(torch.Tensor, name)

            def counted(self, *args, _original=original, **kwargs):
                syncs["n"] += 1
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)
        syncs["n"] = 0
        # 63 batches per epoch
        st = model.fit(*_data(10000), batch_size=128, max_epochs=epochs, patience=10)
        monkeypatch.undo()
        assert st["epochs"] == epochs and st["trainer"] == trainer
        return syncs["n"]

    two, four = count(2), count(4)
    assert (four - two) / 2 <= 4, (two, four)  # a handful per epoch, none per batch
    if trainer == "torch":
        assert two <= 12, two
    else:  # plus the zero-copy views the native trainer binds once per fit
        assert two <= 12 + 40, two


def test_fit_is_reproducible_and_works_without_a_holdout():
    data = _data(700)
    a = _small().fit(*data, max_epochs=2)
    b = _small().fit(*data, max_epochs=2)
    assert a["holdout_mse"] == b["holdout_mse"] and a["elites"] == b["elites"]
    c = _small().fit(*data, max_epochs=2, seed=123)
    assert c["holdout_mse"] != a["holdout_mse"]
    # no holdout rows: the training split stands in for early stopping and elite selection
    model = _small()
    st = model.fit(*data, holdout_ratio=0.0, max_epochs=2)
    assert st["epochs"] == 2 and np.isfinite(st["holdout_mse"]).all()
    assert st["elites"] == list(np.argsort(st["holdout_mse"])[:3])


def test_training_state_resumes_exactly():
    data = _data(800)
    a = _small()
    a.fit(*data, max_epochs=2)
    b = _small(seed=9)
    b.load_state_dict(a.state_dict())
    b.load_training_state(a.training_state())
    sa = a.fit(*data, max_epochs=2)
    sb = b.fit(*data, max_epochs=2)
    assert sa["holdout_mse"] == sb["holdout_mse"]
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)



def _model_and_opt_tensors(model):
    out = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = model._optimizer
    for i, st in enumerate(opt.state.values() if opt is not None else ()):
        for k, v in st.items():
            out[f"opt.{i}.{k}"] = v.detach().clone()
    out["generator"] = model._generator.get_state()
    return out


@pytest.mark.parametrize("key", ["input_mean", "layers.1.weight", "layers.2.bias", "min_logvar"])
def test_load_state_dict_checks_every_shape_before_copying(key):
    """torch's load_state_dict copies the tensors before a wrong one; this one raises first,
    naming the tensor with the expected and the actual shape, and changes nothing."""
    data = _data(300)
    a, b = _small(), _small(seed=9)
    a.fit(*data, max_epochs=1)
    b.fit(*data, max_epochs=1)
    state = a.state_dict()
    good = tuple(state[key].shape)
    state[key] = torch.zeros(*good[:-1], good[-1] + 1)
    before = _model_and_opt_tensors(b)
    with pytest.raises(ValueError, match=rf"\[{key!r}\]: expected shape "
                       rf"{re.escape(str(good))}.*got shape"):
        b.load_state_dict(state)
    state = a.state_dict()
    state["elite_index"] = torch.tensor([0, 0, 1])
    with pytest.raises(ValueError, match="elite_index"):
        b.load_state_dict(state)
    after = _model_and_opt_tensors(b)
    for k, v in before.items():
        assert torch.equal(v, after[k]), k


@pytest.mark.parametrize("edit,match", [
    (lambda st: st["optimizer"]["state"][2].update(exp_avg=torch.zeros(3)),
     r"optimizer state\[2\]\['exp_avg'\]: expected shape"),
    (lambda st: st["optimizer"]["state"][0].pop("exp_avg_sq"), r"optimizer state\[0\]"),
    (lambda st: st["optimizer"]["param_groups"].pop(), "parameter groups"),
    (lambda st: st["optimizer"]["param_groups"][0].update(lr="fast"), "lr"),
    (lambda st: st.update(generator=torch.zeros(3, dtype=torch.uint8)), "generator"),
    (lambda st: st.update(extra=1), "expected"),
])
def test_load_training_state_checks_before_changing_anything(edit, match):
    data = _data(300)
    a, b = _small(), _small(seed=9)
    a.fit(*data, max_epochs=1)
    b.fit(*data, max_epochs=1)
    state = a.training_state()
    edit(state)
    before = _model_and_opt_tensors(b)
    with pytest.raises(ValueError, match=match):
        b.load_training_state(state, source="model_train.pt")
    after = _model_and_opt_tensors(b)
    for k, v in before.items():
        assert torch.equal(v, after[k]), k

# ---------------------------------------------------------------------------- inference


@pytest.fixture
def saved(tmp_path):
    """A briefly trained, then randomized model saved to disk: (model, path)."""
    model = _small(ensemble_size=5, num_elites=3)
    model.fit(*_data(600), max_epochs=2)
    _randomize(model)
    model.set_elites([4, 0, 2])
    path = tmp_path / "ens.safetensors"
    model.save(path)
    return model, path


def test_predict_matches_a_float64_forward_of_the_saved_file(saved, backend):
    model, path = saved
    o, a = _inputs(300, seed=3)
    mean, var = model.predict(o, a)
    assert mean.dtype == var.dtype == np.float32 and mean.shape == (5, 300, OBS + 1)
    ref_mean, ref_var = _reference_forward(path, o, a)
    assert np.abs(mean - ref_mean).max() / np.abs(ref_mean).max() < 1e-5
    assert np.abs(var - ref_var).max() / np.abs(ref_var).max() < 1e-5
    # the torch forward used in training agrees with the kernels
    tm, tv = model.predict_torch(torch.from_numpy(o), torch.from_numpy(a))
    np.testing.assert_allclose(tm.detach().numpy(), ref_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(tv.detach().numpy(), ref_var, rtol=1e-4, atol=1e-9)


def test_deterministic_step_is_obs_plus_the_members_mean(saved, backend):
    model, _ = saved
    o, a = _inputs(200, seed=4)
    mean, _ = model.predict(o, a)
    members = np.random.default_rng(4).integers(0, model.ensemble_size, size=200)
    next_obs, rew = model.step(o, a, deterministic=True, members=members)
    rows = np.arange(200)
    np.testing.assert_allclose(next_obs, o + mean[members, rows, :OBS], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rew, mean[members, rows, OBS], rtol=1e-6, atol=1e-6)
    for m in range(model.ensemble_size):  # a scalar member applies to every row
        next_obs, rew = model.step(o, a, deterministic=True, members=m)
        np.testing.assert_allclose(next_obs, o + mean[m, :, :OBS], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(rew, mean[m, :, OBS], rtol=1e-6, atol=1e-6)
    # the torch path (used on non-CPU devices) gives the same means
    t_next, t_rew, _ = model._step_torch(o, a, 0, True, members)
    np.testing.assert_allclose(t_next, o + mean[members, rows, :OBS], rtol=1e-5, atol=1e-5)


def test_stochastic_step_z_scores_are_standard_normal(saved, backend):
    model, _ = saved
    n = 20000
    o, a = _inputs(n, seed=5)
    mean, var = model.predict(o, a)
    next_obs, rew, used = model.step(o, a, seed=123, return_members=True)
    rows = np.arange(n)
    sample = np.concatenate([next_obs - o, rew[:, None]], 1).astype(np.float64)
    z = ((sample - mean[used, rows]) / np.sqrt(var[used, rows].astype(np.float64))).ravel()
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    assert stats.kstest(z, "norm").pvalue > 1e-3
    again, _ = model.step(o, a, seed=123)
    other, _ = model.step(o, a, seed=124)
    assert np.array_equal(again, next_obs) and not np.array_equal(other, next_obs)
    # the torch path samples the same distribution
    t_next, t_rew, t_used = model._step_torch(o, a, 7, False, None)
    tz = (np.concatenate([t_next - o, t_rew[:, None]], 1) - mean[t_used, rows]) / np.sqrt(
        var[t_used, rows]
    )
    assert abs(tz.mean()) < 0.02 and abs(tz.std() - 1) < 0.02


def test_member_choices_cover_exactly_the_elites_uniformly(saved, backend):
    model, _ = saved
    n = 30000
    o, a = _inputs(n, seed=6)
    _, _, used = model.step(o, a, seed=9, return_members=True)
    assert set(used.tolist()) == set(model.elites) == {0, 2, 4}
    counts = np.array([(used == e).sum() for e in model.elites])
    assert stats.chisquare(counts).pvalue > 1e-3


def test_single_row_and_disagreement(saved):
    model, _ = saved
    o, a, _, _ = _data(8)
    mean, var = model.predict(o, a)
    m1, v1 = model.predict(o[0], a[0])
    np.testing.assert_allclose(m1, mean[:, 0], rtol=1e-6, atol=1e-7)
    nxt, rew = model.step(o[0], a[0], deterministic=True, members=2)
    np.testing.assert_allclose(nxt, o[0] + mean[2, 0, :OBS], rtol=1e-6, atol=1e-6)
    d = model.disagreement(o, a)
    ref = mean[model.elites].std(axis=0).mean(axis=1)
    np.testing.assert_allclose(d, ref, rtol=1e-4, atol=1e-6)


def test_inference_views_follow_training_without_copies():
    model = _small()
    inf = model.inference
    assert np.shares_memory(inf.weights[0], model.layers[0].weight.detach().numpy())
    o, a, r, no = _data(500)
    model.fit(o, a, r, no, max_epochs=1)
    with torch.no_grad():
        m, _ = model.predict_torch(torch.from_numpy(o[:4]), torch.from_numpy(a[:4]))
    np.testing.assert_allclose(model.predict(o[:4], a[:4])[0], m.numpy(), rtol=1e-4, atol=1e-5)
    assert list(model.inference.elites) == model.elites
    other = _small(seed=5)
    other.set_elites([3, 1, 2])
    _ = model.inference
    model.load_state_dict(other.state_dict())
    assert list(model.inference.elites) == [3, 1, 2]
    np.testing.assert_array_equal(model.predict(o[:4], a[:4])[0], other.predict(o[:4], a[:4])[0])


def test_bf16_inference_is_repacked_after_fit(backend):
    model = _small()
    data = _data(1000)
    model.fit(*data, max_epochs=2)
    o, a = data[0][:256], data[1][:256]
    model.use_bf16(True)
    mean16, var16 = model.predict(o, a)
    model.use_bf16(False)
    mean32, var32 = model.predict(o, a)
    assert not np.array_equal(mean16, mean32)
    assert np.abs(mean16 - mean32).max() < 0.05 * np.sqrt(var32).mean()
    model.use_bf16(True)
    model.fit(*data, max_epochs=3)  # weights change; the snapshot must follow
    mean16, _ = model.predict(o, a)
    model.use_bf16(False)
    mean32, var32 = model.predict(o, a)
    assert np.abs(mean16 - mean32).max() < 0.05 * np.sqrt(var32).mean()


# ---------------------------------------------------------------------------- save / load


def test_save_load_round_trip(saved, tmp_path):
    model, path = saved
    loaded = EnsembleDynamics.load(path)
    assert isinstance(loaded, mf.EnsembleDynamics)
    assert loaded.elites == model.elites == [4, 0, 2]
    for (name, x), y in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    o, a, _, _ = _data(50, seed=8)
    for got, want in zip(loaded.predict(o, a), model.predict(o, a), strict=True):
        assert np.array_equal(got, want)
    for got, want in zip(loaded.step(o, a, seed=3), model.step(o, a, seed=3), strict=True):
        assert np.array_equal(got, want)
    _, meta = load_safetensors(path)
    assert meta["obs_dim"] == str(OBS) and meta["act_dim"] == str(ACT)
    assert meta["activation"] == "silu" and meta["num_layers"] == "2"
    # a loaded model trains on (warm start)
    loaded.fit(*_data(300), max_epochs=1)


def _rewrite(src, dst, edit_tensors=None, edit_meta=None):
    tensors, meta = load_safetensors(src)
    if edit_tensors:
        edit_tensors(tensors)
    if edit_meta:
        edit_meta(meta)
    save_safetensors(dst, tensors, meta)
    return dst


@pytest.mark.parametrize(
    ("edit_tensors", "edit_meta", "message"),
    [
        (
            lambda t: t.__setitem__("layers.1.weight", t["layers.1.weight"][:, :-1]),
            None,
            "'layers.1.weight' expected shape",
        ),
        (lambda t: t.pop("layers.2.bias"), None, "missing tensor 'layers.2.bias'"),
        (lambda t: t.pop("max_logvar"), None, "missing tensor 'max_logvar'"),
        (lambda t: t.__setitem__("elites", t["elites"].astype(np.int32)), None, "'elites'"),
        (lambda t: t.__setitem__("input_std", np.zeros_like(t["input_std"])), None, "input_std"),
        (lambda t: t["layers.0.bias"].__setitem__((0, 0), np.nan), None, "non-finite"),
        (lambda t: t.__setitem__("elites", np.array([0, 0, 1])), None, "distinct"),
        (lambda t: t.__setitem__("elites", np.array([0, 1, 9])), None, "distinct"),
        (lambda t: t.__setitem__("extra", np.zeros(3, np.float32)), None, "unexpected"),
        (None, lambda m: m.__setitem__("hidden_size", "64"), "expected shape"),
        (None, lambda m: m.__setitem__("obs_dim", "three"), "not an int"),
        (None, lambda m: m.pop("obs_dim"), "missing 'obs_dim'"),
        (None, lambda m: m.__setitem__("activation", "relu"), "activation"),
    ],
)
def test_load_rejects_bad_files(saved, tmp_path, edit_tensors, edit_meta, message):
    _, path = saved
    bad = _rewrite(path, tmp_path / "bad.safetensors", edit_tensors, edit_meta)
    with pytest.raises(ValueError, match=message):
        EnsembleDynamics.load(bad)


def test_load_infers_sizes_missing_from_the_metadata(saved, tmp_path):
    model, path = saved

    def strip(meta):
        for key in ("ensemble_size", "num_elites", "hidden_size", "num_layers"):
            meta.pop(key)

    loaded = EnsembleDynamics.load(_rewrite(path, tmp_path / "min.safetensors", None, strip))
    o, a, _, _ = _data(20)
    assert np.array_equal(loaded.predict(o, a)[0], model.predict(o, a)[0])


def test_load_rejects_truncated_and_corrupted_files(saved, tmp_path):
    _, path = saved
    blob = path.read_bytes()
    for cut in (4, 100, len(blob) // 2, len(blob) - 1):
        p = tmp_path / f"cut{cut}.safetensors"
        p.write_bytes(blob[:cut])
        with pytest.raises(ValueError):
            EnsembleDynamics.load(p)
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    header["layers.0.weight"]["shape"][1] += 1  # offsets no longer match the shape
    raw = json.dumps(header).encode()
    p = tmp_path / "hdr.safetensors"
    p.write_bytes(struct.pack("<Q", len(raw)) + raw + blob[8 + n :])
    with pytest.raises(ValueError):
        EnsembleDynamics.load(p)
    with pytest.raises(FileNotFoundError):
        EnsembleDynamics.load(tmp_path / "nope.safetensors")


# ---------------------------------------------------------------------------- bad input


def test_bad_inference_input_raises_clear_errors(saved, backend):
    model, _ = saved
    o, a, _, _ = _data(10)
    cases = [
        ((o[:, :2], a), {}, ValueError, "obs: expected shape"),
        ((o, a[:5]), {}, ValueError, "act: expected shape"),
        ((o, a[:, :1]), {}, ValueError, "act: expected shape"),
        ((o.astype(np.int64), a), {}, TypeError, "obs: expected a float32"),
        ((o, a.astype(bool)), {}, TypeError, "act: expected a float32"),
        ((o[None], a), {}, ValueError, "obs: expected shape"),
    ]
    for fn in (model.predict, model.step, model.disagreement):
        for args, kw, exc, msg in cases:
            with pytest.raises(exc, match=msg):
                fn(*args, **kw)
    for name, bad_value in (("obs", np.nan), ("obs", np.inf), ("act", -np.inf)):
        oo, aa = o.copy(), a.copy()
        (oo if name == "obs" else aa)[3, 1] = bad_value
        for fn in (model.predict, model.step, model.disagreement):
            with pytest.raises(ValueError, match=f"{name}: contains a non-finite"):
                fn(oo, aa)
    with pytest.raises(ValueError, match="members: entry 2 = 5 is out of range"):
        model.step(o, a, members=[0, 1, 5] + [0] * 7)
    with pytest.raises(ValueError, match="members: entry 0 = -1"):
        model.step(o, a, members=-1)
    with pytest.raises(ValueError, match="members: expected shape"):
        model.step(o, a, members=[0, 1])
    with pytest.raises(TypeError, match="members: expected integer"):
        model.step(o, a, members=np.zeros(10))
    with pytest.raises(ValueError, match="seed"):
        model.step(o, a, seed=-1)
    with pytest.raises(ValueError, match="elites"):
        model.set_elites([0, 0, 1])


def test_bad_fit_input_raises_and_changes_nothing():
    model = _small()
    o, a, r, no = _data(200)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad_calls = [
        ((o, a, r[:-1], no), {}, ValueError, "rew: expected shape"),
        ((o, a, r, no[:, :2]), {}, ValueError, "next_obs: expected shape"),
        ((o, a, r.astype(np.int32), no), {}, TypeError, "rew: expected a float32"),
        ((o, a, np.where(np.arange(200) == 7, np.nan, r), no), {}, ValueError, "rew: contains"),
        ((o, np.where(a > 0.9, np.inf, a), r, no), {}, ValueError, "act: contains"),
        ((o, a, r, no), {"holdout_ratio": 1.0}, ValueError, "holdout_ratio"),
        ((o, a, r, no), {"batch_size": 0}, ValueError, "batch_size"),
        ((o, a, r, no), {"max_epochs": 0}, ValueError, "max_epochs"),
        ((o, a, r, no), {"max_seconds": -1.0}, ValueError, "max_seconds"),
        ((o[:0], a[:0], r[:0], no[:0]), {}, ValueError, "training row"),
    ]
    for args, kw, exc, msg in bad_calls:
        with pytest.raises(exc, match=msg):
            model.fit(*args, **kw)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model._optimizer is None


def test_moving_or_casting_the_module_is_refused():
    model = _small()
    with pytest.raises(RuntimeError, match="fixed at construction"):
        model.double()
    with pytest.raises(RuntimeError, match="fixed at construction"):
        model.to("meta")
    model.to("cpu")
    model.float()  # no-ops are fine
    assert model.layers[0].weight.dtype == torch.float32


def test_constructor_validates_sizes():
    with pytest.raises(ValueError, match="num_elites"):
        EnsembleDynamics(3, 2, ensemble_size=3, num_elites=4)
    with pytest.raises(ValueError, match="obs_dim"):
        EnsembleDynamics(0, 2)
    with pytest.raises(TypeError, match="hidden_size"):
        EnsembleDynamics(3, 2, hidden_size=2.5)
    with pytest.raises(ValueError, match="weight_decays"):
        EnsembleDynamics(3, 2, num_layers=2, weight_decays=[1e-4])


@pytest.mark.gpu
def test_cuda_model_trains_and_matches_the_cpu_kernels_after_load(tmp_path):
    model = _small(device="cuda")
    st = model.fit(*_data(1000), max_epochs=3)
    assert model.layers[0].weight.is_cuda and st["epochs"] == 3
    o, a, _, _ = _data(64, seed=2)
    mean, var = model.predict(o, a)  # torch path
    next_obs, rew = model.step(o, a, deterministic=True, members=1)
    np.testing.assert_allclose(next_obs, o + mean[1, :, :OBS], rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="CPU"):
        _ = model.inference
    model.save(tmp_path / "gpu.safetensors")
    cpu = EnsembleDynamics.load(tmp_path / "gpu.safetensors")
    cpu_mean, cpu_var = cpu.predict(o, a)
    np.testing.assert_allclose(cpu_mean, mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cpu_var, var, rtol=1e-4, atol=1e-8)
