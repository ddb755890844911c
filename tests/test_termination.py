"""Termination functions against the real gymnasium environments and across backends.

* Real episodes: every supported env id (v5 and v4, and the truncated Ant/Humanoid
  observations MBPO uses) is stepped with random actions and with perturbed ones (bang-bang
  actions plus random velocity kicks that throw the robot over); the function must reproduce
  the environment's own ``terminated`` flag on every step, for every backend, from the
  float64 observation and from its float32 copy.
* Edge cases: observations exactly at, just inside and just outside every bound, NaN/Inf,
  in float32 and float64, compared against an independent float64 numpy reference.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import warnings

import numpy as np
import pytest

import mbpo_fast
from mbpo_fast import _backend
from mbpo_fast.termination import (
    KNOWN_ENV_IDS,
    TerminationId,
    as_termination_fn,
    termination_fn,
)

gym = pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")

# ----------------------------------------------------------------------------------------------
# Independent float64 reference, written from the gymnasium 1.x step()/is_healthy sources with
# the default parameters (terminate_when_unhealthy=True, x / x,y excluded from the observation).


def reference_terminated(family: str, next_obs: np.ndarray) -> np.ndarray:
    x = np.asarray(next_obs).astype(np.float64)  # float32 -> float64 is exact
    z, angle = x[:, 0], x[:, 1]
    if (
        family == "Hopper"
    ):  # is_healthy: state_vector()[2:] in (-100, 100), z in (0.7, inf), angle in (-0.2, 0.2)
        state = x[:, 1:]
        healthy = (
            np.all(np.logical_and(-100.0 < state, state < 100.0), axis=1)
            & np.logical_and(0.7 < z, z < np.inf)
            & np.logical_and(-0.2 < angle, angle < 0.2)
        )
    elif family == "Walker2d":  # z in (0.8, 2.0), angle in (-1, 1)
        healthy = np.logical_and(0.8 < z, z < 2.0) & np.logical_and(-1.0 < angle, angle < 1.0)
    elif family == "Ant":  # isfinite(qpos, qvel) and 0.2 <= z <= 1.0 (inclusive)
        healthy = np.isfinite(x[:, :27]).all(axis=1) & (0.2 <= z) & (z <= 1.0)
    elif family == "Humanoid":  # 1.0 < z < 2.0
        healthy = (1.0 < z) & (z < 2.0)
    elif family == "InvertedPendulum":  # terminated = not isfinite(obs).all() or |obs[1]| > 0.2
        return ~np.isfinite(x).all(axis=1) | (np.abs(angle) > 0.2)
    elif family in ("HalfCheetah", "Pendulum"):
        return np.zeros(len(x), dtype=bool)
    else:
        raise AssertionError(family)
    return ~healthy


def family_of(env_id: str) -> str:
    return env_id.split("-")[0]


# ----------------------------------------------------------------------------------------------
# Real episodes

ANT_NO_CFRC = {"include_cfrc_ext_in_observation": False}
HUMANOID_45 = {
    "include_cinert_in_observation": False,
    "include_cvel_in_observation": False,
    "include_qfrc_actuator_in_observation": False,
    "include_cfrc_ext_in_observation": False,
}

# (env_id, make kwargs, expected obs width, steps per mode)
CONFIGS = [
    ("Hopper-v5", {}, 11, 1500),
    ("Walker2d-v5", {}, 17, 1500),
    ("HalfCheetah-v5", {}, 17, 600),
    ("Ant-v5", {}, 105, 1500),
    ("Ant-v5", ANT_NO_CFRC, 27, 1500),
    ("Humanoid-v5", {}, 348, 1500),
    ("Humanoid-v5", HUMANOID_45, 45, 1500),
    ("InvertedPendulum-v5", {}, 4, 1500),
    ("Pendulum-v1", {}, 3, 400),
    ("Hopper-v4", {}, 11, 1000),
    ("Walker2d-v4", {}, 17, 1000),
    ("HalfCheetah-v4", {}, 17, 300),
    ("Ant-v4", {}, 27, 1000),
    ("Ant-v4", {"use_contact_forces": True}, 111, 1000),
    ("Humanoid-v4", {}, 376, 1000),
    ("InvertedPendulum-v4", {}, 4, 1000),
]

# Conditions that the recorded terminal rows must include, so every bound is exercised by
# real data rather than only by synthetic edge cases. (Ant's z < 0.2 is physically
# unreachable: the torso is a 0.25 m sphere; it is covered by the edge-case tests.)
COVERAGE = {
    "Hopper": {
        "z <= 0.7": lambda t: t[:, 0] <= 0.7,
        "|angle| >= 0.2": lambda t: np.abs(t[:, 1]) >= 0.2,
    },
    "Walker2d": {
        "z <= 0.8": lambda t: t[:, 0] <= 0.8,
        "z >= 2": lambda t: t[:, 0] >= 2.0,
        "|angle| >= 1": lambda t: np.abs(t[:, 1]) >= 1.0,
    },
    "Ant": {"z > 1": lambda t: t[:, 0] > 1.0},
    "Humanoid": {"z <= 1": lambda t: t[:, 0] <= 1.0, "z >= 2": lambda t: t[:, 0] >= 2.0},
    "InvertedPendulum": {
        "angle > 0.2": lambda t: t[:, 1] > 0.2,
        "angle < -0.2": lambda t: t[:, 1] < -0.2,
    },
}


def make_env(env_id: str, kwargs: dict):
    with warnings.catch_warnings():  # the v4 ids warn that v5 exists
        warnings.simplefilter("ignore", DeprecationWarning)
        return gym.make(env_id, **kwargs)


def roll(
    env_id: str, kwargs: dict, steps: int, perturbed: bool, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Steps the env `steps` times, resetting on terminated/truncated.

    Returns every next observation returned by step() (float64 [steps, obs_dim]) and the
    environment's terminated flag for it (bool [steps]). `perturbed`: bang-bang actions and,
    with probability 0.05 per step, a N(0, 10) kick added to the joint velocities before the
    step (the env still computes `terminated` itself on the resulting state).
    """
    env = make_env(env_id, kwargs)
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    low, high = env.action_space.low, env.action_space.high
    mujoco_env = hasattr(env.unwrapped, "set_state")
    rows, flags = [], []
    for _ in range(steps):
        if perturbed:
            action = np.where(rng.random(low.shape) < 0.5, low, high).astype(env.action_space.dtype)
            if mujoco_env and rng.random() < 0.05:
                u = env.unwrapped
                u.set_state(
                    u.data.qpos.copy(), u.data.qvel + rng.normal(0.0, 10.0, size=u.data.qvel.shape)
                )
        else:
            action = env.action_space.sample()
        next_obs, _, terminated, truncated, _ = env.step(action)
        rows.append(np.asarray(next_obs, dtype=np.float64))
        flags.append(bool(terminated))
        if terminated or truncated:
            env.reset()
    env.close()
    return np.stack(rows), np.asarray(flags)


@contextlib.contextmanager
def _inside(directory):
    """MuJoCo writes MUJOCO_LOG.TXT (model compiler warnings) to the working directory."""
    old = os.getcwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    cache: dict = {}
    log_dir = tmp_path_factory.mktemp("mujoco_log")

    def get(index: int) -> tuple[np.ndarray, np.ndarray]:
        if index not in cache:
            env_id, kwargs, _, steps = CONFIGS[index]
            with _inside(log_dir):
                parts = [
                    roll(env_id, kwargs, steps, perturbed, seed=100 + index)
                    for perturbed in (False, True)
                ]
            cache[index] = (
                np.concatenate([p[0] for p in parts]),
                np.concatenate([p[1] for p in parts]),
            )
        return cache[index]

    return get


def _config_id(c) -> str:
    env_id, kwargs, width, _ = c
    return f"{env_id}-{width}" if kwargs else env_id


@pytest.mark.parametrize("index", range(len(CONFIGS)), ids=[_config_id(c) for c in CONFIGS])
def test_matches_environment_terminated_flag(index, episodes):
    env_id, _, width, _ = CONFIGS[index]
    obs, env_terminated = episodes(index)
    assert obs.shape[1] == width
    family = family_of(env_id)

    # The reference itself must reproduce the environment (it is what the edge-case tests trust).
    np.testing.assert_array_equal(reference_terminated(family, obs), env_terminated)

    fn = termination_fn(env_id)
    for name in _backend.available():
        with _backend.use(name):
            for x in (obs, obs.astype(np.float32)):
                got = fn(None, None, x)
                assert got.dtype == np.bool_ and got.shape == (len(obs),)
                mismatches = np.flatnonzero(got != env_terminated)
                assert mismatches.size == 0, (
                    f"{name} backend, {x.dtype}: {mismatches.size} mismatches, "
                    f"first rows {mismatches[:5]}: "
                    f"{x[mismatches[:3]]} env says {env_terminated[mismatches[:3]]}"
                )

    terminal = obs[env_terminated]
    if family in ("HalfCheetah", "Pendulum"):
        assert terminal.shape[0] == 0
        return
    assert terminal.shape[0] >= 5 and (~env_terminated).sum() >= 500, (
        "episodes must cover both outcomes"
    )
    if env_id.endswith("-v4"):
        return  # same logic as v5 (covered there); fewer steps here
    for label, cond in COVERAGE[family].items():
        assert cond(terminal).any(), f"{env_id}: no real termination with {label}"


# ----------------------------------------------------------------------------------------------
# Edge cases and backend agreement

WIDTHS = {
    "Hopper-v5": [11],
    "Walker2d-v5": [17],
    "Ant-v5": [27, 105, 111],
    "Humanoid-v5": [45, 348, 376],
    "InvertedPendulum-v5": [4],
    "HalfCheetah-v5": [17],
    "Pendulum-v1": [3],
}
HEALTHY_Z = {"Hopper": 1.25, "Walker2d": 1.25, "Ant": 0.55, "Humanoid": 1.4}
BOUNDS = [0.2, 0.7, 0.8, 1.0, 2.0, 100.0]


def _special_values() -> np.ndarray:
    vals = [0.0, np.nan, np.inf, -np.inf, 1e300, -1e300, 1e39]
    for b in BOUNDS:
        for s in (b, -b):
            f = np.float32(s)
            vals += [
                s,
                float(f),
                float(np.nextafter(f, np.float32(np.inf))),
                float(np.nextafter(f, np.float32(-np.inf))),
            ]
            vals += [float(np.nextafter(s, np.inf)), float(np.nextafter(s, -np.inf))]
    return np.asarray(vals, dtype=np.float64)


def edge_case_inputs(
    env_id: str, width: int, rng: np.random.Generator, rows: int = 4000
) -> np.ndarray:
    """float64 [rows, width]: healthy-looking random rows with one or two coordinates (z, angle,
    a random one, the last one, index 26/27 around Ant's finiteness slice) set to a bound,
    the float32 neighbours of a bound, NaN or +-Inf."""
    family = family_of(env_id)
    x = rng.uniform(-0.15, 0.15, size=(rows, width))
    x[:, 0] = HEALTHY_Z.get(family, x[:, 0])
    x[:, 0] += rng.uniform(-0.05, 0.05, size=rows)
    special = _special_values()
    for _ in range(2):
        cols = rng.choice(
            np.array(sorted({0, 1, width - 1, min(26, width - 1), min(27, width - 1)})), size=rows
        )
        cols = np.where(rng.random(rows) < 0.3, rng.integers(0, width, size=rows), cols)
        hit = rng.random(rows) < 0.8
        x[np.flatnonzero(hit), cols[hit]] = rng.choice(special, size=hit.sum())
    return x


@pytest.mark.parametrize("env_id", list(WIDTHS))
def test_backend_matches_reference_on_edge_cases(backend, env_id, rng):
    fn = termination_fn(env_id)
    family = family_of(env_id)
    for width in WIDTHS[env_id]:
        x64 = edge_case_inputs(env_id, width, rng)
        with np.errstate(over="ignore"):  # 1e300 -> inf in float32, on purpose
            x32 = x64.astype(np.float32)
        for x in (x64, x32):
            want = reference_terminated(family, x)
            got = backend.termination(fn.native_id, x)
            bad = np.flatnonzero(got != want)
            assert bad.size == 0, (
                f"{env_id} width {width} {x.dtype}: rows {bad[:5]} e.g. {x[bad[:1]]}"
            )
            if family not in ("HalfCheetah", "Pendulum"):
                assert 0 < want.sum() < len(want)


def test_native_and_numba_agree_bit_for_bit(rng):
    if "native" not in _backend.available():
        pytest.skip("native extension not built")
    native, numba = _backend.get("native"), _backend.get("numba")
    for env_id, widths in WIDTHS.items():
        tid = native.termination_id(env_id)
        assert numba.termination_id(env_id) == tid
        for width in widths:
            x = edge_case_inputs(env_id, width, rng, rows=3000)
            with np.errstate(over="ignore"):
                x32 = x.astype(np.float32)
            for arr in (x, x32):
                np.testing.assert_array_equal(
                    native.termination(tid, arr), numba.termination(tid, arr)
                )
    big = rng.uniform(-0.3, 1.3, size=(300_007, 11)).astype(np.float32)  # threaded native
    np.testing.assert_array_equal(native.termination(1, big), numba.termination(1, big))
    np.testing.assert_array_equal(native.termination(1, big), reference_terminated("Hopper", big))
    assert native.termination_env_ids() == numba.termination_env_ids() == list(KNOWN_ENV_IDS)


def test_ids_are_stable_and_shared(backend):
    expected = {
        "Hopper": TerminationId.HOPPER,
        "Walker2d": TerminationId.WALKER2D,
        "HalfCheetah": TerminationId.HALF_CHEETAH,
        "Ant": TerminationId.ANT,
        "Humanoid": TerminationId.HUMANOID,
        "InvertedPendulum": TerminationId.INVERTED_PENDULUM,
        "Pendulum": TerminationId.PENDULUM,
    }
    assert [int(v) for v in TerminationId] == list(range(8))
    for env_id in KNOWN_ENV_IDS:
        fn = termination_fn(env_id)
        assert fn.env_id == env_id
        assert fn.native_id == backend.termination_id(env_id) == expected[family_of(env_id)]


def test_never_id_accepts_any_width(backend):
    x = np.full((3, 5), np.nan, dtype=np.float32)
    assert not backend.termination(int(TerminationId.NEVER), x).any()
    with pytest.raises(ValueError, match="next_obs"):
        backend.termination(int(TerminationId.NEVER), np.zeros((3, 0), np.float32))


# ----------------------------------------------------------------------------------------------
# Python API: shapes, dtypes, torch, errors


def test_shapes_dtypes_and_ignored_arguments(backend, rng):
    fn = termination_fn("Walker2d-v5")
    x = rng.uniform(0.5, 2.2, size=(4, 6, 17))
    got = fn(rng.normal(size=(4, 6, 17)), rng.normal(size=(4, 6, 6)), x)
    assert got.shape == (4, 6) and got.dtype == np.bool_
    np.testing.assert_array_equal(
        got.reshape(-1), reference_terminated("Walker2d", x.reshape(-1, 17))
    )
    single = fn(None, None, x[0, 0])
    assert single.shape == () and bool(single) == bool(got[0, 0])
    assert fn(None, None, np.zeros((0, 17), np.float32)).shape == (0,)
    ints = np.ones((2, 17), dtype=np.int64)  # converted like any numeric input
    np.testing.assert_array_equal(fn(None, None, ints), reference_terminated("Walker2d", ints))
    assert not termination_fn("Pendulum-v1")(None, None, rng.normal(size=(5, 3))).any()


def test_torch_tensors_give_torch_bool_tensors(backend, rng):
    torch = pytest.importorskip("torch")
    fn = termination_fn("Hopper-v5")
    x = rng.uniform(-0.3, 1.3, size=(257, 11))
    want = reference_terminated("Hopper", x)
    for t in (
        torch.from_numpy(x),
        torch.from_numpy(x).float(),
        torch.from_numpy(x).to(torch.bfloat16),
    ):
        got = fn(None, None, t.requires_grad_(t.is_floating_point()))
        assert isinstance(got, torch.Tensor) and got.dtype == torch.bool and got.shape == (257,)
        ref = (
            reference_terminated("Hopper", t.detach().float().numpy())
            if t.dtype == torch.bfloat16
            else want
        )
        np.testing.assert_array_equal(got.numpy(), ref)


def test_unknown_env_id_lists_known_ids_and_custom_callables():
    with pytest.raises(ValueError) as info:
        termination_fn("InvertedDoublePendulum-v5")
    msg = str(info.value)
    assert "InvertedDoublePendulum-v5" in msg and "callable" in msg and "termination=" in msg
    for env_id in KNOWN_ENV_IDS:
        assert env_id in msg
    with pytest.raises(TypeError, match="env_id"):
        termination_fn(3)  # type: ignore[arg-type]


def test_wrong_width_and_bad_arguments(backend):
    fn = termination_fn("Hopper-v5")
    with pytest.raises(ValueError, match=r"next_obs.*11.*got 12"):
        fn(None, None, np.zeros((4, 12), np.float32))
    with pytest.raises(ValueError, match=r"next_obs.*27.*105.*got 28"):
        termination_fn("Ant-v5")(None, None, np.zeros((4, 28), np.float32))
    with pytest.raises(ValueError, match="next_obs"):
        fn(None, None, np.float32(1.0))
    with pytest.raises(ValueError, match="termination_id"):
        backend.termination(99, np.zeros((2, 11), np.float32))
    with pytest.raises(ValueError, match="termination_id"):
        backend.termination(-1, np.zeros((2, 11), np.float32))
    with pytest.raises(ValueError, match="next_obs"):
        backend.termination(1, np.zeros(11, np.float32))
    with pytest.raises(TypeError, match="next_obs"):
        backend.termination(1, np.array([["a"] * 11]))
    with pytest.raises(ValueError, match="env_id"):
        backend.termination_id("Hopper-v9")


def test_custom_callables_and_pickling():
    def mine(obs, act, next_obs):
        return next_obs[:, 0] < 0.3

    assert as_termination_fn(mine) is mine
    built = as_termination_fn("Ant-v5")
    assert built.env_id == "Ant-v5" and built.native_id == int(TerminationId.ANT)
    with pytest.raises(TypeError, match="termination"):
        as_termination_fn(42)  # type: ignore[arg-type]
    clone = pickle.loads(pickle.dumps(termination_fn("Humanoid-v5")))
    assert clone.env_id == "Humanoid-v5" and clone.native_id == int(TerminationId.HUMANOID)
    assert repr(clone) == "termination_fn('Humanoid-v5')"
    assert mbpo_fast.termination_fn is termination_fn


@pytest.mark.gpu
def test_cuda_tensors_use_the_cuda_kernel(rng):
    torch = pytest.importorskip("torch")
    for env_id, widths in WIDTHS.items():
        fn = termination_fn(env_id)
        for width in widths:
            with np.errstate(over="ignore"):
                x = edge_case_inputs(env_id, width, rng, rows=5000).astype(np.float32)
            got = fn(None, None, torch.from_numpy(x).cuda())
            assert got.is_cuda and got.dtype == torch.bool
            np.testing.assert_array_equal(
                got.cpu().numpy(), reference_terminated(family_of(env_id), x)
            )
    big = torch.from_numpy(rng.uniform(-0.3, 1.3, size=(3, 70_001, 11))).cuda()  # float64 input
    got = termination_fn("Hopper-v5")(None, None, big)
    assert got.shape == (3, 70_001)
    want = reference_terminated("Hopper", big.float().cpu().numpy().reshape(-1, 11))
    np.testing.assert_array_equal(got.cpu().numpy().reshape(-1), want)
