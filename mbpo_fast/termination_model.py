"""A learned termination function: a small MLP classifier of transitions (issue 16).

::

    term = mf.TerminationModel(obs_dim, act_dim, hidden_size=64, num_layers=2, seed=0)
    stats = term.fit(obs, act, next_obs, terminated)   # class-balanced, holdout, early stop
    done = term(obs, act, next_obs)                     # bool [B], native
    rollout = mf.BranchedRollout(model, agent, term)    # runs natively inside the rollout
    term.save("term.safetensors"); mf.TerminationModel.load("term.safetensors")

Input ``concat(obs, act, next_obs)`` normalized by the training split's mean/std; SiLU hidden
layers; one logit; terminated = logit > 0. Trained with a class-balanced binary cross-entropy
(each class weighs half of the loss, so a rare "terminated" class is not ignored), on a random
80 % of the rows, early-stopped on the balanced loss of the other 20 % (patience 5 epochs,
best weights restored). The file (safetensors, layout in csrc/include/mbpo_fast/
termination_model.h) loads in C++ with ``mbpo_fast::TerminationModel::load``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import _backend
from .io import load_safetensors, require_tensor, save_safetensors

__all__ = ["TerminationModel"]

FORMAT = "mbpo_fast.termination_model/1"
_MAX_DIM = 1 << 24  # as the native readers: sums and products of dims cannot overflow


def _rows(name: str, x: Any, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != len(shape) or any(e >= 0 and e != g for e, g in zip(shape, arr.shape,
                                                                         strict=True)):
        want = "[" + ", ".join("B" if e < 0 else str(e) for e in shape) + "]"
        raise ValueError(f"{name}: expected shape {want}, got {list(arr.shape)}")
    return np.ascontiguousarray(arr, dtype=np.float32)


class TerminationModel:
    """MLP classifier ``(obs, act, next_obs) -> terminated``; see the module docstring.

    Args:
        obs_dim, act_dim: transition widths (obs_dim >= 1, act_dim >= 0).
        hidden_size: width of each hidden layer (>= 1).
        num_layers: hidden layers (>= 1); the output layer comes on top.
        seed: initial weights, holdout split and batch order.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden_size: int = 64, num_layers: int = 2,
                 seed: int = 0) -> None:
        for name, v, lo in (("obs_dim", obs_dim, 1), ("act_dim", act_dim, 0),
                            ("hidden_size", hidden_size, 1), ("num_layers", num_layers, 1)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or \
                not 0 <= seed < 2**64:  # what numpy's and torch's generators both accept
            raise ValueError(f"seed: expected an int in [0, 2**64), got {seed!r}")
        if num_layers + 1 > 16:
            raise ValueError(f"num_layers: expected at most 15 hidden layers, got {num_layers}")
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.hidden_size, self.num_layers, self.seed = int(hidden_size), int(num_layers), int(seed)
        in_dim = 2 * self.obs_dim + self.act_dim
        gen = torch.Generator().manual_seed(self.seed)
        widths = [in_dim] + [self.hidden_size] * self.num_layers + [1]
        self.weights: list[torch.Tensor] = []  # [in_i, out_i], float32
        self.biases: list[torch.Tensor] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            bound = 1.0 / math.sqrt(a)
            self.weights.append((torch.rand(a, b, generator=gen) * 2 - 1) * bound)
            self.biases.append((torch.rand(b, generator=gen) * 2 - 1) * bound)
        self.input_mean = np.zeros(in_dim, np.float32)
        self.input_std = np.ones(in_dim, np.float32)

    # ------------------------------------------------------------------ inference

    def native_params(self) -> dict[str, Any]:
        """The keyword arguments of the native ops (``termination_mlp``, and the
        ``termination_*`` arguments of ``branched_rollout``): float32 numpy arrays."""
        return {"termination_input_mean": self.input_mean,
                "termination_input_std": self.input_std,
                "termination_weights": [w.detach().numpy() for w in self.weights],
                "termination_biases": [b.detach().numpy() for b in self.biases]}

    def logits(self, obs, act, next_obs) -> np.ndarray:
        """float32 [B] logits (native op) for obs, next_obs [B, obs_dim], act [B, act_dim]."""
        obs = _rows("obs", obs, (-1, self.obs_dim))
        act = _rows("act", act, (obs.shape[0], self.act_dim))
        next_obs = _rows("next_obs", next_obs, (obs.shape[0], self.obs_dim))
        p = self.native_params()
        return _backend.ops.termination_mlp(
            obs, act, next_obs, p["termination_input_mean"], p["termination_input_std"],
            p["termination_weights"], p["termination_biases"])[1]

    def __call__(self, obs, act, next_obs) -> np.ndarray:
        """bool [B]: terminated (logit > 0). Also the ``termination`` of a rollout."""
        return self.logits(obs, act, next_obs) > 0

    # ------------------------------------------------------------------ training

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ w + b
            if i + 1 < len(self.weights):
                h = torch.nn.functional.silu(h)
        return h[:, 0]

    def fit(self, obs, act, next_obs, terminated, holdout_ratio: float = 0.2,
            max_epochs: int = 200, batch_size: int = 256, lr: float = 1e-3,
            patience: int = 5) -> dict[str, Any]:
        """Fits on real transitions; returns stats.

        obs, next_obs float [N, obs_dim], act float [N, act_dim], terminated bool [N], N >= 2.
        Class-balanced BCE (weights N / (2 N_class) from the training split), holdout
        ``holdout_ratio`` of the rows (at least 1), early stop when the holdout balanced loss
        has not improved for ``patience`` epochs; the best weights are restored.

        Returns dict: ``epochs``, ``train_loss``, ``holdout_loss`` (balanced BCE),
        ``holdout_balanced_accuracy`` (mean of the per-class recalls present in the holdout),
        ``holdout_rows``, ``positive_fraction`` (of all rows).
        """
        obs = _rows("obs", obs, (-1, self.obs_dim))
        n = obs.shape[0]
        act = _rows("act", act, (n, self.act_dim))
        next_obs = _rows("next_obs", next_obs, (n, self.obs_dim))
        term = np.asarray(terminated)
        if term.shape != (n,) or term.dtype.kind not in "biu" or not np.isin(term, (0, 1)).all():
            raise ValueError(f"terminated: expected bool [{n}] (0/1), got shape "
                             f"{list(term.shape)} and dtype {term.dtype}")
        if n < 2:
            raise ValueError(f"obs: expected at least 2 rows (train + holdout), got {n}")
        if not 0.0 < holdout_ratio < 1.0:
            raise ValueError(f"holdout_ratio: expected 0 < holdout_ratio < 1, got {holdout_ratio}")
        for name, v in (("max_epochs", max_epochs), ("batch_size", batch_size),
                        ("patience", patience)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        x_all = np.concatenate([obs, act, next_obs], axis=1)
        if not np.isfinite(x_all).all():
            raise ValueError("obs/act/next_obs: expected finite values, got NaN or inf")
        y_all = term.astype(np.float32)
        rng = np.random.default_rng(self.seed)
        perm = rng.permutation(n)
        n_hold = max(1, min(n - 1, int(round(holdout_ratio * n))))
        hold, train = perm[:n_hold], perm[n_hold:]
        mean = x_all[train].mean(axis=0)
        std = x_all[train].std(axis=0)
        std = np.where(std > 1e-6, std, 1.0).astype(np.float32)
        self.input_mean, self.input_std = mean.astype(np.float32), std
        xt = torch.from_numpy((x_all - mean) / std).float()
        yt = torch.from_numpy(y_all)
        pos = float(y_all[train].sum())
        neg = float(len(train) - pos)
        w_pos = len(train) / (2 * pos) if pos else 0.0
        w_neg = len(train) / (2 * neg) if neg else 0.0

        def balanced_loss(logit: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            w = y * w_pos + (1 - y) * w_neg
            bce = torch.nn.functional.binary_cross_entropy_with_logits(logit, y, reduction="none")
            return (w * bce).sum() / w.sum().clamp_min(1e-12)

        params = self.weights + self.biases
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=lr)
        gen = torch.Generator().manual_seed(self.seed + 1)
        train_t = torch.from_numpy(train)
        hold_t = torch.from_numpy(hold)
        best, best_state, since, epochs, train_loss = math.inf, None, 0, 0, math.nan
        for _ in range(int(max_epochs)):
            epochs += 1
            order = train_t[torch.randperm(len(train), generator=gen)]
            total = 0.0
            for s in range(0, len(order), int(batch_size)):
                idx = order[s:s + int(batch_size)]
                loss = balanced_loss(self._forward(xt[idx]), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            train_loss = total / len(order)
            with torch.no_grad():
                h_loss = float(balanced_loss(self._forward(xt[hold_t]), yt[hold_t]))
            if not math.isfinite(best) or h_loss < best - 1e-4 * abs(best):
                best, since = h_loss, 0
                best_state = [p.detach().clone() for p in params]
            else:
                since += 1
                if since >= patience:
                    break
        with torch.no_grad():
            for p, b in zip(params, best_state, strict=True):
                p.copy_(b)
        for p in params:
            p.requires_grad_(False)
        pred = self(obs[hold], act[hold], next_obs[hold])
        truth = term[hold].astype(bool)
        recalls = [float((pred[truth == c] == c).mean()) for c in (False, True)
                   if (truth == c).any()]
        return {"epochs": epochs, "train_loss": train_loss, "holdout_loss": best,
                "holdout_balanced_accuracy": float(np.mean(recalls)), "holdout_rows": n_hold,
                "positive_fraction": float(y_all.mean())}

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path) -> None:
        """Writes the safetensors file (atomic) that ``load`` and C++
        ``mbpo_fast::TerminationModel::load`` read."""
        tensors = {"input_mean": self.input_mean, "input_std": self.input_std}
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            tensors[f"layers.{i}.weight"] = w.detach().numpy().astype(np.float32)
            tensors[f"layers.{i}.bias"] = b.detach().numpy().astype(np.float32)
        save_safetensors(path, tensors, {
            "format": FORMAT, "obs_dim": str(self.obs_dim), "act_dim": str(self.act_dim),
            "num_layers": str(len(self.weights)), "activation": "silu",
            "hidden_size": str(self.hidden_size), "seed": str(self.seed)})

    @classmethod
    def load(cls, path: str | Path) -> TerminationModel:
        """Reads a file :meth:`save` wrote; ValueError naming the file for another or a damaged
        file. Every tensor's shape and dtype is checked against the metadata (a tensor that
        disagrees is named, with the expected and the actual shape), and values must be
        finite with ``input_std > 0``, before a model is built: its size is then that of the
        file's own tensors."""
        tensors, meta = load_safetensors(path)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: metadata format is {meta.get('format')!r}, expected "
                             f"{FORMAT!r}")
        if meta.get("activation", "silu") != "silu":
            raise ValueError(f"{path}: activation {meta['activation']!r} is not supported")
        try:
            od, ad, nl = int(meta["obs_dim"]), int(meta["act_dim"]), int(meta["num_layers"])
            seed = int(meta.get("seed", 0))
            hidden = int(meta["hidden_size"]) if "hidden_size" in meta else None
        except (KeyError, ValueError) as e:
            raise ValueError(f"{path}: bad metadata ({type(e).__name__}: {e})") from None
        if not (1 <= od <= _MAX_DIM and 0 <= ad <= _MAX_DIM and 1 <= nl <= 16):
            raise ValueError(f"{path}: metadata obs_dim = {od}, act_dim = {ad}, num_layers = "
                             f"{nl}: expected 1 <= obs_dim, 0 <= act_dim (both <= {_MAX_DIM}) "
                             f"and 1 <= num_layers <= 16")
        if nl >= 2 and hidden is None:  # older files: the width of the first layer
            w0 = tensors.get("layers.0.weight")
            hidden = int(w0.shape[1]) if w0 is not None and w0.ndim == 2 else 1
        hidden = 1 if hidden is None else hidden
        if nl >= 2 and hidden < 1:
            raise ValueError(f"{path}: metadata hidden_size = {hidden} must be >= 1")
        in_dim = 2 * od + ad
        widths = [in_dim] + [hidden] * (nl - 1) + [1]
        specs = {"input_mean": (in_dim,), "input_std": (in_dim,)}
        for i in range(nl):
            specs[f"layers.{i}.weight"] = (widths[i], widths[i + 1])
            specs[f"layers.{i}.bias"] = (widths[i + 1],)
        extra = sorted(set(tensors) - set(specs))
        if extra:
            raise ValueError(f"{path}: unexpected tensors {extra} for metadata num_layers = {nl}")
        arrays = {name: require_tensor(tensors, name, shape, np.float32, path)
                  for name, shape in specs.items()}
        for name, arr in arrays.items():
            if not np.isfinite(arr).all():
                raise ValueError(f"{path}: tensor {name!r} contains non-finite values")
        if not (arrays["input_std"] > 0).all():
            raise ValueError(f"{path}: tensor 'input_std' must be > 0 everywhere")
        # the constructor allocates layers of the checked widths (those of the file's tensors)
        try:
            model = cls(od, ad, hidden_size=hidden if nl >= 2 else 1, num_layers=max(1, nl - 1),
                        seed=seed)
        except ValueError as exc:
            raise ValueError(f"{path}: metadata {exc}") from None
        model.hidden_size = hidden
        model.input_mean, model.input_std = arrays["input_mean"], arrays["input_std"]
        model.weights = [torch.from_numpy(arrays[f"layers.{i}.weight"]) for i in range(nl)]
        model.biases = [torch.from_numpy(arrays[f"layers.{i}.bias"]) for i in range(nl)]
        return model
