"""Fused inference of a probabilistic ensemble dynamics model (MBPO's model).

:class:`EnsembleInference` borrows the parameters of an ensemble (numpy views of the torch
parameters, or arrays loaded from a safetensors file) and runs the fused ops of the active
backend (``_backend.ops``): the native C++ kernels (AVX-512 with a portable fallback,
threaded over row tiles, GIL released) or the Numba mirror. Both draw the same Philox
numbers, so member choices are identical across backends and values agree to float rounding.

Model (DESIGN §3): x = concat(obs, act) normalized by (input_mean, input_std); hidden layers
with SiLU; the output layer gives the mean of (Δobs, reward) and a raw logvar soft-clamped
between min_logvar and max_logvar.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from . import _backend

__all__ = ["EnsembleInference"]


def _borrow(name: str, value, dtype, ndim: int) -> np.ndarray:
    """A C-contiguous CPU array of `dtype` sharing memory with `value` (torch tensor or numpy)."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # torch.Tensor: zero-copy view
        if getattr(value, "device", None) is not None and value.device.type != "cpu":
            raise ValueError(f"{name}: expected a CPU tensor, got device {value.device}")
        value = value.detach().numpy()
    if not isinstance(value, np.ndarray):
        raise TypeError(
            f"{name}: expected a numpy array or torch tensor, got {type(value).__name__}"
        )
    if value.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype)}, got {value.dtype}")
    if value.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d array, got shape {value.shape}")
    if not value.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array (held by reference, never copied)")
    return value


def _out_pair(out, single: bool) -> tuple:
    """(next_obs, rew) of a step's ``out`` argument (None: allocate)."""
    if out is None:
        return None, None
    if single:
        raise ValueError("out: preallocated outputs need batched rows obs [B, obs_dim], "
                         "act [B, act_dim]")
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError("out: expected a pair (next_obs float32 [B, obs_dim], rew float32 [B]), "
                        f"got {type(out).__name__}")
    return out[0], out[1]


class EnsembleInference:
    """Borrows numpy views of an ensemble's parameters; runs the fused ops of _backend.ops.

    Args:
        obs_dim, act_dim: observation and action sizes.
        input_mean, input_std: float32 [obs_dim + act_dim], the input normalizer (std > 0).
        weights: list of float32 [E, in_i, out_i], one per linear layer
            (the last has out = 2 * (obs_dim + 1)).
        biases: list of float32 [E, out_i].
        max_logvar, min_logvar: float32 [obs_dim + 1].
        elites: int64 [K], the members ``step`` samples from.
        activation: hidden activation; only "silu" (swish) is implemented.

    The arrays are held by reference (no copies): in-place updates of the parameters (an
    optimizer step, ``load_state_dict``) are seen by the next call. Replacing a parameter
    object (``param.data = ...``) is not: build a new EnsembleInference then.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        input_mean,
        input_std,
        weights: list,
        biases: list,
        max_logvar,
        min_logvar,
        elites,
        activation: str = "silu",
    ) -> None:
        if activation.lower() not in ("silu", "swish"):
            raise ValueError(f"activation: only 'silu' (swish) is implemented, got {activation!r}")
        self.obs_dim = int(obs_dim)
        self.act_dim = int(act_dim)
        if self.obs_dim < 1 or self.act_dim < 0:
            raise ValueError(
                "obs_dim, act_dim: expected obs_dim >= 1 and act_dim >= 0, "
                f"got {obs_dim}, {act_dim}"
            )
        if len(weights) != len(biases) or len(weights) < 1:
            raise ValueError(
                f"weights, biases: expected the same non-zero number of layers, got "
                f"{len(weights)} and {len(biases)}"
            )
        in_dim, out_dim = self.obs_dim + self.act_dim, self.obs_dim + 1
        self.input_mean = _borrow("input_mean", input_mean, np.float32, 1)
        self.input_std = _borrow("input_std", input_std, np.float32, 1)
        self.weights = [_borrow(f"weights[{i}]", w, np.float32, 3) for i, w in enumerate(weights)]
        self.biases = [_borrow(f"biases[{i}]", b, np.float32, 2) for i, b in enumerate(biases)]
        self.max_logvar = _borrow("max_logvar", max_logvar, np.float32, 1)
        self.min_logvar = _borrow("min_logvar", min_logvar, np.float32, 1)
        if self.input_mean.shape != (in_dim,):
            raise ValueError(f"input_mean: expected shape ({in_dim},), got {self.input_mean.shape}")
        if self.weights[-1].shape[2] != 2 * out_dim:
            raise ValueError(
                f"weights[-1]: expected output width 2 * (obs_dim + 1) = {2 * out_dim}, "
                f"got shape {self.weights[-1].shape}"
            )
        self.ensemble_size = int(self.weights[0].shape[0])
        self.weights_bf16: list[np.ndarray] | None = None
        self._handle = None  # the bound parameters of the per-call fast path (handle())
        self._handle_ops = None  # the backend module that made it
        self.set_elites(elites)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_safetensors(cls, path: str | os.PathLike) -> EnsembleInference:
        """Loads the DESIGN §3 layout (input_mean, input_std, layers.{i}.weight/bias,
        max_logvar, min_logvar, elites; metadata obs_dim, act_dim, activation)."""
        from .io import load_safetensors

        tensors, metadata = load_safetensors(path)
        source = os.fspath(path)
        for key in ("obs_dim", "act_dim"):
            if key not in metadata:
                raise ValueError(f"{source}: metadata is missing '{key}'")
        n_layers = 0
        while f"layers.{n_layers}.weight" in tensors:
            n_layers += 1
        if n_layers == 0:
            raise ValueError(f"{source}: no 'layers.0.weight' tensor")
        for name in (
            "input_mean",
            "input_std",
            "max_logvar",
            "min_logvar",
            "elites",
            *(f"layers.{i}.bias" for i in range(n_layers)),
        ):
            if name not in tensors:
                raise ValueError(f"{source}: missing tensor '{name}'")

        def arr(name: str, dtype) -> np.ndarray:
            value = np.asarray(tensors[name])
            if value.dtype != dtype:
                raise ValueError(
                    f"{source}: tensor '{name}' has dtype {value.dtype}, expected {np.dtype(dtype)}"
                )
            return np.ascontiguousarray(value)

        return cls(
            int(metadata["obs_dim"]),
            int(metadata["act_dim"]),
            arr("input_mean", np.float32),
            arr("input_std", np.float32),
            [arr(f"layers.{i}.weight", np.float32) for i in range(n_layers)],
            [arr(f"layers.{i}.bias", np.float32) for i in range(n_layers)],
            arr("max_logvar", np.float32),
            arr("min_logvar", np.float32),
            arr("elites", np.int64),
            activation=str(metadata.get("activation", "silu")),
        )

    def set_elites(self, elites) -> None:
        """Replaces the elite set (int64 [K], each in [0, E), K >= 1)."""
        arr = np.ascontiguousarray(np.asarray(elites).reshape(-1))
        if arr.dtype.kind not in "iu":
            raise TypeError(f"elites: expected integer indices, got dtype {arr.dtype}")
        arr = arr.astype(np.int64, copy=False)
        if arr.size < 1:
            raise ValueError("elites: expected at least one member index")
        if arr.min() < 0 or arr.max() >= self.ensemble_size:
            raise ValueError(
                f"elites: every index must be in [0, {self.ensemble_size}), got {arr.tolist()}"
            )
        self.elites = arr
        self._handle = None

    def use_bf16(self, enabled: bool = True) -> None:
        """Opt-in bf16 weights: packs a SNAPSHOT of the current weights (ensemble_pack_bf16,
        round to nearest even) that step/predict/disagreement use from now on; inputs are
        rounded to bf16 per layer and products accumulate in float32. Call again after the
        weights change (e.g. after every model training); ``use_bf16(False)`` returns to the
        borrowed float32 weights. The error is far below the predicted std (see
        README "Ensemble inference"); it is a speed option for rollouts only."""
        self.weights_bf16 = _backend.ops.ensemble_pack_bf16(self.weights) if enabled else None
        self._handle = None

    def handle(self):
        """The parameters bound once (``_backend.ops.EnsembleHandle``, held by reference):
        :meth:`step` parses only its rows per call. Rebuilt after ``set_elites`` /
        ``use_bf16`` and when the active backend changes; in-place parameter updates need
        nothing."""
        ops = _backend.ops
        if self._handle is None or self._handle_ops is not ops:
            self._handle = ops.EnsembleHandle(*self._params(), self.elites, self.weights_bf16)
            self._handle_ops = ops
        return self._handle

    # ------------------------------------------------------------------ ops

    def _params(self) -> tuple:
        return (
            self.input_mean,
            self.input_std,
            self.weights,
            self.biases,
            self.max_logvar,
            self.min_logvar,
        )

    def _rows(self, obs, act) -> tuple[np.ndarray, np.ndarray, bool]:
        obs = np.asarray(obs)
        act = np.asarray(act)
        single = obs.ndim == 1
        if single:
            obs = obs.reshape(1, -1)
            act = act.reshape(1, -1)
        return obs, act, single

    def step(self, obs, act, seed: int = 0, deterministic: bool = False, members=None,
             out=None):
        """Samples one model transition per row, running only the chosen member.

        obs float32 [B, obs_dim] (or [obs_dim]), act float32 [B, act_dim] (or [act_dim]);
        members: None (a uniform elite per row from the Philox stream of `seed`) or int [B].
        out: None or (next_obs, rew) preallocated float32 [B, obs_dim], [B] (writeable,
        C-contiguous, not overlapping the inputs; batched calls only) to write into.
        Returns (next_obs f32 [B, obs_dim], rew f32 [B], members_used int64 [B]) (no batch
        dimension for a single row).
        """
        obs, act, single = self._rows(obs, act)
        if members is not None:
            members = np.asarray(members)
            if single and members.ndim == 0:
                members = members.reshape(1)
        out_next, out_rew = _out_pair(out, single)
        next_obs, rew, used = self.handle().step(obs, act, seed, deterministic, members,
                                                 out_next, out_rew, True)
        if single:
            return next_obs[0], rew[0], used[0]
        return next_obs, rew, used

    def predict(self, obs, act):
        """Every member's prediction: (mean, var) float32 [E, B, obs_dim + 1] of (Δobs, reward)."""
        obs, act, single = self._rows(obs, act)
        mean, var = _backend.ops.ensemble_predict(obs, act, *self._params(), self.weights_bf16)
        if single:
            return mean[:, 0], var[:, 0]
        return mean, var

    def disagreement(self, obs, act, members: Sequence[int] | np.ndarray | None = None):
        """Per-row disagreement float32 [B]: the population std across `members` (default: the
        elites) of the predicted means, averaged over the obs_dim + 1 outputs."""
        obs, act, single = self._rows(obs, act)
        mem = self.elites if members is None else np.asarray(members)
        out = _backend.ops.ensemble_disagreement(obs, act, *self._params(), mem, self.weights_bf16)
        return out[0] if single else out
