"""MBPO hyperparameters: one typed dataclass, the paper's table, and CLI overrides.

Every field has a one-line docstring (the string literal right under it, CleanRL style)::

    cfg = MBPOConfig.for_env("Hopper-v5")                 # the paper's numbers (DESIGN §5)
    cfg = cfg.with_overrides(["total_steps=50000", "seed=3"])
    cfg.rollout_length(epoch=60)                           # schedule -> 5
    cfg.model_pool_capacity(5)                             # 100000 * 5 * 4 * 1 = 2,000,000

``MBPOConfig()`` (no arguments) is the quick Pendulum-v1 setting that the ``mbpo-fast train``
default runs; see :meth:`MBPOConfig.for_env` for why those values.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KNOWN_CONFIG_ENVS", "MBPOConfig"]


@dataclass
class MBPOConfig:
    """Hyperparameters of one MBPO run (defaults: the quick Pendulum-v1 setting)."""

    # ---------------------------------------------------------------- environment / run
    env_id: str = "Pendulum-v1"
    """gymnasium environment id (training and evaluation use separate instances)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments for ``gymnasium.make`` (e.g. Ant's ``include_cfrc_ext_in_observation``)."""
    total_steps: int = 5_000
    """real environment steps of the whole run, the initial random steps included."""
    seed: int = 0
    """one seed for everything: python, numpy, torch, envs, action space, pools, Philox streams."""
    device: str = "cpu"
    """torch device of the SAC networks and the ensemble ("cpu", "cuda", "cuda:1")."""
    logdir: str | None = None
    """output directory; None -> ``runs/<env>-<seed>-<timestamp>``."""

    trainer: str = "auto"
    """training backend of SAC and the ensemble: "auto" (native where the extension is built
    and the device is the CPU, else torch), "native" or "torch"; a run can switch at a resume."""
    autocast_bf16: bool = False
    """bf16 matmul inputs (float32 weights, Adam and accumulation) in SAC updates and model fits."""

    # ---------------------------------------------------------------- model rollouts: extensions
    termination: str = "builtin"
    """termination of model rollouts: "builtin" (the env's termination function) or "learned"
    (a TerminationModel fitted on the real pool with every ensemble training; it runs natively
    inside the rollout)."""
    max_disagreement: float | str | None = None
    """stop a model-rollout row whose ensemble disagreement d(s, a) exceeds this (a float, or
    "q0.9": that quantile of d over each rollout's start states), before storing it; None: off."""
    uncertainty_penalty: float = 0.0
    """model-rollout rewards are stored as r - uncertainty_penalty * sqrt(d(s, a)); 0: off."""

    # ---------------------------------------------------------------- schedule
    epoch_length: int = 200
    """env steps per epoch; the rollout schedule is indexed by :meth:`epoch_at` (epochs count
    from the end of the random phase, as in the original MBPO)."""
    init_random_steps: int = 400
    """uniformly random actions before any model or SAC training."""
    model_train_freq: int = 200
    """env steps between model trainings (each followed by a fresh batch of rollouts)."""
    num_sac_updates: int = 10
    """SAC gradient updates per real env step (after the random phase)."""
    rollout_batch_size: int = 4_000
    """start states per batch of branched rollouts."""
    rollout_schedule: tuple[int, int, int, int] = (2, 10, 1, 5)
    """(e0, e1, k0, k1): rollout length k0 up to epoch e0, k1 from epoch e1, linear in between."""
    retain_epochs: int = 5
    """epochs of rollouts the model pool keeps (it is a FIFO sized from this, see capacity)."""
    real_ratio: float = 0.05
    """fraction of real transitions inside every SAC batch (the rest comes from the model pool)."""

    # ---------------------------------------------------------------- SAC
    gamma: float = 0.99
    """discount factor."""
    tau: float = 5e-3
    """Polyak rate of the target critics per update."""
    sac_lr: float = 3e-4
    """Adam learning rate of actor, critics and temperature."""
    sac_hidden_size: int = 256
    """hidden units per layer of the actor and the critics."""
    sac_num_layers: int = 2
    """hidden layers of the actor and the critics."""
    sac_batch_size: int = 256
    """transitions per SAC update."""
    target_entropy: float | None = None
    """entropy target of the automatic temperature tuning; None -> -act_dim."""

    # ---------------------------------------------------------------- model
    ensemble_size: int = 7
    """probabilistic networks in the dynamics ensemble."""
    num_elites: int = 5
    """members with the lowest holdout error used for rollouts."""
    model_hidden_size: int = 200
    """hidden units per layer of each ensemble member."""
    model_num_layers: int = 4
    """hidden layers of each ensemble member."""
    holdout_ratio: float = 0.2
    """fraction of the real pool held out for early stopping and elite selection."""
    max_holdout: int = 5_000
    """cap on the holdout rows."""
    model_max_epochs: int | None = None
    """optional cap on epochs per model training; the paper has none (early stopping only)."""
    model_max_seconds: float | None = None
    """optional wall-clock cap per model training; the paper has none."""

    # ---------------------------------------------------------------- evaluation / output
    eval_freq: int = 1_000
    """env steps between deterministic evaluations (also evaluated at the end)."""
    eval_episodes: int = 5
    """episodes per evaluation, on a separate env seeded from ``seed``."""
    checkpoint_freq: int = 1_000
    """env steps between checkpoints (one is also written at the end); 0 disables periodic ones."""

    # ================================================================ derived quantities
    def epoch_at(self, env_steps: int) -> int:
        """The schedule's epoch at `env_steps` real steps: ``max(0, env_steps -
        init_random_steps) // epoch_length``.

        Epoch 0 is the first ``epoch_length`` steps AFTER the random phase, as in the original
        MBPO (jannerm/mbpo collects the initial exploration steps before its epoch loop, whose
        counter starts at 0); indexing by ``env_steps // epoch_length`` instead would grow the
        rollouts ``init_random_steps / epoch_length`` epochs early (5 on Hopper).
        """
        return max(0, int(env_steps) - self.init_random_steps) // self.epoch_length

    def rollout_length(self, epoch: int) -> int:
        """Rollout horizon at `epoch`: ``k0`` up to ``e0``, ``k1`` from ``e1``, linear between.

        Rounds like the original MBPO (``int()`` of the interpolated value, which truncates);
        works for increasing and decreasing schedules. Always >= 1.
        """
        e0, e1, k0, k1 = self.rollout_schedule
        if epoch <= e0:
            y: float = k0
        elif epoch >= e1:
            y = k1
        else:
            y = k0 + (epoch - e0) / (e1 - e0) * (k1 - k0)
            y = min(max(y, min(k0, k1)), max(k0, k1))
        return max(1, int(y))

    def model_pool_capacity(self, rollout_length: int) -> int:
        """Model-pool rows: ``rollout_batch_size * rollout_length * (epoch_length //
        model_train_freq) * retain_epochs`` (the rollouts of ``retain_epochs`` epochs)."""
        per_epoch = max(1, self.epoch_length // self.model_train_freq)
        return self.rollout_batch_size * int(rollout_length) * per_epoch * self.retain_epochs

    # ================================================================ validation
    def __post_init__(self) -> None:
        self.rollout_schedule = tuple(int(v) for v in self.rollout_schedule)  # type: ignore[assignment]
        self.env_kwargs = dict(self.env_kwargs)
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the first field with an impossible value."""
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"MBPOConfig.{name}: {why}, got {getattr(self, name)!r}")

        if not isinstance(self.env_id, str) or not self.env_id:
            raise bad("env_id", "must be a non-empty gymnasium id")
        for name in ("total_steps", "epoch_length", "model_train_freq", "num_sac_updates",
                     "rollout_batch_size", "retain_epochs", "sac_hidden_size", "sac_num_layers",
                     "sac_batch_size", "ensemble_size", "num_elites", "model_hidden_size",
                     "model_num_layers", "max_holdout", "eval_freq", "eval_episodes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise bad(name, "must be a positive int")
        for name in ("init_random_steps", "checkpoint_freq", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise bad(name, "must be a non-negative int")
        if len(self.rollout_schedule) != 4:
            raise bad("rollout_schedule", "must be (e0, e1, k0, k1)")
        e0, e1, k0, k1 = self.rollout_schedule
        if e1 < e0 or k0 < 1 or k1 < 1 or e0 < 0:
            raise bad("rollout_schedule", "needs 0 <= e0 <= e1 and k0, k1 >= 1")
        if self.num_elites > self.ensemble_size:
            raise bad("num_elites", f"must be <= ensemble_size ({self.ensemble_size})")
        for name, lo, hi in (("real_ratio", 0.0, 1.0), ("gamma", 0.0, 1.0), ("tau", 0.0, 1.0)):
            v = float(getattr(self, name))
            if not (lo <= v <= hi) or not math.isfinite(v):
                raise bad(name, f"must be in [{lo}, {hi}]")
        if not 0.0 <= float(self.holdout_ratio) < 1.0:
            raise bad("holdout_ratio", "must be in [0, 1)")
        if not (self.sac_lr > 0 and math.isfinite(self.sac_lr)):
            raise bad("sac_lr", "must be a positive finite float")
        if self.model_max_epochs is not None and self.model_max_epochs <= 0:
            raise bad("model_max_epochs", "must be None or a positive int")
        if self.model_max_seconds is not None and not self.model_max_seconds > 0:
            raise bad("model_max_seconds", "must be None or a positive float")
        if self.trainer not in ("auto", "native", "torch"):
            raise bad("trainer", "must be 'auto', 'native' or 'torch'")
        if not isinstance(self.autocast_bf16, bool):
            raise bad("autocast_bf16", "must be true or false")
        if self.target_entropy is not None and not math.isfinite(self.target_entropy):
            raise bad("target_entropy", "must be None or finite")
        if self.termination not in ("builtin", "learned"):
            raise bad("termination", "must be 'builtin' or 'learned'")
        if not (math.isfinite(self.uncertainty_penalty) and self.uncertainty_penalty >= 0):
            raise bad("uncertainty_penalty", "must be a finite float >= 0")
        from .rollout import parse_max_disagreement

        try:
            parse_max_disagreement(self.max_disagreement)
        except ValueError as exc:
            raise bad("max_disagreement", str(exc).split(": ", 1)[-1].split(", got")[0]) from None

    # ================================================================ (de)serialization
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["rollout_schedule"] = list(self.rollout_schedule)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MBPOConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError listing the valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"MBPOConfig: unknown field(s) {unknown}; valid: {sorted(names)}")
        return cls(**{k: _coerce(cls, k, v) for k, v in d.items()})

    @classmethod
    def from_json(cls, text: str) -> MBPOConfig:
        return cls.from_dict(json.loads(text))

    def with_overrides(self, overrides: list[str] | tuple[str, ...]) -> MBPOConfig:
        """A copy with ``"key=value"`` strings applied, each parsed and type-checked for its field.

        Values: ints/floats as literals, ``none``/``null`` for optional fields, ``true``/``false``,
        tuples and dicts as JSON (``rollout_schedule=[20,150,1,15]``,
        ``env_kwargs={"include_cfrc_ext_in_observation": false}``). Raises ValueError for an
        unknown key (listing the valid ones), a missing ``=`` or a value of the wrong type.
        """
        d = self.to_dict()
        names = {f.name for f in dataclasses.fields(self)}
        for item in overrides:
            if not isinstance(item, str) or "=" not in item:
                raise ValueError(f"override {item!r}: expected key=value")
            key, raw = (s.strip() for s in item.split("=", 1))
            if key not in names:
                raise ValueError(f"override {item!r}: unknown key {key!r}; valid keys: "
                                 f"{', '.join(sorted(names))}")
            d[key] = _parse_value(type(self), key, raw)
        return type(self).from_dict(d)

    # ================================================================ the paper's table
    @classmethod
    def for_env(cls, env_id: str, **overrides: Any) -> MBPOConfig:
        """The hyperparameters of the original MBPO for `env_id` (DESIGN §5).

        Known: Hopper, Walker2d, HalfCheetah, Ant, Humanoid, InvertedPendulum (gymnasium v5;
        the v4 ids map to the same numbers) and Pendulum-v1, a quick first run not in the
        paper: 5,000 steps, 200-step epochs (= one episode), 400 random steps, model every 200
        steps with rollouts of 4,000 starts growing from 1 to 5 steps over epochs 2-10 (the
        pendulum model is accurate enough for it), 10 SAC updates per step (the paper's 20-40
        cost twice the time on a laptop CPU and Pendulum does not need them). Other ids raise
        ValueError listing the known ones. `overrides` are field=value keywords applied last.
        """
        if env_id not in _PAPER:
            raise ValueError(f"MBPOConfig.for_env: no preset for {env_id!r}; known: "
                             f"{', '.join(KNOWN_CONFIG_ENVS)}. Build MBPOConfig(env_id=...) "
                             "yourself for other tasks.")
        values = dict(_PAPER[env_id])
        values["env_id"] = env_id
        values.update(overrides)
        return cls(**values)


def _shared(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        epoch_length=1000, init_random_steps=5000, model_train_freq=250,
        rollout_batch_size=100_000, retain_epochs=1, real_ratio=0.05, gamma=0.99, tau=5e-3,
        sac_lr=3e-4, sac_hidden_size=256, sac_num_layers=2, sac_batch_size=256,
        ensemble_size=7, num_elites=5, model_hidden_size=200, model_num_layers=4,
        holdout_ratio=0.2, max_holdout=5000, model_max_epochs=None, model_max_seconds=None,
        eval_freq=1000, eval_episodes=5, checkpoint_freq=5000)
    base.update(kw)
    return base


_PAPER_V5: dict[str, dict[str, Any]] = {
    "Hopper-v5": _shared(total_steps=125_000, num_sac_updates=20,
                         rollout_schedule=(20, 150, 1, 15), target_entropy=-1.0),
    "Walker2d-v5": _shared(total_steps=300_000, num_sac_updates=20,
                           rollout_schedule=(20, 150, 1, 1), target_entropy=-3.0),
    "HalfCheetah-v5": _shared(total_steps=400_000, num_sac_updates=40,
                              rollout_schedule=(20, 150, 1, 1), target_entropy=-3.0),
    "Ant-v5": _shared(total_steps=300_000, num_sac_updates=20,
                      rollout_schedule=(20, 100, 1, 25), target_entropy=-4.0,
                      env_kwargs={"include_cfrc_ext_in_observation": False}),
    "Humanoid-v5": _shared(total_steps=300_000, num_sac_updates=20,
                           rollout_schedule=(20, 300, 1, 25), target_entropy=-2.0,
                           model_hidden_size=400, model_train_freq=1000, retain_epochs=5,
                           env_kwargs={"include_cinert_in_observation": False,
                                       "include_cvel_in_observation": False,
                                       "include_qfrc_actuator_in_observation": False,
                                       "include_cfrc_ext_in_observation": False}),
    "InvertedPendulum-v5": _shared(total_steps=15_000, num_sac_updates=10, epoch_length=250,
                                   init_random_steps=500, rollout_schedule=(1, 15, 1, 1),
                                   target_entropy=-0.05, eval_freq=250, checkpoint_freq=1000),
}

_PAPER: dict[str, dict[str, Any]] = dict(_PAPER_V5)
for _v5, _values in _PAPER_V5.items():
    _PAPER[_v5.replace("-v5", "-v4")] = _values  # same numbers; v4 has the same obs options
_PAPER["Pendulum-v1"] = {f.name: f.default for f in dataclasses.fields(MBPOConfig)
                         if f.default is not dataclasses.MISSING}
_PAPER["Pendulum-v1"]["env_kwargs"] = {}

#: env ids with a preset in :meth:`MBPOConfig.for_env`.
KNOWN_CONFIG_ENVS: tuple[str, ...] = tuple(sorted(_PAPER))


# ---------------------------------------------------------------------- parsing helpers
def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _parse_value(cls: type, name: str, raw: str) -> Any:
    """Parses the override text `raw` for field `name`, then type-checks it via _coerce."""
    low = raw.lower()
    if low in ("none", "null"):
        value: Any = None
    elif low in ("true", "false"):
        value = low == "true"
    else:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # a bare string (env_id=Hopper-v5, device=cuda)
    return _coerce(cls, name, value)


def _coerce(cls: type, name: str, value: Any) -> Any:
    """Checks `value` against the annotation of field `name` (ints may widen to float)."""
    tp = _field_type(cls, name)
    is_union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    options = typing.get_args(tp) if is_union else (tp,)
    for opt in options:
        if opt is type(None):
            if value is None:
                return None
            continue
        origin = typing.get_origin(opt) or opt
        if origin is bool:
            if isinstance(value, bool):
                return value
        elif origin is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
        elif origin is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif origin is str:
            if isinstance(value, str):
                return value
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)  # e.g. device=0 is unusual but textual
        elif origin is tuple:
            args = typing.get_args(opt)
            if isinstance(value, (list, tuple)) and len(value) == len(args) and all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value):
                return tuple(value)
        elif origin is dict:
            if isinstance(value, dict):
                return dict(value)
    raise ValueError(f"MBPOConfig.{name}: expected {_type_name(tp)}, got {value!r}")


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")
