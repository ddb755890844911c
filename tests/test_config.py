"""MBPOConfig: the paper's table (DESIGN §5), schedule, capacity formula, overrides."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mbpo_fast.config import KNOWN_CONFIG_ENVS, MBPOConfig

# DESIGN §5, typed out independently of config.py:
# env -> (epoch len, SAC updates/step, schedule, target entropy, retain epochs, paper steps)
TABLE = {
    "Hopper": (1000, 20, (20, 150, 1, 15), -1.0, 1, 125_000),
    "Walker2d": (1000, 20, (20, 150, 1, 1), -3.0, 1, 300_000),
    "HalfCheetah": (1000, 40, (20, 150, 1, 1), -3.0, 1, 400_000),
    "Ant": (1000, 20, (20, 100, 1, 25), -4.0, 1, 300_000),
    "Humanoid": (1000, 20, (20, 300, 1, 25), -2.0, 5, 300_000),
    "InvertedPendulum": (250, 10, (1, 15, 1, 1), -0.05, 1, 15_000),
}


@pytest.mark.parametrize("version", ["v5", "v4"])
@pytest.mark.parametrize("name", sorted(TABLE))
def test_for_env_matches_design_table(name, version):
    env_id = f"{name}-{version}"
    cfg = MBPOConfig.for_env(env_id)
    epoch, updates, schedule, entropy, retain, steps = TABLE[name]
    assert cfg.env_id == env_id
    assert cfg.epoch_length == epoch
    assert cfg.num_sac_updates == updates
    assert cfg.rollout_schedule == schedule
    assert cfg.target_entropy == entropy
    assert cfg.retain_epochs == retain
    assert cfg.total_steps == steps
    # shared settings
    assert (cfg.ensemble_size, cfg.num_elites) == (7, 5)
    assert cfg.model_num_layers == 4
    assert cfg.model_hidden_size == (400 if name == "Humanoid" else 200)
    assert cfg.rollout_batch_size == 100_000
    assert cfg.real_ratio == 0.05
    assert (cfg.gamma, cfg.tau, cfg.sac_lr) == (0.99, 5e-3, 3e-4)
    assert (cfg.sac_hidden_size, cfg.sac_num_layers, cfg.sac_batch_size) == (256, 2, 256)
    assert (cfg.holdout_ratio, cfg.max_holdout) == (0.2, 5000)
    assert cfg.init_random_steps == (500 if name == "InvertedPendulum" else 5000)
    assert cfg.model_train_freq == (1000 if name == "Humanoid" else 250)
    assert cfg.model_max_epochs is None and cfg.model_max_seconds is None  # paper: no caps
    if name == "Ant":
        assert cfg.env_kwargs == {"include_cfrc_ext_in_observation": False}
    elif name == "Humanoid":
        assert cfg.env_kwargs == {f"include_{k}_in_observation": False
                                  for k in ("cinert", "cvel", "qfrc_actuator", "cfrc_ext")}
    else:
        assert cfg.env_kwargs == {}


def test_for_env_returns_independent_copies():
    a = MBPOConfig.for_env("Ant-v5")
    a.env_kwargs["x"] = 1
    assert MBPOConfig.for_env("Ant-v5").env_kwargs == {"include_cfrc_ext_in_observation": False}


def test_for_env_unknown_lists_known():
    with pytest.raises(ValueError, match="Hopper-v5") as exc:
        MBPOConfig.for_env("CartPole-v1")
    assert "CartPole-v1" in str(exc.value)
    assert "Pendulum-v1" in KNOWN_CONFIG_ENVS


def test_pendulum_default_is_quick():
    cfg = MBPOConfig()
    assert cfg == MBPOConfig.for_env("Pendulum-v1")
    assert cfg.env_id == "Pendulum-v1" and cfg.total_steps <= 5000


def _reference_length(epoch, e0, e1, k0, k1):
    # the original MBPO's set_rollout_length, written out
    if epoch <= e0:
        return k0
    dx = min((epoch - e0) / (e1 - e0), 1.0)
    return int(dx * (k1 - k0) + k0)


@pytest.mark.parametrize("schedule", [(20, 150, 1, 15), (20, 100, 1, 25), (20, 300, 1, 25),
                                      (1, 15, 1, 1), (3, 7, 10, 2), (0, 1, 1, 4)])
def test_rollout_length_schedule(schedule):
    cfg = MBPOConfig(rollout_schedule=schedule)
    e0, e1, k0, k1 = schedule
    lengths = [cfg.rollout_length(e) for e in range(0, e1 + 20)]
    assert lengths == [_reference_length(e, *schedule) for e in range(0, e1 + 20)]
    assert lengths[0] == k0 and lengths[-1] == k1
    step = 1 if k1 >= k0 else -1
    assert all((b - a) * step >= 0 for a, b in zip(lengths, lengths[1:], strict=False))  # monotone


def test_rollout_length_hopper_points():
    cfg = MBPOConfig.for_env("Hopper-v5")
    assert [cfg.rollout_length(e) for e in (0, 20, 21, 85, 149, 150, 500)] == \
        [1, 1, 1, 8, 14, 15, 15]


def test_epoch_counts_from_the_end_of_the_random_phase():
    # jannerm/mbpo: the initial exploration runs before the epoch loop, whose counter starts
    # at 0, so Hopper's length 2 comes at 5,000 + 30 * 1,000 steps, not at 30,000.
    cfg = MBPOConfig.for_env("Hopper-v5")
    assert [cfg.epoch_at(s) for s in (0, 4_999, 5_000, 5_999, 6_000, 40_000)] == \
        [0, 0, 0, 0, 1, 35]
    lengths = {s: cfg.rollout_length(cfg.epoch_at(s)) for s in (30_000, 34_999, 35_000, 43_999,
                                                                  44_000)}
    assert lengths == {30_000: 1, 34_999: 1, 35_000: 2, 43_999: 2, 44_000: 3}


def test_rollout_length_step_schedule():
    cfg = MBPOConfig(rollout_schedule=(5, 5, 1, 3))  # e0 == e1: a step, no division by zero
    assert [cfg.rollout_length(e) for e in (4, 5, 6)] == [1, 1, 3]


def test_model_pool_capacity_formula():
    hopper = MBPOConfig.for_env("Hopper-v5")
    assert hopper.model_pool_capacity(1) == 100_000 * 1 * 4 * 1
    assert hopper.model_pool_capacity(15) == 100_000 * 15 * 4 * 1
    humanoid = MBPOConfig.for_env("Humanoid-v5")
    assert humanoid.model_pool_capacity(25) == 100_000 * 25 * 1 * 5
    cfg = MBPOConfig(rollout_batch_size=37, epoch_length=300, model_train_freq=70,
                     retain_epochs=3)
    assert cfg.model_pool_capacity(4) == 37 * 4 * (300 // 70) * 3


def test_dict_and_json_round_trip():
    cfg = MBPOConfig.for_env("Humanoid-v5", seed=7, model_max_epochs=3)
    d = cfg.to_dict()
    assert d["rollout_schedule"] == [20, 300, 1, 25]
    assert set(d) == {f.name for f in dataclasses.fields(MBPOConfig)}
    assert MBPOConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert MBPOConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        MBPOConfig.from_dict({**d, "bogus": 1})


def test_every_field_has_a_docstring():
    import ast
    import inspect

    import mbpo_fast.config as module

    tree = ast.parse(inspect.getsource(module))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MBPOConfig")
    documented = set()
    for a, b in zip(cls.body, cls.body[1:], strict=False):
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and \
                isinstance(b.value, ast.Constant) and isinstance(b.value.value, str):
            documented.add(a.target.id)
    assert documented == {f.name for f in dataclasses.fields(MBPOConfig)}


def test_overrides_parse_and_type_check():
    cfg = MBPOConfig().with_overrides([
        "seed=3", "real_ratio=0.1", "gamma=1", "model_max_epochs=5", "model_max_seconds=2.5",
        "target_entropy=none", "rollout_schedule=[1, 5, 2, 9]", "env_id=Hopper-v5",
        'env_kwargs={"frame_skip": 2}', "device=cpu", "logdir=/tmp/x"])
    assert cfg.seed == 3 and cfg.real_ratio == 0.1 and cfg.gamma == 1.0
    assert isinstance(cfg.gamma, float)
    assert cfg.model_max_epochs == 5 and cfg.model_max_seconds == 2.5
    assert cfg.target_entropy is None and cfg.rollout_schedule == (1, 5, 2, 9)
    assert cfg.env_id == "Hopper-v5" and cfg.env_kwargs == {"frame_skip": 2}
    assert cfg.logdir == "/tmp/x"
    base = MBPOConfig()
    assert base.seed == 0  # with_overrides returns a copy


@pytest.mark.parametrize("item, match", [
    ("nope=1", "unknown key 'nope'.*valid keys: .*checkpoint_freq"),
    ("seed", "expected key=value"),
    ("seed=1.5", "seed: expected int"),
    ("seed=abc", "seed: expected int"),
    ("total_steps=true", "total_steps: expected int"),
    ("real_ratio=x", "real_ratio: expected float"),
    ("seed=none", "seed: expected int"),
    ("rollout_schedule=[1,2,3]", "rollout_schedule"),
    ("env_kwargs=[1]", "env_kwargs: expected dict"),
    ("real_ratio=1.5", r"real_ratio: must be in \[0.0, 1.0\]"),
    ("num_elites=9", "num_elites: must be <= ensemble_size"),
    ("epoch_length=0", "epoch_length: must be a positive int"),
    ("rollout_schedule=[5,1,1,1]", "rollout_schedule"),
])
def test_overrides_errors(item, match):
    with pytest.raises(ValueError, match=match):
        MBPOConfig().with_overrides([item])


def test_direct_construction_is_validated():
    with pytest.raises(ValueError, match="total_steps"):
        MBPOConfig(total_steps=-1)
    with pytest.raises(ValueError, match="model_max_epochs"):
        MBPOConfig(model_max_epochs=0)
