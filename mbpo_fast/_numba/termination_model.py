"""Numba-backend mirror of the native learned-termination MLP (termination_model.h).

x = concat(obs, act, next_obs), normalized by input_mean / input_std; SiLU hidden layers; the
last layer's single output is the logit; terminated = logit > 0. float32 matmuls, so values
agree with the native loop to float rounding.
"""

from __future__ import annotations

import numpy as np

from .ensemble import _as_f32, _require_finite

_MAX_LAYERS = 16


class TerminationMLP:
    """Validated termination-MLP parameters (same checks and messages as the native op)."""

    def __init__(self, obs_dim: int, act_dim: int, input_mean, input_std, weights, biases):
        weights, biases = list(weights), list(biases)
        if not 1 <= len(weights) <= _MAX_LAYERS or len(biases) != len(weights):
            raise ValueError(f"termination_weights: expected 1..{_MAX_LAYERS} layer weights and "
                             f"as many biases, got {len(weights)} and {len(biases)}")
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        in_dim = 2 * self.obs_dim + self.act_dim
        self.input_mean = _as_f32(input_mean, "termination_input_mean", (in_dim,))
        self.input_std = _as_f32(input_std, "termination_input_std", (in_dim,))
        _require_finite(self.input_mean, "termination_input_mean")
        bad = np.flatnonzero(~(self.input_std > 0))
        if bad.size:
            raise ValueError(f"termination_input_std: every entry must be > 0, got "
                             f"{self.input_std[bad[0]]} at index {int(bad[0])}")
        self.weights, self.biases = [], []
        width = in_dim
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            last = i + 1 == len(weights)
            w = _as_f32(w, f"termination_weights[{i}]", (width, 1 if last else -1))
            _require_finite(w, f"termination_weights[{i}]")
            b = _as_f32(b, f"termination_biases[{i}]", (w.shape[1],))
            _require_finite(b, f"termination_biases[{i}]")
            self.weights.append(w)
            self.biases.append(b)
            width = w.shape[1]

    def logits(self, obs, act, next_obs) -> np.ndarray:
        x = np.concatenate([obs, act, next_obs], axis=1).astype(np.float32)
        h = (x - self.input_mean) / self.input_std
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ w + b
            if i < last:
                with np.errstate(over="ignore"):
                    h = h / (np.float32(1.0) + np.exp(-h))
        return np.ascontiguousarray(h[:, 0], dtype=np.float32)


def termination_mlp(obs, act, next_obs, input_mean, input_std, weights, biases):
    """(terminated bool [B] = logit > 0, logit f32 [B]) of the learned termination MLP."""
    obs = _as_f32(obs, "obs", (-1, -1))
    act = _as_f32(act, "act", (obs.shape[0], -1))
    next_obs = _as_f32(next_obs, "next_obs", obs.shape)
    mlp = TerminationMLP(obs.shape[1], act.shape[1], input_mean, input_std, weights, biases)
    logits = mlp.logits(obs, act, next_obs) if obs.shape[0] else np.empty(0, np.float32)
    return logits > 0, logits
