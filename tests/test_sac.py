"""Tests of mbpo_fast.SAC: the math against float64 / hand-computed references, the
batched critic against independent critics, the CleanRL-style reference, round trips,
validation, and (slow) learning Pendulum-v1."""

from __future__ import annotations

import copy
import importlib.util
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

import mbpo_fast as mf
from mbpo_fast.io import load_safetensors
from mbpo_fast.sac import LOG_STD_MAX, LOG_STD_MIN, SAC, squashed_gaussian
from mbpo_fast.sac_trainer import TorchSacTrainer
from mbpo_fast.types import Transition

ROOT = Path(__file__).resolve().parents[1]
OBS, ACT = 5, 3
LOW = np.array([-1.0, 0.0, -3.0])
HIGH = np.array([1.0, 5.0, 2.0])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _load_benchmark_module(name: str):
    path = ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _batch(rng, b=32, obs_dim=OBS, act_dim=ACT, lead=()):
    return Transition(
        rng.standard_normal((*lead, b, obs_dim), dtype=np.float32),
        rng.uniform(-1, 1, (*lead, b, act_dim)).astype(np.float32),
        rng.standard_normal((*lead, b), dtype=np.float32),
        rng.standard_normal((*lead, b, obs_dim), dtype=np.float32),
        rng.random((*lead, b)) < 0.2,
    )


def _agent(**kw):
    args = dict(hidden_size=32, num_layers=2, seed=3)
    args.update(kw)
    return SAC(OBS, ACT, LOW, HIGH, **args)


def _all_tensors(agent):
    out = {}
    for name, module in (("actor", agent.actor), ("critic", agent.critic),
                         ("critic_target", agent.critic_target)):
        for k, v in module.state_dict().items():
            out[f"{name}.{k}"] = v
    out["log_alpha"] = agent.log_alpha.detach()
    return out


def _pairs(a, b):
    """(name, tensor of a), tensor of b for every parameter and log_alpha."""
    return zip(_all_tensors(a).items(), _all_tensors(b).values(), strict=True)


def _set_constant_output(mlp, values):
    """Makes member j of `mlp` output the constant vector values[j] (last layer W=0, b=v)."""
    last = mlp.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.as_tensor(values, dtype=torch.float32))


# ---------------------------------------------------------------- log-probability
def _reference_logp(mean, log_std, eps, scale):
    """float64: log N(u; mean, std) - log|d(tanh(u) * scale + bias)/du|, with
    log(1 - tanh(u)^2) = -2 log cosh(u) (exact in float64 for |u| < 700)."""
    std = np.exp(log_std)
    u = mean + std * eps
    gauss = stats.norm.logpdf(u, loc=mean, scale=std).sum(-1)
    log_det = (np.log(scale) - 2.0 * np.log(np.cosh(u))).sum(-1)
    return u, gauss - log_det


@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float64, 1e-9, 1e-9),
                                             (torch.float32, 1e-5, 2e-4)])
def test_log_prob_matches_float64_reference(rng, dtype, rtol, atol):
    b = 400
    mean = rng.normal(0, 2, (b, ACT))
    log_std = rng.uniform(-5, 1.5, (b, ACT))
    eps = rng.standard_normal((b, ACT))
    # a quarter of the rows sit at the bounds: |u| between 8 and 30, where float32 tanh == +-1
    far = rng.random(b) < 0.25
    mean[far] = rng.choice([-1, 1], (far.sum(), ACT)) * rng.uniform(8, 30, (far.sum(), ACT))
    scale = (HIGH - LOW) / 2
    bias = (HIGH + LOW) / 2
    u, ref = _reference_logp(mean, log_std, eps, scale)
    t = [torch.tensor(x, dtype=dtype) for x in (mean, log_std, eps, scale, bias)]
    action, logp = squashed_gaussian(*t)
    assert torch.isfinite(logp).all()
    np.testing.assert_allclose(logp.numpy(), ref, rtol=rtol, atol=atol)
    np.testing.assert_allclose(action.numpy(), np.tanh(u) * scale + bias, rtol=1e-6, atol=1e-6)
    # deterministic (eps=None): the density at u = mean
    _, ref_det = _reference_logp(mean, log_std, np.zeros_like(eps), scale)
    _, logp_det = squashed_gaussian(t[0], t[1], None, t[3], t[4])
    np.testing.assert_allclose(logp_det.numpy(), ref_det, rtol=rtol, atol=atol)


def test_log_prob_of_agent_samples_matches_reference():
    """The agent's policy head: clamp of log_std to [-20, 2], then the squashed Gaussian."""
    agent = _agent()
    rng = np.random.default_rng(7)
    obs = torch.tensor(rng.standard_normal((64, OBS)) * 3, dtype=torch.float32)
    # push some raw log_std outside the clamp range on purpose
    with torch.no_grad():
        agent.actor.layers[-1].bias[0, ACT:] = torch.tensor([-30.0, 0.0, 9.0])
    gen_state = agent.generator.get_state()
    with torch.no_grad():
        action, logp = agent._sample(obs)
        raw = agent.actor(obs)[0].double().numpy()
    eps = torch.randn((64, ACT), generator=torch.Generator().manual_seed(0).set_state(gen_state))
    log_std = np.clip(raw[:, ACT:], LOG_STD_MIN, LOG_STD_MAX)
    u, ref = _reference_logp(raw[:, :ACT], log_std, eps.double().numpy(), (HIGH - LOW) / 2)
    np.testing.assert_allclose(logp.numpy(), ref, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(action.numpy(), np.tanh(u) * (HIGH - LOW) / 2 + (HIGH + LOW) / 2,
                               rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- critic target and losses
def test_td_target_and_critic_loss_hand_computed():
    """act_dim 1, bounds [-2, 2] (scale 2); actor outputs mean 0.3, log_std -1 everywhere;
    target critics output 3.0 and 2.0, critics 1.5 and 0.5; alpha 0.5, gamma 0.9."""
    agent = SAC(2, 1, [-2.0], [2.0], hidden_size=8, num_layers=1, gamma=0.9, init_alpha=0.5,
                seed=11)
    _set_constant_output(agent.actor, [[0.3, -1.0]])
    _set_constant_output(agent.critic_target, [[3.0], [2.0]])
    _set_constant_output(agent.critic, [[1.5], [0.5]])
    rew = [1.0, -0.5]
    terminated = [False, True]
    eps = [0.7, -1.2]  # the noise of a' for the two rows

    # by hand: u = 0.3 + e^-1 * eps; log pi = log N(u; 0.3, e^-1) - log(2 * (1 - tanh(u)^2))
    y = []
    for r, d, e in zip(rew, terminated, eps, strict=True):
        std = math.exp(-1.0)
        u = 0.3 + std * e
        logp = (-0.5 * e * e - math.log(std) - 0.5 * math.log(2 * math.pi)
                - math.log(2.0 * (1.0 - math.tanh(u) ** 2)))
        v = min(3.0, 2.0) - 0.5 * logp
        y.append(r + 0.9 * (0.0 if d else 1.0) * v)
    assert y[1] == -0.5

    t = torch.tensor
    got = TorchSacTrainer(agent)._td_target(t(rew), t(np.ones((2, 2), np.float32)),
                                            t([1.0, 0.0]), t(0.5), t([[eps[0]], [eps[1]]]))
    np.testing.assert_allclose(got.numpy(), y, rtol=1e-6)

    # and through update(): the critic loss is sum_j mean_b (Q_j - y_b)^2 with those y
    batch = Transition(np.ones((2, 2), np.float32), np.zeros((2, 1), np.float32),
                       np.array(rew, np.float32), np.ones((2, 2), np.float32),
                       np.array(terminated))
    state = agent.generator.get_state()
    noise = torch.randn((2, 2, 1), generator=torch.Generator().set_state(state))
    y_upd = []
    for r, d, e in zip(rew, terminated, noise[0, :, 0].double().tolist(), strict=True):
        u = 0.3 + math.exp(-1.0) * e
        logp = (-0.5 * e * e + 1.0 - 0.5 * math.log(2 * math.pi)
                - math.log(2.0 * (1.0 - math.tanh(u) ** 2)))
        y_upd.append(r + 0.9 * (0.0 if d else 1.0) * (2.0 - 0.5 * logp))
    expected = sum(np.mean([(q - yy) ** 2 for yy in y_upd]) for q in (1.5, 0.5))
    out = agent.update(batch)
    assert out["critic_loss"].shape == ()
    assert float(out["critic_loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(out["mean_q"]) == pytest.approx(1.0, rel=1e-6)
    assert float(out["alpha"]) == pytest.approx(0.5, rel=1e-6)


def test_batched_critic_equals_two_independent_linear_critics():
    """float64: the 2-member batched critic == two nn.Linear MLPs with the same weights,
    for the outputs and for every weight gradient."""
    agent = _agent(hidden_size=24, num_layers=3)
    critic = copy.deepcopy(agent.critic).double()
    rng = np.random.default_rng(5)
    x = torch.tensor(rng.standard_normal((40, OBS + ACT)))
    w_out = torch.tensor(rng.standard_normal((2, 40)))
    q = critic(x).squeeze(-1)
    (q * w_out).sum().backward()
    for j in range(2):
        layers = []
        for i, bl in enumerate(critic.layers):
            lin = torch.nn.Linear(bl.in_features, bl.out_features, dtype=torch.float64)
            with torch.no_grad():
                lin.weight.copy_(bl.weight[j].T)
                lin.bias.copy_(bl.bias[j])
            layers.append(lin)
            if i != len(critic.layers) - 1:
                layers.append(torch.nn.ReLU())
        net = torch.nn.Sequential(*layers)
        qj = net(x).squeeze(-1)
        (qj * w_out[j]).sum().backward()
        np.testing.assert_allclose(q[j].detach().numpy(), qj.detach().numpy(), rtol=1e-12,
                                   atol=1e-12)
        for lin, bl in zip(net[::2], critic.layers, strict=True):
            np.testing.assert_allclose(bl.weight.grad[j].numpy(), lin.weight.grad.T.numpy(),
                                       rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(bl.bias.grad[j].numpy(), lin.bias.grad.numpy(),
                                       rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("trainer", ["torch", "native"])
def test_update_matches_cleanrl_style_reference(trainer):
    """Same math as the benchmark's reference (separate critics, plain Adam, Python Polyak),
    for both trainers (mbpo_fast/sac_trainer.py)."""
    if trainer == "native" and mf.backend() != "native":
        pytest.skip("needs the native extension")
    reference = _load_benchmark_module("sac_reference")
    agent = _agent(hidden_size=64, trainer=trainer)
    ref = reference.ReferenceSAC.from_agent(agent)
    rng = np.random.default_rng(9)
    for _ in range(5):
        b = _batch(rng, 48)
        got = agent.update(b)
        want = ref.update(*(torch.from_numpy(x) for x in b[:4]),
                          torch.from_numpy(b.terminated.astype(np.float32)))
        for key in want:
            assert float(got[key]) == pytest.approx(want[key], rel=1e-4, abs=1e-5), key
    for lin, bl in zip(ref.actor.net[::2], agent.actor.layers, strict=True):
        np.testing.assert_allclose(bl.weight[0].detach().numpy(), lin.weight.T.detach().numpy(),
                                   rtol=1e-4, atol=1e-6)
    for j, (net, tgt) in enumerate(((ref.qf1, ref.qf1_target), (ref.qf2, ref.qf2_target))):
        for lin, tlin, bl, tbl in zip(net[::2], tgt[::2], agent.critic.layers,
                                      agent.critic_target.layers, strict=True):
            np.testing.assert_allclose(bl.weight[j].detach().numpy(), lin.weight.T.detach().numpy(),
                                       rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(tbl.weight[j].numpy(), tlin.weight.T.detach().numpy(),
                                       rtol=1e-4, atol=1e-6)
    want = float(ref.log_alpha.detach())
    assert float(agent.log_alpha.detach()) == pytest.approx(want, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("log_std,direction", [(0.0, -1), (-6.0, +1)])
def test_entropy_tuning_moves_alpha_the_right_way(rng, log_std, direction):
    """Entropy above the target (-act_dim) -> alpha decreases; below -> alpha increases.
    (The policy is pinned to mean 0 and a fixed log_std: a squashed N(0, 1) has entropy
    about +3.5 here, a squashed N(0, e^-6) about -14.)"""
    agent = _agent(init_alpha=0.3)
    with torch.no_grad():
        agent.actor.layers[-1].weight[0] = 0.0
        agent.actor.layers[-1].bias[0, :ACT] = 0.0
        agent.actor.layers[-1].bias[0, ACT:] = log_std
    before = agent.alpha
    alphas = [before]
    for _ in range(3):
        out = agent.update(_batch(rng))
        alphas.append(agent.alpha)
        entropy = float(out["entropy"])
        assert (entropy - agent.target_entropy) * direction < 0
    assert all((b - a) * direction > 0 for a, b in zip(alphas, alphas[1:], strict=False))
    assert agent.target_entropy == -ACT


def test_target_critics_follow_by_polyak_averaging(rng):
    agent = _agent(tau=0.1)
    target_before = copy.deepcopy(agent.critic_target.state_dict())
    agent.update(_batch(rng))
    for k, v in agent.critic_target.state_dict().items():
        want = target_before[k] + 0.1 * (agent.critic.state_dict()[k] - target_before[k])
        torch.testing.assert_close(v, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("trainer", ["torch", "auto"])
def test_block_of_k_batches_equals_k_updates(rng, trainer):
    """A [4, B] block == 4 single updates: the block's noise is one randn((4, 2, B, act))
    draw, which for 2 * B * act_dim a multiple of 16 is the same stream as four draws."""
    block = _batch(rng, 16, lead=(4,))
    a, b = _agent(trainer=trainer), _agent(trainer=trainer)
    out = a.update(block)
    assert all(v.shape == (4,) for v in out.values())
    for k in range(4):
        step = b.update(Transition(*(x[k] for x in block)))
        for key in out:
            assert torch.equal(out[key][k], step[key]), key
    for (name, x), y in _pairs(a, b):
        assert torch.equal(x, y), name
    assert a.num_updates == b.num_updates == 4


def test_update_accepts_torch_tensors_and_returns_detached_tensors(rng):
    agent = _agent()
    b = _batch(rng)
    out = agent.update(Transition(*(torch.from_numpy(x) for x in b)))
    assert set(out) == {"critic_loss", "actor_loss", "alpha", "entropy", "mean_q"}
    for v in out.values():
        assert isinstance(v, torch.Tensor) and v.shape == () and not v.requires_grad
        assert math.isfinite(float(v))


def test_update_is_deterministic_for_a_seed(rng):
    b = _batch(rng)
    a1, a2 = _agent(seed=4), _agent(seed=4)
    a1.update(b)
    a2.update(b)
    for x, y in zip(_all_tensors(a1).values(), _all_tensors(a2).values(), strict=True):
        assert torch.equal(x, y)
    a3 = _agent(seed=5)
    assert not torch.equal(a3.actor.layers[0].weight, a1.actor.layers[0].weight)


@pytest.mark.parametrize("trainer", ["torch", "auto"])
@pytest.mark.parametrize("autocast_bf16", [False, True])
def test_update_reduces_critic_loss_on_a_fixed_batch(rng, autocast_bf16, trainer):
    agent = _agent(lr=3e-3, autocast_bf16=autocast_bf16, trainer=trainer)
    b = _batch(rng, 32)
    first = float(agent.update(b)["critic_loss"])
    last = agent.update(Transition(*(np.broadcast_to(x, (25, *x.shape)) for x in b)))
    last = {k: v[-1] for k, v in last.items()}
    assert float(last["critic_loss"]) < 0.5 * first
    assert agent.actor.layers[0].weight.dtype == torch.float32


# ---------------------------------------------------------------- acting
def test_act_shapes_bounds_and_determinism(rng):
    agent = _agent()
    obs = rng.standard_normal((7, OBS)).astype(np.float32)
    a = agent.act(obs)
    assert a.shape == (7, ACT) and a.dtype == np.float32
    a1 = agent.act(obs[0])
    assert a1.shape == (ACT,) and a1.dtype == np.float32
    # huge observations saturate tanh: actions land on the bounds, never outside
    for sign in (1.0, -1.0):
        big = agent.act(sign * 1e4 * np.abs(obs) * np.sign(obs), deterministic=False)
        assert np.all(big >= LOW.astype(np.float32)) and np.all(big <= HIGH.astype(np.float32))
    d1 = agent.act(obs, deterministic=True)
    d2 = agent.act(obs, deterministic=True)
    assert np.array_equal(d1, d2)
    np.testing.assert_allclose(agent.act(obs[3], deterministic=True), d1[3], rtol=1e-6,
                               atol=1e-6)
    assert np.all(d1 >= LOW) and np.all(d1 <= HIGH)
    # deterministic = tanh(mean) * scale + bias, in float64
    with torch.no_grad():
        mean = agent.actor(torch.from_numpy(obs))[0, :, :ACT].double().numpy()
    np.testing.assert_allclose(d1, np.tanh(mean) * (HIGH - LOW) / 2 + (HIGH + LOW) / 2,
                               rtol=1e-5, atol=1e-6)
    # stochastic: reproducible for a seed, different between calls
    s1, s2 = _agent(seed=8), _agent(seed=8)
    x1 = [s1.act(obs) for _ in range(3)]
    x2 = [s2.act(obs) for _ in range(3)]
    assert all(np.array_equal(p, q) for p, q in zip(x1, x2, strict=True))
    assert not np.array_equal(x1[0], x1[1])
    assert agent.act(obs.tolist()).shape == (7, ACT)
    assert agent.act(torch.from_numpy(obs[0].astype(np.float64))).shape == (ACT,)


def test_act_samples_follow_the_policy_distribution():
    """Empirical mean/std of the pre-squash sample match the policy head (1-D, big sample)."""
    agent = SAC(3, 1, [-1.0], [1.0], hidden_size=16, seed=2)
    _set_constant_output(agent.actor, [[0.2, math.log(0.3)]])
    a = agent.act(np.zeros((20000, 3), np.float32)).astype(np.float64)[:, 0]
    u = np.arctanh(np.clip(a, -1 + 1e-7, 1 - 1e-7))
    assert u.mean() == pytest.approx(0.2, abs=0.01)
    assert u.std() == pytest.approx(0.3, rel=0.03)


# ---------------------------------------------------------------- export
def test_export_actor_layout_and_numpy_forward(tmp_path, rng):
    agent = _agent(hidden_size=16, num_layers=3)
    agent.update(_batch(rng))
    path = tmp_path / "actor.safetensors"
    agent.export_actor(path)
    tensors, meta = load_safetensors(path)
    assert meta == {"format": "mbpo_fast.actor/1", "obs_dim": str(OBS), "act_dim": str(ACT),
                    "num_layers": "3", "hidden_size": "16", "activation": "relu",
                    "log_std_min": "-20", "log_std_max": "2"}
    sizes = [OBS, 16, 16, 16, 2 * ACT]
    names = [f"layers.{i}.{p}" for i in range(4) for p in ("weight", "bias")]
    assert sorted(tensors) == sorted(names + ["action_scale", "action_bias", "action_low",
                                              "action_high"])
    np.testing.assert_array_equal(tensors["action_low"], LOW.astype(np.float32))
    np.testing.assert_array_equal(tensors["action_high"], HIGH.astype(np.float32))
    for i in range(4):
        assert tensors[f"layers.{i}.weight"].shape == (sizes[i], sizes[i + 1])
        assert tensors[f"layers.{i}.bias"].shape == (sizes[i + 1],)
        assert tensors[f"layers.{i}.weight"].dtype == np.float32
    obs = rng.standard_normal((9, OBS))
    x = obs
    for i in range(4):
        x = x @ tensors[f"layers.{i}.weight"].astype(np.float64) + tensors[f"layers.{i}.bias"]
        if i < 3:
            x = np.maximum(x, 0.0)
    want = np.tanh(x[:, :ACT]) * tensors["action_scale"] + tensors["action_bias"]
    np.testing.assert_allclose(agent.act(obs.astype(np.float32), deterministic=True), want,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(tensors["action_scale"], ((HIGH - LOW) / 2).astype(np.float32))


def test_actor_weights_are_live_zero_copy_views(rng):
    agent = _agent()
    views = agent.actor_weights()
    assert len(views) == 3
    assert views[0][0].shape == (1, OBS, 32) and views[-1][0].shape == (1, 32, 2 * ACT)
    assert views[-1][1].shape == (1, 2 * ACT) and views[0][0].dtype == np.float32
    before = views[0][0].copy()
    agent.update(_batch(rng))
    assert not np.array_equal(before, views[0][0])  # the optimizer wrote through the view
    np.testing.assert_array_equal(views[0][0], agent.actor.layers[0].weight.detach().numpy())


# ---------------------------------------------------------------- save / load
def test_save_load_exact_round_trip(tmp_path, rng):
    agent = _agent(init_alpha=0.7)
    for _ in range(3):
        agent.update(_batch(rng))
    agent.act(rng.standard_normal(OBS))  # advance the generator a little differently
    path = tmp_path / "sub" / "agent.pt"
    agent.save(path)
    loaded = SAC.load(path)
    assert loaded.num_updates == agent.num_updates == 3
    assert loaded.config == agent.config
    for (name, x), y in _pairs(agent, loaded):
        assert torch.equal(x, y), name
    # the next updates (noise, Adam moments and step counts included) are bit-identical
    b = _batch(rng)
    for _ in range(2):
        o1, o2 = agent.update(b), loaded.update(b)
        for key in o1:
            assert torch.equal(o1[key], o2[key]), key
    for (name, x), y in _pairs(agent, loaded):
        assert torch.equal(x, y), name
    obs = rng.standard_normal((4, OBS)).astype(np.float32)
    assert np.array_equal(agent.act(obs), loaded.act(obs))


def test_state_dict_round_trip_into_another_agent(rng):
    agent = _agent()
    agent.update(_batch(rng))
    other = _agent(seed=99, init_alpha=0.1, gamma=0.5)
    other.load_state_dict(agent.state_dict())
    assert other.config["gamma"] == agent.config["gamma"] and other.gamma == agent.gamma
    b = _batch(rng)
    agent.update(b)
    other.update(b)
    for (name, x), y in _pairs(agent, other):
        assert torch.equal(x, y), name


def test_load_state_dict_rejects_other_architecture_and_changes_nothing(rng):
    agent = _agent()
    other = _agent(hidden_size=16)
    before = {k: v.clone() for k, v in _all_tensors(other).items()}
    with pytest.raises(ValueError, match="hidden_size"):
        other.load_state_dict(agent.state_dict())
    state = agent.state_dict()
    del state["critic_optim"]
    target = _agent(seed=1)
    before_target = {k: v.clone() for k, v in _all_tensors(target).items()}
    with pytest.raises(ValueError, match="critic_optim"):
        target.load_state_dict(state)
    for k, v in _all_tensors(other).items():
        assert torch.equal(v, before[k])
    for k, v in _all_tensors(target).items():
        assert torch.equal(v, before_target[k])


def test_load_rejects_truncated_and_corrupt_files(tmp_path):
    agent = _agent()
    path = tmp_path / "agent.pt"
    agent.save(path)
    blob = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="trunc.pt: corrupt checkpoint file"):
        SAC.load(tmp_path / "trunc.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ValueError, match="junk.pt: corrupt checkpoint file"):
        SAC.load(tmp_path / "junk.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a mbpo_fast.SAC/1 checkpoint"):
        SAC.load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        SAC.load(tmp_path / "missing.pt")


def _every_tensor(agent):
    """Networks, log_alpha, Adam state and generator state: what a load may change."""
    out = {k: v.detach().clone() for k, v in _all_tensors(agent).items()}
    for name, opt in (("actor_optim", agent.actor_optim), ("critic_optim", agent.critic_optim)):
        for i, st in enumerate(opt.state.values()):
            for k, v in st.items():
                out[f"{name}.{i}.{k}"] = v.detach().clone()
    out["generator"] = agent.generator.get_state()
    return out


def _wrong_shape(state, where):
    """`state` with the tensor at path `where` (keys) replaced by one of another shape."""
    *path, last = where
    d = state
    for k in path:
        d = d[k]
    old = d[last]
    d[last] = torch.zeros(*(old.shape[:-1] if old.dim() else ()), (old.shape[-1] if old.dim()
                          else 1) + 1, dtype=old.dtype)
    return tuple(old.shape), tuple(d[last].shape)


_TENSOR_PATHS = [
    (("actor", "layers.0.weight"), r"actor\['layers.0.weight'\]"),
    (("critic", "layers.2.bias"), r"critic\['layers.2.bias'\]"),
    (("critic_target", "layers.1.weight"), r"critic_target\['layers.1.weight'\]"),
    (("log_alpha",), "log_alpha"),
    (("critic_optim", "state", 3, "exp_avg"), r"critic_optim state\[3\]\['exp_avg'\]"),
    (("actor_optim", "state", 0, "exp_avg_sq"), r"actor_optim state\[0\]\['exp_avg_sq'\]"),
    (("generator",), "generator"),
]


@pytest.mark.parametrize("where,name", _TENSOR_PATHS, ids=lambda x: str(x))
def test_load_state_dict_checks_every_shape_before_copying(rng, where, name):
    """One tensor of another shape anywhere (networks, log_alpha, Adam moments, generator):
    a ValueError naming it with the expected and the actual shape, and nothing changes,
    neither the tensors before it in the state nor the optimizer state."""
    agent = _agent()
    for _ in range(2):
        agent.update(_batch(rng))
    state = agent.state_dict()
    expected, actual = _wrong_shape(state, where)
    target = _agent(seed=7)
    target.update(_batch(rng))
    before, before_cfg = _every_tensor(target), dict(target.config)
    with pytest.raises(ValueError, match=rf"{name}.*expected shape {re.escape(str(expected))}"
                       rf".*got shape {re.escape(str(actual))}"):
        target.load_state_dict(state)
    after = _every_tensor(target)
    assert after.keys() == before.keys() and target.config == before_cfg
    for k, v in before.items():
        assert torch.equal(v, after[k]), k


def test_load_names_the_file_and_tensor_of_a_wrong_shape(tmp_path, rng):
    agent = _agent()
    agent.update(_batch(rng))
    state = agent.state_dict()
    _wrong_shape(state, ("critic_optim", "state", 1, "exp_avg"))
    path = tmp_path / "agent.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=re.escape(str(path)) + r".*critic_optim state\[1\]"):
        SAC.load(path)


def test_load_rejects_a_config_the_file_cannot_hold_before_building_it(tmp_path):
    """A config claiming huge networks, with the tensors of small ones: rejected from the
    file's size, before any network of the claimed size is built (no 400 GB allocation)."""
    state = _agent().state_dict()
    state["config"]["hidden_size"] = 10**7
    path = tmp_path / "agent.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*the file has"):
        SAC.load(path)
    state["config"]["hidden_size"] = "32"
    torch.save(state, path)
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        SAC.load(path)
    state["config"]["hidden_size"] = 32
    state["config"]["surprise"] = 1
    torch.save(state, path)
    with pytest.raises(ValueError, match="config: expected the keys"):
        SAC.load(path)


def test_load_refuses_a_pickle_that_runs_code(tmp_path):
    """agent.pt is read weights-only: a __reduce__ payload is refused and never runs."""
    marker = tmp_path / "payload_ran"
    state = _agent().state_dict()
    state["config"]["seed"] = _Payload(marker)
    path = tmp_path / "agent.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": unsafe checkpoint file"):
        SAC.load(path)
    assert not marker.exists()


class _Payload:
    """Unpickling this calls open(path, "w"): creates a file (a stand-in for any code)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs,match", [
    (dict(action_low=[-1.0, -1.0], action_high=[1.0] * 3), r"action_low must have shape \(3,\)"),
    (dict(action_low=[-1.0] * 3, action_high=[[1.0] * 3]), r"action_high must have shape \(3,\)"),
    (dict(action_low=[-1.0, 2.0, 0.0], action_high=[1.0, 2.0, 1.0]), "must be < action_high"),
    (dict(action_low=[-1.0, 3.0, 0.0], action_high=[1.0, 2.0, 1.0]), "must be < action_high"),
    (dict(action_low=[-np.inf, 0.0, 0.0], action_high=[1.0] * 3), "action_low must be finite"),
    (dict(obs_dim=0), "obs_dim must be a positive int"),
    (dict(act_dim=2.5), "act_dim must be a positive int"),
    (dict(gamma=1.5), "gamma"),
    (dict(tau=0.0), "tau"),
    (dict(init_alpha=-1.0), "init_alpha"),
    (dict(target_entropy=float("nan")), "target_entropy"),
])
def test_constructor_rejects_bad_arguments(kwargs, match):
    args = dict(obs_dim=OBS, act_dim=ACT, action_low=LOW, action_high=HIGH)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        SAC(**args)


def test_act_rejects_wrong_obs_shape_and_dtype():
    agent = _agent()
    with pytest.raises(ValueError, match=r"obs must have shape \(5,\) or \(B, 5\), got \(4,\)"):
        agent.act(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"got \(2, 3, 5\)"):
        agent.act(np.zeros((2, 3, OBS), np.float32))
    with pytest.raises(TypeError, match="obs: expected a numeric array"):
        agent.act(np.array(["a"] * OBS))


def test_update_rejects_bad_batches_and_changes_nothing(rng):
    agent = _agent()
    before = {k: v.clone() for k, v in _all_tensors(agent).items()}
    gen = agent.generator.get_state()
    good = _batch(rng, 8)
    bad = [
        (good._replace(obs=good.obs[:, :3]), r"batch.obs must have shape \(B, 5\)"),
        (good._replace(act=good.act[:4]), r"batch.act must have shape \(8, 3\), got \(4, 3\)"),
        (good._replace(rew=good.rew[:, None]), r"batch.rew must have shape \(8,\)"),
        (good._replace(next_obs=good.next_obs[:, :2]), r"batch.next_obs must have shape"),
        (good._replace(terminated=good.terminated[:5]), r"batch.terminated must have shape"),
        (good._replace(obs=good.obs[:0]), r"batch.obs must have shape"),
    ]
    for batch, match in bad:
        with pytest.raises(ValueError, match=match):
            agent.update(batch)
    with pytest.raises(TypeError, match="Transition"):
        agent.update(good.obs)
    for k, v in _all_tensors(agent).items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(agent.generator.get_state(), gen)
    assert agent.num_updates == 0


def test_exported_from_package():
    assert mf.SAC is SAC


# ---------------------------------------------------------------- learning
@pytest.mark.slow
def test_learns_pendulum_within_10k_steps():
    """The agent alone (no model) reaches an eval return above -400 on Pendulum-v1."""
    pendulum = _load_benchmark_module("sac_pendulum")
    curve = pendulum.train(total_steps=10_000, seed=0, eval_every=2_000, eval_episodes=5,
                           verbose=False, threads=1)
    best = max(ret for _, ret in curve)
    assert best > -400, curve
