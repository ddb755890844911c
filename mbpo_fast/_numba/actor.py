"""Numba mirror of the native SAC actor op ``actor_act`` (csrc/include/mbpo_fast/actor.h).

Same arguments, validation and randomness as the native op: the noise of element j of row
i is ``random_normal(seed, STREAM_POLICY_NOISE, noise_offset + i * act_dim + j)``. The layers
run as float32 BLAS matmuls with ReLU between them; the tanh-squashed Gaussian epilogue
(clamp of log_std, squash, scale, log-prob; see kernels/actor_epilogue.h) is an njit loop.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from .ensemble import _as_f32, _require_finite, _shape_str
from .rng import STREAM_POLICY_NOISE, random_normal

_MAX_LAYERS = 16
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG2 = math.log(2.0)


def _check_u64(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int in [0, 2**64), got {type(value).__name__}")
    value = int(value)
    if not 0 <= value < 1 << 64:
        raise ValueError(f"{name}: expected an int in [0, 2**64), got {value}")
    return value


class ActorParams:
    """The validated actor parameters of one call (contiguous float32, [in, out] per layer)."""

    def __init__(self, weights, biases, action_scale, action_bias, action_low=None,
                 action_high=None, log_std_min=-20.0, log_std_max=2.0,
                 wname: str = "weights", bname: str = "biases") -> None:
        weights, biases = list(weights), list(biases)
        if not 1 <= len(weights) <= _MAX_LAYERS:
            raise ValueError(f"{wname}: expected a list of 1..{_MAX_LAYERS} layer weights, "
                             f"got {len(weights)}")
        if len(biases) != len(weights):
            raise ValueError(f"{bname}: expected {len(weights)} arrays (one per weight), "
                             f"got {len(biases)}")
        self.weights, self.biases = [], []
        width = -1
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            wn, bn = f"{wname}[{i}]", f"{bname}[{i}]"
            batched = np.ndim(w) == 3
            if batched:  # the ensemble-of-one layout of SAC.actor_weights
                wa = _as_f32(w, wn, (1, width, -1))[0]
            else:
                wa = _as_f32(w, wn, (width, -1))
            k, n = wa.shape
            if k < 1 or n < 1:
                raise ValueError(f"{wn}: expected non-empty dimensions, got {_shape_str(wa.shape)}")
            ba = _as_f32(b, bn, (1, n))[0] if batched else _as_f32(b, bn, (n,))
            self.weights.append(wa)
            self.biases.append(ba)
            width = n
        self.obs_dim = self.weights[0].shape[0]
        if width < 2 or width % 2:
            raise ValueError(f"{wname}[-1]: the output width must be 2 * act_dim (mean, log_std), "
                             f"got {width}")
        a = width // 2
        self.act_dim = a
        self.scale = _as_f32(action_scale, "action_scale", (a,))
        self.bias = _as_f32(action_bias, "action_bias", (a,))
        if (action_low is None) != (action_high is None):
            raise ValueError("action_low, action_high: give both or neither")
        for j in range(a):
            s = self.scale[j]
            if not (math.isfinite(s) and s > 0):
                raise ValueError(f"action_scale: every entry must be finite and > 0, got {s} "
                                 f"at index {j}")
            if not math.isfinite(self.bias[j]):
                raise ValueError(f"action_bias: every entry must be finite, got {self.bias[j]} "
                                 f"at index {j}")
        if action_low is None:
            self.low = (self.bias - self.scale).astype(np.float32)
            self.high = (self.bias + self.scale).astype(np.float32)
        else:
            self.low = _as_f32(action_low, "action_low", (a,))
            self.high = _as_f32(action_high, "action_high", (a,))
            for j in range(a):
                lo, hi = self.low[j], self.high[j]
                if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                    raise ValueError(f"action_low/action_high: expected finite low <= high, got "
                                     f"low={lo}, high={hi} at index {j}")
        self.log_std_min = float(np.float32(log_std_min))
        self.log_std_max = float(np.float32(log_std_max))
        if not (math.isfinite(self.log_std_min) and math.isfinite(self.log_std_max)
                and self.log_std_min <= self.log_std_max):
            raise ValueError(f"actor: expected finite log_std_min <= log_std_max, got "
                             f"{log_std_min}, {log_std_max}")

    def head(self, obs: np.ndarray) -> np.ndarray:
        """obs f32 [B, obs_dim] -> raw (mean, log_std) f32 [B, 2 * act_dim]."""
        h = obs
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ w
            h += b
            if i != last:
                np.maximum(h, np.float32(0.0), out=h)  # ReLU (keeps NaN, like torch.relu)
        return np.ascontiguousarray(h, dtype=np.float32)

    def act(self, obs: np.ndarray, seed: int, noise_offset: int, deterministic: bool):
        """Validated inputs -> (act f32 [B, act_dim], log_prob f32 [B])."""
        batch = obs.shape[0]
        act = np.empty((batch, self.act_dim), np.float32)
        log_prob = np.empty(batch, np.float32)
        if batch == 0:
            return act, log_prob
        _epilogue(self.head(obs), np.uint64(seed), np.uint64(noise_offset), bool(deterministic),
                  self.scale, self.bias, self.low, self.high, self.log_std_min, self.log_std_max,
                  act, log_prob)
        return act, log_prob


@nb.njit(cache=True, inline="always")
def _softplus(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@nb.njit(cache=True, inline="always")
def _clamp_keep_nan(x, lo, hi):
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x


@nb.njit(cache=True)
def _epilogue(head, seed, noise_offset, deterministic, scale, bias, low, high, ls_min, ls_max,
              act, log_prob):
    batch, a = act.shape
    for i in range(batch):
        lp = 0.0
        for j in range(a):
            mean = float(head[i, j])
            log_std = _clamp_keep_nan(float(head[i, a + j]), ls_min, ls_max)
            u = mean
            gauss = -log_std - _HALF_LOG_2PI
            if not deterministic:
                e = float(random_normal(seed, STREAM_POLICY_NOISE,
                                        noise_offset + np.uint64(i * a + j)))
                u = mean + math.exp(log_std) * e
                gauss = -0.5 * e * e - log_std - _HALF_LOG_2PI
            log_det = 2.0 * (_LOG2 - u - _softplus(-2.0 * u)) + math.log(float(scale[j]))
            lp += gauss - log_det
            value = math.tanh(u) * float(scale[j]) + float(bias[j])
            act[i, j] = np.float32(_clamp_keep_nan(value, float(low[j]), float(high[j])))
        log_prob[i] = np.float32(lp)


def actor_act(obs, weights, biases, action_scale, action_bias, seed=0, noise_offset=0,
              deterministic=False, action_low=None, action_high=None, log_std_min=-20.0,
              log_std_max=2.0):
    """SAC policy actions (see the native op): obs f32 [B, obs_dim]; weights[i] [in_i, out_i]
    or [1, in_i, out_i]; biases[i] [out_i] or [1, out_i]; action_scale/bias [act_dim].
    Returns (act f32 [B, act_dim], log_prob f32 [B])."""
    p = ActorParams(weights, biases, action_scale, action_bias, action_low, action_high,
                    log_std_min, log_std_max)
    seed = _check_u64("seed", seed)
    noise_offset = _check_u64("noise_offset", noise_offset)
    o = _as_f32(obs, "obs", (-1, p.obs_dim))
    _require_finite(o, "obs")
    return p.act(o, seed, noise_offset, deterministic)


class Actor:
    """An actor owning its weights, loaded from a file ``SAC.export_actor`` wrote (mirror of
    the native ``_C.Actor`` / C++ ``mbpo_fast::Actor``)."""

    def __init__(self, params: ActorParams) -> None:
        self._p = params

    @staticmethod
    def load(path) -> Actor:
        import os

        from ..io import load_safetensors

        tensors, meta = load_safetensors(path)
        src = os.fspath(path)
        fmt = meta.get("format")
        if fmt is not None and fmt != "mbpo_fast.actor/1":
            raise ValueError(f"{src}: metadata format is '{fmt}', expected 'mbpo_fast.actor/1'")
        if meta.get("activation", "relu") != "relu":
            raise ValueError(f"{src}: activation '{meta['activation']}' is not supported "
                             "(expected 'relu')")
        try:
            obs_dim, act_dim = int(meta["obs_dim"]), int(meta["act_dim"])
            hidden = int(meta["num_layers"])
            ls_min = float(meta.get("log_std_min", "-20"))
            ls_max = float(meta.get("log_std_max", "2"))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{src}: bad or missing metadata ({exc})") from None
        n_layers = hidden + 1
        if f"layers.{n_layers}.weight" in tensors:
            raise ValueError(f"{src}: holds more layers than metadata num_layers + 1 = {n_layers}")
        names = [f"layers.{i}.{k}" for i in range(n_layers) for k in ("weight", "bias")]
        box = [name for name in ("action_low", "action_high") if name in tensors]
        if len(box) == 1:
            raise ValueError(f"{src}: holds only one of action_low and action_high")
        for name in (*names, "action_scale", "action_bias", *box):
            if name not in tensors:
                raise ValueError(f"{src}: missing tensor '{name}'")
            if np.asarray(tensors[name]).dtype != np.float32:
                raise ValueError(f"{src}: tensor '{name}' must be float32")
        try:
            params = ActorParams([tensors[f"layers.{i}.weight"] for i in range(n_layers)],
                                 [tensors[f"layers.{i}.bias"] for i in range(n_layers)],
                                 tensors["action_scale"], tensors["action_bias"],
                                 action_low=tensors.get("action_low"),
                                 action_high=tensors.get("action_high"),
                                 log_std_min=ls_min, log_std_max=ls_max)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{src}: {exc}") from None
        if params.obs_dim != obs_dim or params.act_dim != act_dim:
            raise ValueError(f"{src}: layer shapes give obs_dim {params.obs_dim}, act_dim "
                             f"{params.act_dim}; metadata says {obs_dim}, {act_dim}")
        return Actor(params)

    obs_dim = property(lambda self: self._p.obs_dim)
    act_dim = property(lambda self: self._p.act_dim)

    @property
    def widths(self) -> list[int]:
        return [self._p.obs_dim] + [w.shape[1] for w in self._p.weights]

    def act(self, obs, seed=0, noise_offset=0, deterministic=False):
        """Like actor_act: (act f32 [B, act_dim], log_prob f32 [B])."""
        seed = _check_u64("seed", seed)
        noise_offset = _check_u64("noise_offset", noise_offset)
        o = _as_f32(obs, "obs", (-1, self._p.obs_dim))
        _require_finite(o, "obs")
        return self._p.act(o, seed, noise_offset, deterministic)
