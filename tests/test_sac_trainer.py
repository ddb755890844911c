"""The native SAC trainer against the torch trainer (mbpo_fast/sac_trainer.py): parity of
every parameter, target parameter, log_alpha, Adam state and statistic; switching
trainers mid-run; exact checkpoint/resume; bf16; errors that change nothing."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mbpo_fast as mf
from mbpo_fast import _backend
from mbpo_fast.sac import SAC
from mbpo_fast.types import Transition

pytestmark = [
    pytest.mark.skipif(mf.backend() != "native" or not hasattr(_backend.ops, "SacLearner"),
                       reason="needs the native extension with SacLearner"),
    pytest.mark.usefixtures("one_torch_thread"),
]


def _state(agent: SAC) -> dict[str, torch.Tensor]:
    """Every tensor an update changes, by name."""
    out = {}
    for prefix, module in (("actor", agent.actor), ("critic", agent.critic),
                           ("critic_target", agent.critic_target)):
        for name, p in module.named_parameters():
            out[f"{prefix}.{name}"] = p.detach().clone()
    out["log_alpha"] = agent.log_alpha.detach().clone()
    for prefix, optim in (("actor_optim", agent.actor_optim),
                          ("critic_optim", agent.critic_optim)):
        for i, group in enumerate(optim.param_groups):
            for j, p in enumerate(group["params"]):
                for key, v in optim.state[p].items():
                    out[f"{prefix}.{i}.{j}.{key}"] = v.detach().clone()
    return out


def _assert_states_close(got: dict, want: dict, rtol: float = 1e-5, lr: float = 3e-4) -> None:
    """Elementwise |got - want| <= rtol * |want| + atol, atol = 10% of rtol x the tensor's
    largest magnitude (relative everywhere except at values ~0 for their tensor: elements
    that init + Adam steps brought near 0 carry the tensor's absolute rounding), with
    rtol = 1e-5 for parameters, targets, log_alpha and the step counters.

    Adam's moments (exp_avg, exp_avg_sq) get rtol = 1e-4 and atol = 1e-5 x their largest
    magnitude plus a floor (1e-6 for exp_avg, 1e-9 for exp_avg_sq): they are running means
    of raw gradients (squared), whose elements come from differences that cancel (the TD
    error q - y; log_alpha's mean logp + target_entropy, terms ~act_dim), so an element can
    differ by several ulps of the cancelled terms between two correct float32
    implementations (another summation order, FMA or not). Measured with the portable and
    the AVX-512 GEMM kernels over 300 hypothesis examples: moments up to 4e-4 relative /
    1.4e-7 absolute on networks of 1-2 hidden units, parameters within 3e-6. log_alpha
    starts at 0 (alpha 1) and moves by Adam steps of at most lr whose gradient
    -(mean logp + target_entropy) cancels: atol 1e-4 * lr.
    test_native_is_as_close_to_float64_as_torch shows those differences are the torch
    trainer's own float32 rounding as much as ours."""
    assert got.keys() == want.keys()
    for name, w in want.items():
        g = got[name]
        assert g.dtype == w.dtype and g.shape == w.shape, name
        scale = float(w.abs().max()) if w.numel() else 0.0
        if name.endswith(".exp_avg"):
            tol, atol = 1e-4, 1e-5 * scale + 1e-6
        elif name.endswith(".exp_avg_sq"):
            tol, atol = 1e-4, 1e-5 * scale + 1e-9
        elif name == "log_alpha":
            tol, atol = rtol, 1e-4 * lr
        else:
            tol, atol = rtol, rtol * 0.1 * scale + 1e-12
        torch.testing.assert_close(g, w, rtol=tol, atol=atol,
                                   msg=lambda m, name=name: f"{name}: {m}")


def _assert_stats_close(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].shape == want[key].shape and got[key].dtype == torch.float32, key
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5,
                                   msg=lambda m, key=key: f"{key}: {m}")


def _batch(rng, b, obs_dim, act_dim, lead=(), low=None, high=None):
    low = -np.ones(act_dim) if low is None else low
    high = np.ones(act_dim) if high is None else high
    return Transition(
        rng.standard_normal((*lead, b, obs_dim), dtype=np.float32),
        rng.uniform(low, high, (*lead, b, act_dim)).astype(np.float32),
        rng.standard_normal((*lead, b), dtype=np.float32),
        rng.standard_normal((*lead, b, obs_dim), dtype=np.float32),
        rng.random((*lead, b)) < 0.3,
    )


def _push_log_std_past_the_clamp(agent: SAC, rng) -> None:
    """Moves the actor's raw log_std to the clamp bounds: bias 2 or -20 per action dim, so
    rows fall on both sides of the bound (the clamp's gradient is zero outside). The
    weights are only scaled by 3: larger factors amplify the trainers' float32 rounding
    (parameters equal to 1e-6) into raw-head differences of 1e-4 within a few updates."""
    act_dim = agent.act_dim
    with torch.no_grad():
        last = agent.actor.layers[-1]
        last.weight[0, :, act_dim:] *= 3.0
        last.bias[0, act_dim:] = torch.from_numpy(
            rng.choice([2.0, -20.0], act_dim).astype(np.float32))


def _pair(**kw) -> tuple[SAC, SAC]:
    return SAC(**kw, trainer="torch"), SAC(**kw, trainer="native")


def _adam_eps(agents, eps: float = 1e-4) -> None:
    """Sets Adam's eps of every param group (the native trainer reads it from there).

    The randomized tests use 1e-4 instead of torch's 1e-8. Adam divides by sqrt(v) + eps:
    its first step moves a parameter by lr * g / (|g| + eps), i.e. by a full lr for ANY
    gradient much larger than eps, also for one whose true value is ~0 and whose float32
    value is rounding noise (a sum that cancels to 1e-8 .. 1e-7: e.g. the policy mean's
    bias when the action path and the entropy path cancel, or a hidden unit active only on
    the row whose TD error is ~1e-6). Two correct float32 implementations then differ by a
    sizable fraction of lr on that element (measured: 2e-5 on a parameter of 0.33 after
    one update, with the float64 run between the two; with eps 1e-6 still 5e-5 relative).
    With eps = 1e-4 such noise moves parameters proportionally to its size (<= 1e-6) while
    gradients of 1e-3 and up still take normalized steps. The fixed tests keep 1e-8."""
    for agent in agents:
        for optim in (agent.actor_optim, agent.critic_optim):
            for group in optim.param_groups:
                group["eps"] = eps


@settings(max_examples=20, deadline=None)
@given(obs_dim=st.integers(1, 6), act_dim=st.integers(1, 4), hidden=st.integers(1, 19),
       num_layers=st.integers(1, 3), b=st.sampled_from([1, 2, 5, 16]), k=st.integers(1, 3),
       clamp=st.booleans(), seed=st.integers(0, 2**16))
def test_native_matches_torch_after_1_and_10_updates(obs_dim, act_dim, hidden, num_layers, b, k,
                                                      clamp, seed):
    rng = np.random.default_rng(seed)
    low = rng.uniform(-3.0, 1.0, act_dim)
    high = low + rng.uniform(0.2, 4.0, act_dim)  # asymmetric boxes
    kw = dict(obs_dim=obs_dim, act_dim=act_dim, action_low=low, action_high=high,
              hidden_size=hidden, num_layers=num_layers, seed=seed, tau=0.05, lr=1e-3)
    ref, nat = _pair(**kw)
    _adam_eps((ref, nat))
    assert (ref.trainer, nat.trainer) == ("torch", "native")
    if clamp:
        _push_log_std_past_the_clamp(ref, np.random.default_rng(seed))
        _push_log_std_past_the_clamp(nat, np.random.default_rng(seed))
    one = _batch(rng, b, obs_dim, act_dim, low=low, high=high)
    _assert_stats_close(nat.update(one), ref.update(one))
    _assert_states_close(_state(nat), _state(ref), lr=1e-3)
    done = 1
    while done < 10:
        kk = min(k, 10 - done)
        block = _batch(rng, b, obs_dim, act_dim, lead=(kk,), low=low, high=high)
        _assert_stats_close(nat.update(block), ref.update(block))
        done += kk
    _assert_states_close(_state(nat), _state(ref), lr=1e-3)
    assert nat.num_updates == ref.num_updates == 10
    assert torch.equal(nat.generator.get_state(), ref.generator.get_state())


def _float64_torch_twin(kw: dict) -> SAC:
    """The same agent with every network, log_alpha and the action box in float64, for
    the torch trainer (fused Adam runs in float64 too)."""
    agent = SAC(**kw, trainer="torch")
    for module in (agent.actor, agent.critic, agent.critic_target):
        module.double()
    agent.log_alpha.data = agent.log_alpha.data.double()
    agent.action_scale = agent.action_scale.double()
    agent.action_bias = agent.action_bias.double()
    return agent


@settings(max_examples=8, deadline=None)
@given(hidden=st.integers(1, 12), num_layers=st.integers(1, 3), b=st.sampled_from([1, 3, 8]),
       seed=st.integers(0, 2**16))
def test_native_is_as_close_to_float64_as_torch(hidden, num_layers, b, seed):
    """After 10 updates, every tensor of the native trainer deviates from a float64 run of
    the same updates by no more than 3x what the torch trainer's float32 run does, or by
    float32 rounding (2e-6 of the tensor's largest magnitude)."""
    from mbpo_fast.sac_trainer import TorchSacTrainer

    rng = np.random.default_rng(seed)
    kw = dict(obs_dim=3, act_dim=2, action_low=[-1.0, 0.0], action_high=[2.0, 0.5],
              hidden_size=hidden, num_layers=num_layers, seed=seed, tau=0.05, lr=1e-3)
    ref, nat = _pair(**kw)
    f64 = _float64_torch_twin(kw)
    _adam_eps((ref, nat, f64))
    trainer64 = TorchSacTrainer(f64)
    for _ in range(10):
        blk = _batch(rng, b, 3, 2, low=np.array([-1.0, 0.0]), high=np.array([2.0, 0.5]))
        ref.update(blk)
        nat.update(blk)
        t = [torch.from_numpy(np.asarray(x))[None] for x in blk]
        eps = torch.randn((1, 2, b, 2), generator=f64.generator).double()
        trainer64.update_block(*(x.double() for x in t[:4]), t[4], eps)
    s32, s_nat, s64 = _state(ref), _state(nat), _state(f64)
    for name, want in s64.items():
        if name.endswith("step"):
            continue
        err_torch = float((s32[name].double() - want).abs().max())
        err_native = float((s_nat[name].double() - want).abs().max())
        # float32 rounding level: 2e-6 of the tensor's largest magnitude; log_alpha (a sum
        # of Adam steps <= lr = 1e-3 of a gradient that cancels) 1e-7; Adam's moments of
        # gradients that cancel to ~0 (see _assert_states_close) 1e-8 absolute
        floor = 1e-7 if name == "log_alpha" else 2e-6 * float(want.abs().max())
        if name.endswith((".exp_avg", ".exp_avg_sq")):
            floor += 1e-8
        assert err_native <= 3.0 * err_torch + floor, (name, err_native, err_torch)


def test_parity_with_tied_critics_and_saturated_actions():
    """Identical critics (torch.min's backward splits the gradient in half on every row),
    one action dimension at the box edge (tanh saturates), all rows terminated in one batch."""
    kw = dict(obs_dim=4, act_dim=2, action_low=[-1.0, 0.0], action_high=[2.0, 0.5],
              hidden_size=9, num_layers=2, seed=7)
    ref, nat = _pair(**kw)
    for agent in (ref, nat):
        with torch.no_grad():
            for module in (agent.critic, agent.critic_target):
                for p in module.parameters():
                    p[1] = p[0]
            agent.actor.layers[-1].bias[0, 0] = 25.0  # action 0 saturated; 1 is free
    rng = np.random.default_rng(1)
    batches = [_batch(rng, 6, 4, 2, lead=(2,)) for _ in range(3)]
    batches[1].terminated[:] = True
    for blk in batches:
        _assert_stats_close(nat.update(blk), ref.update(blk))
    _assert_states_close(_state(nat), _state(ref))


def test_switching_trainers_mid_run_matches_an_all_torch_run():
    kw = dict(obs_dim=5, act_dim=3, action_low=[-1, 0, -3], action_high=[1, 5, 2],
              hidden_size=24, num_layers=2, seed=4)
    plain = SAC(**kw, trainer="torch")
    switched = SAC(**kw, trainer="torch")
    rng = np.random.default_rng(2)
    for phase, trainer in enumerate(("torch", "native", "torch")):
        switched.set_trainer(trainer)
        assert switched.trainer == trainer
        for _ in range(2):
            blk = _batch(rng, 32, 5, 3, lead=(3,))
            _assert_stats_close(switched.update(blk), plain.update(blk))
        _assert_states_close(_state(switched), _state(plain))
        assert switched.num_updates == plain.num_updates == 6 * (phase + 1)


def test_native_creates_adam_state_the_torch_trainer_continues_from():
    """The first update being native: Adam state appears as torch's fused Adam makes it."""
    kw = dict(obs_dim=3, act_dim=1, action_low=[-2.0], action_high=[2.0], hidden_size=8,
              num_layers=1, seed=0)
    nat = SAC(**kw, trainer="native")
    assert all(len(s) == 0 for s in nat.critic_optim.state.values())
    nat.update(_batch(np.random.default_rng(0), 4, 3, 1))
    for optim in (nat.actor_optim, nat.critic_optim):
        for group in optim.param_groups:
            for p in group["params"]:
                st_ = optim.state[p]
                assert set(st_) == {"step", "exp_avg", "exp_avg_sq"}
                assert st_["step"].dtype == torch.float32 and st_["step"].shape == ()
                assert float(st_["step"]) == 1.0
                assert st_["exp_avg"].shape == p.shape
    nat.set_trainer("torch")
    nat.update(_batch(np.random.default_rng(1), 4, 3, 1))
    assert all(float(s["step"]) == 2.0 for s in nat.critic_optim.state.values())


def test_native_checkpoint_resume_is_exact(tmp_path):
    kw = dict(obs_dim=5, act_dim=2, action_low=[-1, -1], action_high=[1, 1], hidden_size=16,
              num_layers=2, seed=9, trainer="native")
    rng = np.random.default_rng(3)
    blocks = [_batch(rng, 8, 5, 2, lead=(2,)) for _ in range(4)]
    agent = SAC(**kw)
    for blk in blocks[:2]:
        agent.update(blk)
    agent.save(tmp_path / "sac.pt")
    for blk in blocks[2:]:
        agent.update(blk)
    resumed = SAC.load(tmp_path / "sac.pt")
    assert resumed.trainer == "native" and resumed.config["trainer"] == "native"
    for blk in blocks[2:]:
        resumed.update(blk)
    want, got = _state(agent), _state(resumed)
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert resumed.num_updates == agent.num_updates == 8
    assert torch.equal(resumed.generator.get_state(), agent.generator.get_state())


def test_checkpoint_without_trainer_key_loads_as_auto(tmp_path):
    agent = SAC(3, 1, [-1.0], [1.0], hidden_size=8, num_layers=1, trainer="torch")
    state = agent.state_dict()
    del state["config"]["trainer"]
    torch.save(state, tmp_path / "old.pt")
    loaded = SAC.load(tmp_path / "old.pt")
    assert loaded.config["trainer"] == "auto" and loaded.trainer == "native"
    assert SAC.load(tmp_path / "old.pt", trainer="torch").trainer == "torch"


def test_bf16_native_is_close_to_float32():
    kw = dict(obs_dim=11, act_dim=3, action_low=-np.ones(3), action_high=np.ones(3),
              hidden_size=64, num_layers=2, seed=5)
    f32 = SAC(**kw, trainer="native")
    b16 = SAC(**kw, trainer="native", autocast_bf16=True)
    start = _state(f32)
    rng = np.random.default_rng(4)
    for _ in range(3):
        blk = _batch(rng, 64, 11, 3, lead=(2,))
        s32, s16 = f32.update(blk), b16.update(blk)
        for key in s32:
            assert torch.isfinite(s16[key]).all(), key
            torch.testing.assert_close(s16[key], s32[key], rtol=2e-2, atol=2e-2)
    w32, w16 = _state(f32), _state(b16)
    for name in ("critic.layers.0.weight", "critic.layers.1.weight", "actor.layers.1.weight"):
        change = (w32[name] - start[name]).norm()
        assert change > 0
        assert (w16[name] - w32[name]).norm() < 0.1 * change, name


def test_auto_resolution_and_errors(monkeypatch):
    kw = dict(obs_dim=3, act_dim=1, action_low=[-1.0], action_high=[1.0], hidden_size=8,
              num_layers=1)
    assert SAC(**kw).trainer == "native"
    with warnings.catch_warnings():  # torch.compile's own import-time deprecation notices
        warnings.simplefilter("ignore", DeprecationWarning)
        assert SAC(**kw, compile=True).trainer == "torch"  # compile: a torch-trainer option
    with pytest.raises(ValueError, match="compile"):
        SAC(**kw, compile=True, trainer="native")
    with pytest.raises(ValueError, match="trainer must be one of"):
        SAC(**kw, trainer="fast")
    monkeypatch.setattr(_backend, "name", "numba")
    assert SAC(**kw).trainer == "torch"
    with pytest.raises(ValueError, match="native extension is not loaded"):
        SAC(**kw, trainer="native")
    agent = SAC(**kw, trainer="torch")
    with pytest.raises(ValueError, match="native extension is not loaded"):
        agent.set_trainer("native")
    assert agent.trainer == "torch"


def _snapshot(agent: SAC):
    return _state(agent), agent.generator.get_state().clone(), agent.num_updates


def _assert_unchanged(agent: SAC, snap) -> None:
    state, gen, n = snap
    now = _state(agent)
    assert now.keys() == state.keys()
    assert all(torch.equal(now[k], state[k]) for k in state)
    assert torch.equal(agent.generator.get_state(), gen) and agent.num_updates == n


def test_bad_inputs_raise_and_change_nothing():
    agent = SAC(4, 2, [-1, -1], [1, 1], hidden_size=8, num_layers=2, trainer="native")
    rng = np.random.default_rng(0)
    agent.update(_batch(rng, 4, 4, 2))
    good = _batch(rng, 4, 4, 2, lead=(2,))
    snap = _snapshot(agent)
    with pytest.raises(ValueError, match="batch.act"):
        agent.update(good._replace(act=good.act[..., :1]))
    with pytest.raises(ValueError, match="batch.terminated"):
        agent.update(good._replace(terminated=good.terminated[:, :3]))
    with pytest.raises(ValueError, match="batch.obs"):
        agent.update(good._replace(obs=good.obs[:, :0]))
    agent.actor_optim.param_groups[0]["weight_decay"] = 0.1
    with pytest.raises(ValueError, match="weight_decay"):
        agent.update(good)
    agent.actor_optim.param_groups[0]["weight_decay"] = 0.0
    _assert_unchanged(agent, snap)

    # the binding itself: dtype, shape and contiguity are checked before anything runs
    learner = agent._trainer._learner_for_block()
    t = [np.ascontiguousarray(x) for x in good]
    eps = np.zeros((2, 2, 4, 2), np.float32)
    with pytest.raises(TypeError, match="obs: expected dtype float32"):
        learner.update_block(t[0].astype(np.float64), t[1], t[2], t[3], t[4], eps)
    with pytest.raises(ValueError, match=r"eps: expected shape \(2, 2, 4, 2\)"):
        learner.update_block(t[0], t[1], t[2], t[3], t[4], eps[:, :1])
    with pytest.raises(ValueError, match="rew: must be C-contiguous"):
        learner.update_block(t[0], t[1], np.asfortranarray(t[2]), t[3], t[4], eps)
    with pytest.raises(TypeError, match="terminated: expected dtype bool or uint8"):
        learner.update_block(t[0], t[1], t[2], t[3], t[4].astype(np.int32), eps)
    _assert_unchanged(agent, snap)


def test_binding_rejects_foreign_storage():
    agent = SAC(4, 2, [-1, -1], [1, 1], hidden_size=8, num_layers=1, trainer="native")
    trainer = agent._trainer
    trainer.prepare()
    with torch.no_grad():  # a parameter swapped for a float64 tensor: clear error, no crash
        agent.actor.layers[0].weight.data = agent.actor.layers[0].weight.data.double()
    with pytest.raises(ValueError, match="actor parameter 0 must be a contiguous float32"):
        trainer.prepare()


def test_native_rebinds_after_optimizer_load_state_dict():
    """Optimizer.load_state_dict replaces the Adam tensors: the learner must follow them."""
    kw = dict(obs_dim=3, act_dim=2, action_low=[-1, -1], action_high=[1, 1], hidden_size=8,
              num_layers=1, seed=2)
    ref, nat = _pair(**kw)
    rng = np.random.default_rng(5)
    blocks = [_batch(rng, 5, 3, 2, lead=(2,)) for _ in range(3)]
    for agent in (ref, nat):
        agent.update(blocks[0])
    nat.load_state_dict(nat.state_dict())
    for blk in blocks[1:]:
        _assert_stats_close(nat.update(blk), ref.update(blk))
    _assert_states_close(_state(nat), _state(ref))


def test_auto_stays_on_torch_without_an_accelerated_gemm(monkeypatch):
    # On a CPU without AVX-512 the portable GEMM is slower than torch's BLAS: "auto" must not
    # pick it (for SAC and for the ensemble), while "native" still runs it when asked.
    from mbpo_fast.ensemble_trainer import resolve_trainer

    monkeypatch.setattr(_backend, "native_training_accelerated", lambda: False)
    agent = mf.SAC(3, 1, [-1.0], [1.0], hidden_size=8, trainer="auto")
    assert agent.trainer == "torch"
    assert resolve_trainer("auto", torch.device("cpu"), 5) == "torch"
    if _backend.name == "native":
        assert mf.SAC(3, 1, [-1.0], [1.0], hidden_size=8, trainer="native").trainer == "native"
        assert resolve_trainer("native", torch.device("cpu"), 5) == "native"
