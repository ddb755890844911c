"""Numba mirror of the fused ensemble inference ops (csrc/include/mbpo_fast/ensemble.h).

Same op names, arguments, validation and randomness as the native module: the member of
row i is ``elites[random_index(seed, STREAM_MEMBER_CHOICE, i, K)]`` and the noise of
output j is ``random_normal(seed, STREAM_MODEL_NOISE, i * (obs_dim + 1) + j)``, drawn from
the shared Philox streams, so member choices are identical to the native backend and the
values agree to float rounding. The layers run as float32 BLAS matmuls over the rows of
each member (only the chosen member is evaluated); the Philox draws and the epilogue are
njit loops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numba as nb
import numpy as np

from .rng import STREAM_MEMBER_CHOICE, STREAM_MODEL_NOISE, philox_block, random_index

_MAX_LAYERS = 16


# ---------------------------------------------------------------------------- validation


def _shape_str(shape) -> str:
    parts = ["*" if s is None or s < 0 else str(s) for s in shape]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def _as_f32(obj, name: str, expected: Sequence[int]) -> np.ndarray:
    """Contiguous float32 view/copy of `obj` with shape `expected` (-1 = any)."""
    try:
        arr = np.asarray(obj)
    except Exception as exc:  # pragma: no cover - numpy raises for exotic objects
        raise TypeError(f"{name}: expected a numeric array, got {type(obj).__name__}") from exc
    if arr.dtype.kind not in "fiub":
        raise TypeError(
            f"{name}: expected a real numeric dtype (float32 preferred), got {arr.dtype}"
        )
    ok = arr.ndim == len(expected) and all(
        e < 0 or e == g for e, g in zip(expected, arr.shape, strict=False)
    )
    if not ok:
        raise ValueError(
            f"{name}: expected shape {_shape_str(expected)}, got {_shape_str(arr.shape)}"
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


def _as_i64(obj, name: str, n: int) -> np.ndarray:
    arr = np.asarray(obj)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected an integer dtype (int64 preferred), got {arr.dtype}")
    if arr.ndim != 1 or (n >= 0 and arr.shape[0] != n):
        raise ValueError(f"{name}: expected shape {_shape_str((n,))}, got {_shape_str(arr.shape)}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _require_finite(arr: np.ndarray, name: str) -> None:
    flat = arr.reshape(-1)
    bad = ~np.isfinite(flat)
    if bad.any():
        raise ValueError(
            f"{name}: contains a non-finite value (NaN or Inf) at flat index {int(np.argmax(bad))}"
        )


def _require_range(arr: np.ndarray, name: str, n: int) -> None:
    bad = (arr < 0) | (arr >= n)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name}: entry {i} = {int(arr[i])} is out of range [0, {n})")


class _Params:
    """The validated parameters of one call (contiguous float32; copied only when they are not)."""

    def __init__(
        self,
        input_mean,
        input_std,
        weights,
        biases,
        max_logvar,
        min_logvar,
        elites=None,
        weights_bf16=None,
    ):
        weights, biases = list(weights), list(biases)
        if not 1 <= len(weights) <= _MAX_LAYERS:
            raise ValueError(
                f"weights: expected a list of 1..{_MAX_LAYERS} layer weights, got {len(weights)}"
            )
        if len(biases) != len(weights):
            raise ValueError(
                f"biases: expected {len(weights)} arrays (one per weight), got {len(biases)}"
            )
        self.input_mean = _as_f32(input_mean, "input_mean", (-1,))
        in_dim = self.input_mean.shape[0]
        self.input_std = _as_f32(input_std, "input_std", (in_dim,))
        last = _as_f32(weights[-1], "weights[-1]", (-1, -1, -1))
        out_width = last.shape[2]
        if out_width < 4 or out_width % 2:
            raise ValueError(
                "weights[-1]: the output width must be 2 * (obs_dim + 1) (even, >= 4), "
                f"got {out_width}"
            )
        self.obs_dim = out_width // 2 - 1
        self.act_dim = in_dim - self.obs_dim
        if self.act_dim < 0:
            raise ValueError(
                f"input_mean: length {in_dim} is smaller than obs_dim = {self.obs_dim} "
                "(from weights[-1])"
            )
        self.weights, self.biases = [], []
        ens, width = -1, in_dim
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            w = _as_f32(w, f"weights[{i}]", (ens, width, -1))
            ens = w.shape[0]
            if ens < 1 or w.shape[2] < 1:
                raise ValueError(
                    f"weights[{i}]: expected non-empty dimensions, got {_shape_str(w.shape)}"
                )
            b = _as_f32(b, f"biases[{i}]", (ens, w.shape[2]))
            self.weights.append(w)
            self.biases.append(b)
            width = w.shape[2]
        self.ensemble_size = ens
        od1 = self.obs_dim + 1
        self.max_logvar = _as_f32(max_logvar, "max_logvar", (od1,))
        self.min_logvar = _as_f32(min_logvar, "min_logvar", (od1,))
        _require_finite(self.input_mean, "input_mean")
        _require_finite(self.input_std, "input_std")
        if not (self.input_std > 0).all():
            c = int(np.argmax(~(self.input_std > 0)))
            raise ValueError(
                f"input_std: every entry must be > 0, got {self.input_std[c]} at index {c}"
            )
        _require_finite(self.max_logvar, "max_logvar")
        _require_finite(self.min_logvar, "min_logvar")
        self.bf16 = weights_bf16 is not None
        if self.bf16:
            # The bf16 path: weights widened from the packed bf16 values, inputs of every
            # layer rounded to bf16, products accumulated in float32 (as the native kernel).
            self.weights = _unpack_bf16(weights_bf16, self.weights)
        self.elites = None
        if elites is not None:
            self.elites = _as_i64(elites, "elites", -1)
            _require_range(self.elites, "elites", ens)

    def inputs(self, obs, act) -> tuple[np.ndarray, np.ndarray]:
        obs = _as_f32(obs, "obs", (-1, self.obs_dim))
        act = _as_f32(act, "act", (obs.shape[0], self.act_dim))
        _require_finite(obs, "obs")
        _require_finite(act, "act")
        return obs, act

    def normalized(self, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        x = np.concatenate([obs, act], axis=1)
        return (x - self.input_mean) / self.input_std

    def forward(self, member: int, x: np.ndarray) -> np.ndarray:
        """Output layer [rows, 2 * (obs_dim + 1)] of `member` on normalized inputs x."""
        h = x
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if self.bf16:
                h = _widen(_round_bf16(h))
            h = h @ w[member]
            h += b[member]
            if i < last:
                with np.errstate(over="ignore"):  # exp(-h) = inf for h < -88: SiLU -> -0, correct
                    h = h / (np.float32(1.0) + np.exp(-h))
        return h

    def epilogue(self, head, rows, obs, seed, deterministic, next_obs, rew) -> None:
        """_step_epilogue with this model's log-variance bounds: writes rows `rows`."""
        _step_epilogue(head, rows, obs, self.max_logvar, self.min_logvar, seed,
                       bool(deterministic), next_obs, rew)


def _elite_params(input_mean, input_std, weights, biases, max_logvar, min_logvar, elites,
                  weights_bf16=None, none_error: str | None = None) -> _Params:
    """_Params of a model that has to draw elites (a rollout, a planner, a handle): ValueError
    `none_error` for elites None (when given), and for no elite at all."""
    if elites is None and none_error is not None:
        raise ValueError(none_error)
    p = _Params(input_mean, input_std, weights, biases, max_logvar, min_logvar, elites,
                weights_bf16)
    if p.elites is None or p.elites.shape[0] < 1:
        raise ValueError("elites: expected at least one elite index, got none")
    return p


def _seed_u64(seed) -> np.uint64:
    seed = int(seed)
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"seed: expected an integer in [0, 2**64), got {seed}")
    return np.uint64(seed)


# ---------------------------------------------------------------------------- bf16


def _round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits (uint16), round to nearest even (finite inputs)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> 16).astype(
        np.uint16
    )


def _widen(h: np.ndarray) -> np.ndarray:
    return (h.astype(np.uint32) << np.uint32(16)).view(np.float32)


def _unpack_bf16(weights_bf16, weights: list[np.ndarray]) -> list[np.ndarray]:
    """float32 [E, in, out] weights from the packed [E, ceil(in/2), out, 2] bf16 arrays."""
    weights_bf16 = list(weights_bf16)
    if len(weights_bf16) != len(weights):
        raise ValueError(
            f"weights_bf16: expected a list of {len(weights)} packed arrays "
            "(ensemble_pack_bf16(weights)) or None"
        )
    out = []
    for i, (packed, w) in enumerate(zip(weights_bf16, weights, strict=True)):
        ens, k, n = w.shape
        expected = (ens, _pad16((k + 1) // 2), _pad16(n), 2)
        if not isinstance(packed, np.ndarray) or packed.dtype != np.uint16:
            raise TypeError(
                f"weights_bf16[{i}]: expected a uint16 numpy array from ensemble_pack_bf16"
            )
        if packed.shape != expected or not packed.flags.c_contiguous:
            raise ValueError(
                f"weights_bf16[{i}]: expected a C-contiguous array of shape "
                f"{_shape_str(expected)}, got {_shape_str(packed.shape)}"
            )
        full = packed.transpose(0, 1, 3, 2).reshape(ens, 2 * expected[1], expected[2])[:, :k, :n]
        out.append(np.ascontiguousarray(_widen(full)))
    return out


def _pad16(n: int) -> int:
    return (n + 15) // 16 * 16


def ensemble_pack_bf16(weights) -> list[np.ndarray]:
    """Packs float32 weights [E, in, out] into bf16 [E, P, C, 2], P = ceil(ceil(in/2)/16)*16,
    C = ceil(out/16)*16 (k pairs interleaved, zero padding, round to nearest even) for the
    weights_bf16 argument of the ensemble ops. A snapshot: pack again after the weights change."""
    out = []
    for i, w in enumerate(weights):
        w = _as_f32(w, f"weights[{i}]", (-1, -1, -1))
        ens, k, n = w.shape
        if min(ens, k, n) < 1:
            raise ValueError(f"weights[{i}]: expected non-empty dimensions")
        _require_finite(w, f"weights[{i}]")
        padded = np.zeros((ens, 2 * _pad16((k + 1) // 2), _pad16(n)), dtype=np.float32)
        padded[:, :k, :n] = w
        bits = _round_bf16(padded).reshape(ens, -1, 2, padded.shape[2]).transpose(0, 1, 3, 2)
        out.append(np.ascontiguousarray(bits))
    return out


def ensemble_bf16_native() -> bool:
    """False: the Numba backend emulates bf16 (same rounding) in float32."""
    return False


def ensemble_bf16_amx() -> bool:
    """False: no AMX in the Numba backend."""
    return False


# ---------------------------------------------------------------------------- njit parts


@nb.njit(cache=True)
def _choose_members(seed, elites, batch, out):
    k = elites.shape[0]
    for i in range(batch):
        out[i] = elites[random_index(seed, STREAM_MEMBER_CHOICE, np.uint64(i), k)]


@nb.njit(cache=True, inline="always")
def _softplus(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@nb.njit(cache=True, inline="always")
def _soft_clamp(raw, max_lv, min_lv):
    lv = max_lv - _softplus(max_lv - raw)
    return min_lv + _softplus(lv - min_lv)


@nb.njit(cache=True, inline="always")
def _normal_from_block(b, index):
    # Box-Muller on the lane pair of `index` (identical to rng.box_muller).
    lane = index & np.uint64(3)
    if lane < 2:
        w0, w1 = b[0], b[1]
    else:
        w0, w1 = b[2], b[3]
    u1 = (float(w0 >> np.uint64(8)) + 1.0) * (1.0 / 16777216.0)
    u2 = float(w1 >> np.uint64(8)) * (1.0 / 16777216.0)
    r = math.sqrt(-2.0 * math.log(u1))
    theta = 6.283185307179586 * u2
    if lane & np.uint64(1):
        return np.float32(r * math.sin(theta))
    return np.float32(r * math.cos(theta))


@nb.njit(cache=True)
def _step_epilogue(head, rows, obs, max_lv, min_lv, seed, deterministic, next_obs, rew):
    """head [n, 2*(od+1)] for the original rows `rows` [n]; writes next_obs/rew at those rows."""
    od = obs.shape[1]
    od1 = od + 1
    for r in range(rows.shape[0]):
        row = rows[r]
        base = np.uint64(row) * np.uint64(od1)
        block = np.uint64(0xFFFFFFFFFFFFFFFF)
        b = philox_block(seed, STREAM_MODEL_NOISE, np.uint64(0))
        for j in range(od1):
            value = head[r, j]
            if not deterministic:
                index = base + np.uint64(j)
                if (index >> np.uint64(2)) != block:
                    block = index >> np.uint64(2)
                    b = philox_block(seed, STREAM_MODEL_NOISE, block)
                eps = _normal_from_block(b, index)
                lv = np.float32(
                    _soft_clamp(float(head[r, od1 + j]), float(max_lv[j]), float(min_lv[j]))
                )
                value = np.float32(value + np.float32(math.exp(0.5 * lv)) * eps)
            if j < od:
                next_obs[row, j] = obs[row, j] + value
            else:
                rew[row] = value


@nb.njit(cache=True)
def _variance(raw, max_lv, min_lv, out):
    for i in range(raw.shape[0]):
        for j in range(raw.shape[1]):
            out[i, j] = np.float32(
                math.exp(_soft_clamp(float(raw[i, j]), float(max_lv[j]), float(min_lv[j])))
            )


# ---------------------------------------------------------------------------- ops


def ensemble_step(
    obs,
    act,
    input_mean,
    input_std,
    weights,
    biases,
    max_logvar,
    min_logvar,
    elites,
    members=None,
    seed: int = 0,
    deterministic: bool = False,
    weights_bf16=None,
):
    """One sampled model step per row, running only the chosen member (see the native op).

    Returns (next_obs f32 [B, obs_dim], reward f32 [B], members_used int64 [B]).
    """
    p = _Params(
        input_mean, input_std, weights, biases, max_logvar, min_logvar, elites, weights_bf16
    )
    return _step(p, obs, act, members, seed, deterministic)


def _step(p: _Params, obs, act, members, seed, deterministic):
    """ensemble_step on validated parameters (rollouts and planners hold them for every step)."""
    obs, act = p.inputs(obs, act)
    batch = obs.shape[0]
    seed = _seed_u64(seed)
    if members is not None:
        used = _as_i64(members, "members", batch).copy()
        _require_range(used, "members", p.ensemble_size)
    else:
        if p.elites is None or p.elites.shape[0] < 1:
            n = 0 if p.elites is None else p.elites.shape[0]
            raise ValueError(
                f"elites: expected at least one elite index when members is None, got {n}"
            )
        used = np.empty(batch, dtype=np.int64)
        _choose_members(seed, p.elites, batch, used)
    next_obs = np.empty((batch, p.obs_dim), dtype=np.float32)
    rew = np.empty(batch, dtype=np.float32)
    if batch == 0:
        return next_obs, rew, used
    x = p.normalized(obs, act)
    order = np.argsort(used, kind="stable")
    bounds = np.searchsorted(used[order], np.arange(p.ensemble_size + 1))
    for e in range(p.ensemble_size):
        rows = order[bounds[e] : bounds[e + 1]]
        if rows.shape[0] == 0:
            continue
        head = np.ascontiguousarray(p.forward(e, x[rows]))
        p.epilogue(head, rows, obs, seed, deterministic, next_obs, rew)
    return next_obs, rew, used


def ensemble_predict(
    obs, act, input_mean, input_std, weights, biases, max_logvar, min_logvar, weights_bf16=None
):
    """Every member on every row: (mean, var) f32 [E, B, obs_dim + 1] (Δobs, reward)."""
    p = _Params(input_mean, input_std, weights, biases, max_logvar, min_logvar, None, weights_bf16)
    obs, act = p.inputs(obs, act)
    batch, od1 = obs.shape[0], p.obs_dim + 1
    mean = np.empty((p.ensemble_size, batch, od1), dtype=np.float32)
    var = np.empty((p.ensemble_size, batch, od1), dtype=np.float32)
    if batch == 0:
        return mean, var
    x = p.normalized(obs, act)
    for e in range(p.ensemble_size):
        head = p.forward(e, x)
        mean[e] = head[:, :od1]
        _variance(np.ascontiguousarray(head[:, od1:]), p.max_logvar, p.min_logvar, var[e])
    return mean, var


def ensemble_disagreement(
    obs,
    act,
    input_mean,
    input_std,
    weights,
    biases,
    max_logvar,
    min_logvar,
    members,
    weights_bf16=None,
):
    """Per-row disagreement f32 [B]: population std across `members` of the predicted means,
    averaged over the obs_dim + 1 outputs (reduced in float64)."""
    p = _Params(input_mean, input_std, weights, biases, max_logvar, min_logvar, None, weights_bf16)
    return _disagreement(p, obs, act, members)


def _disagreement(p: _Params, obs, act, members):
    """ensemble_disagreement on validated parameters."""
    obs, act = p.inputs(obs, act)
    mem = _as_i64(members, "members", -1)
    if mem.shape[0] < 1:
        raise ValueError("members: expected at least one member index, got an empty array")
    _require_range(mem, "members", p.ensemble_size)
    od1 = p.obs_dim + 1
    if obs.shape[0] == 0:
        return np.empty(0, dtype=np.float32)
    x = p.normalized(obs, act)
    mus = np.stack([p.forward(int(m), x)[:, :od1] for m in mem]).astype(np.float64)
    return mus.std(axis=0).mean(axis=1).astype(np.float32)


@nb.njit(cache=True)
def _choose_elite_index(seed, num_elites, batch, out):
    for i in range(batch):
        out[i] = random_index(seed, STREAM_MEMBER_CHOICE, np.uint64(i), num_elites)


def ensemble_step_uncertainty(
    obs,
    act,
    input_mean,
    input_std,
    weights,
    biases,
    max_logvar,
    min_logvar,
    elites,
    seed: int = 0,
    deterministic: bool = False,
    weights_bf16=None,
):
    """ensemble_step's transition (same members, same noise) from ONE pass of every elite, and
    the disagreement d f32 [B]: mean over the obs dims of the unbiased variance (ddof 1) across
    the K >= 2 elites of their predicted mean next state (reduced in float64).

    Returns (next_obs f32 [B, obs_dim], reward f32 [B], d f32 [B]).
    """
    if elites is None:
        raise ValueError("elites: expected int64 [K] with K >= 2, got None")
    p = _Params(
        input_mean, input_std, weights, biases, max_logvar, min_logvar, elites, weights_bf16
    )
    return _step_uncertainty(p, obs, act, seed, deterministic)


def _step_uncertainty(p: _Params, obs, act, seed, deterministic):
    """ensemble_step_uncertainty on validated parameters (with elites)."""
    if p.elites.shape[0] < 2:
        raise ValueError(
            "elites: the disagreement d needs at least 2 elites, got " f"{p.elites.shape[0]}"
        )
    obs, act = p.inputs(obs, act)
    batch, od = obs.shape[0], p.obs_dim
    seed = _seed_u64(seed)
    next_obs = np.empty((batch, od), dtype=np.float32)
    rew = np.empty(batch, dtype=np.float32)
    if batch == 0:
        return next_obs, rew, np.empty(0, dtype=np.float32)
    k_count = p.elites.shape[0]
    choice = np.empty(batch, dtype=np.int64)
    _choose_elite_index(seed, k_count, batch, choice)
    x = p.normalized(obs, act)
    means = np.empty((k_count, batch, od), dtype=np.float64)
    for k in range(k_count):
        head = np.ascontiguousarray(p.forward(int(p.elites[k]), x))
        means[k] = head[:, :od]
        rows = np.flatnonzero(choice == k)
        if rows.shape[0]:
            p.epilogue(np.ascontiguousarray(head[rows]), rows, obs, seed, deterministic,
                       next_obs, rew)
    d = means.var(axis=0, ddof=1).mean(axis=1).astype(np.float32)
    return next_obs, rew, d


_KERNELS = ("auto", "avx512", "portable")


def ensemble_set_kernel(name: str) -> None:
    """Accepted for parity with the native op; the Numba backend has one implementation."""
    if name not in _KERNELS:
        raise ValueError(f"kernel: expected 'auto', 'avx512' or 'portable', got {name!r}")


def ensemble_kernel() -> str:
    """The kernel the ensemble ops use: always "numba" here."""
    return "numba"


def _out_f32(value, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A caller-supplied output: writeable C-contiguous float32 of exactly `shape`."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name}: expected a float32 numpy array, got {type(value).__name__}")
    if value.dtype != np.float32:
        raise TypeError(f"{name}: expected dtype float32, got {value.dtype}")
    if value.shape != shape:
        raise ValueError(f"{name}: expected shape {list(shape)}, got {list(value.shape)}")
    if not value.flags.c_contiguous or not value.flags.writeable:
        raise ValueError(f"{name}: expected a writeable C-contiguous array")
    return value


class EnsembleHandle:
    """Numba twin of the native ``EnsembleHandle``: the parameters held by reference (validated
    once), ``step`` as ``ensemble_step`` with optional caller-supplied outputs."""

    def __init__(self, input_mean, input_std, weights, biases, max_logvar, min_logvar, elites,
                 weights_bf16=None):
        named = [("input_mean", input_mean), ("input_std", input_std),
                 ("max_logvar", max_logvar), ("min_logvar", min_logvar)]
        named += [(f"weights[{i}]", w) for i, w in enumerate(weights)]
        named += [(f"biases[{i}]", b) for i, b in enumerate(biases)]
        for name, value in named:
            if not (isinstance(value, np.ndarray) and value.dtype == np.float32
                    and value.flags.c_contiguous):
                raise TypeError(f"{name}: expected a C-contiguous float32 numpy array (held by "
                                "reference, never copied)")
        p = _elite_params(input_mean, input_std, weights, biases, max_logvar, min_logvar,
                          elites, weights_bf16)
        # Validated again on every step (as ensemble_step): in-place updates of any of these
        # arrays, the packed bf16 ones included, are seen by the next call.
        self._model = (input_mean, input_std, list(weights), list(biases), max_logvar,
                       min_logvar, p.elites, weights_bf16)
        self.obs_dim, self.act_dim = p.obs_dim, p.act_dim

    def sample(self, obs, act, seed):
        """``step(obs, act, seed)`` with the defaults: (next_obs, rew)."""
        return self.step(obs, act, seed)

    def sample_into(self, obs, act, seed, out_next_obs, out_rew):
        """``step(obs, act, seed, out_next_obs=..., out_rew=...)`` with the other defaults."""
        return self.step(obs, act, seed, out_next_obs=out_next_obs, out_rew=out_rew)

    def step(self, obs, act, seed=0, deterministic=False, members=None, out_next_obs=None,
             out_rew=None, return_members=False):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed: expected an int in [0, 2**64), got {type(seed).__name__}")
        next_obs, rew, used = _step(_Params(*self._model), obs, act, members, int(seed),
                                    deterministic)
        batch = next_obs.shape[0]
        if out_next_obs is not None or out_rew is not None:
            outs = []
            for value, name, shape, res in ((out_next_obs, "out[0] (next_obs)",
                                             (batch, self.obs_dim), next_obs),
                                            (out_rew, "out[1] (rew)", (batch,), rew)):
                outs.append(res if value is None else _out_f32(value, name, shape))
            for o in outs:
                if any(np.shares_memory(o, np.asarray(x)) for x in (obs, act)):
                    raise ValueError("out: the outputs must not share memory with obs or act")
            if np.shares_memory(outs[0], outs[1]):
                raise ValueError("out: next_obs and rew must not share memory")
            if outs[0] is not next_obs:
                outs[0][...] = next_obs
            if outs[1] is not rew:
                outs[1][...] = rew
            next_obs, rew = outs
        return (next_obs, rew, used) if return_members else (next_obs, rew)
