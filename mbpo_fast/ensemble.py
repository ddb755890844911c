"""MBPO's probabilistic ensemble dynamics model: the model, native inference, save/load.

:class:`EnsembleDynamics` holds ``E`` Gaussian MLPs as batched layers (weights
[E, in, out], one batched matmul per layer for all members). It predicts the targets
``[Δobs (obs_dim), reward (1)]`` (reward LAST) from ``concat(obs, act)`` normalized by an
input normalizer that is refit at every :meth:`EnsembleDynamics.fit`.

Training follows the original MBPO recipe (DESIGN §4): Gaussian NLL with trainable soft
logvar bounds, per-layer L2 on weights only, Adam 1e-3, batch 256, one bootstrap index set
per member, a holdout split for early stopping with per-member best-snapshot restore, and
elites chosen by holdout MSE. The procedure and its torch / native epoch backends live in
:mod:`mbpo_fast.ensemble_trainer`. The torch parameters stay the source of truth; inference
(:meth:`predict`, :meth:`step`, :meth:`disagreement`) runs the fused native kernels through
:class:`~mbpo_fast.ensemble_infer.EnsembleInference`, which borrows zero-copy numpy views of
those parameters.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import _backend
from .ensemble_infer import EnsembleInference, _out_pair
from .ensemble_trainer import (
    _positive_int,
    fit_ensemble,
    log_trainer_once,
    make_backend,
    resolve_trainer,
)
from .io import load_safetensors, require_tensor, save_safetensors
from .nn import BatchedLinear
from .state_checks import (
    check_adam_state,
    check_generator_state,
    check_module_state,
    copy_adam_state,
)

__all__ = ["EnsembleDynamics", "layer_weight_decays"]

_FORMAT = "mbpo_fast.ensemble/1"
_LOGVAR_BOUND_COEF = 0.01  # MBPO / mbrl-lib: 0.01 * (sum(max_logvar) - sum(min_logvar))
_INIT_MAX_LOGVAR = 0.5
_INIT_MIN_LOGVAR = -10.0


def layer_weight_decays(num_linear: int) -> list[float]:
    """Per-layer L2 coefficients (loss term ``0.5 * wd_i * ||W_i||^2``) for `num_linear` layers.

    MBPO's 5-layer network uses 2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4. Other depths keep the
    pattern: first 2.5e-5, second 5e-5, every middle layer 7.5e-5, last (output) 1e-4; a
    2-layer network gets [2.5e-5, 1e-4].
    """
    if num_linear < 2:
        raise ValueError(
            f"num_linear: expected >= 2 (a hidden and an output layer), got {num_linear}"
        )
    decays = [2.5e-5] + [5e-5] + [7.5e-5] * (num_linear - 3) + [1e-4]
    return decays if num_linear >= 3 else [2.5e-5, 1e-4]



_F32 = np.dtype(np.float32)


def _float_array(
    name: str, value, shape: Sequence[int | None], check_finite: bool = True
) -> np.ndarray:
    """`value` as a float32 numpy array with `shape` (None = any), finite; else a clear error.

    Accepts float32/float64 numpy arrays, torch tensors and nested sequences of floats. A
    C-contiguous float32 array passes through without a copy (the common, per-step case).
    """
    if type(value) is np.ndarray:
        arr = value
    elif isinstance(value, torch.Tensor):
        arr = value.detach().cpu().numpy()
    else:
        arr = np.asarray(value)
    dtype = arr.dtype
    if dtype != _F32 and (dtype.kind != "f" or dtype.itemsize != 8):
        raise TypeError(f"{name}: expected a float32 (or float64) array, got dtype {dtype}")
    got = arr.shape
    ok = len(got) == len(shape)
    if ok:
        for e, g in zip(shape, got, strict=True):
            if e is not None and e != g:
                ok = False
                break
    if not ok:
        expected = "(" + ", ".join("*" if e is None else str(e) for e in shape) + ")"
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(got)}")
    if check_finite:
        finite = np.isfinite(arr)
        if not finite.all():
            bad = int(np.argmax(~finite.reshape(-1)))
            raise ValueError(
                f"{name}: contains a non-finite value (NaN or Inf) at flat index {bad}"
            )
    if dtype == _F32 and arr.flags.c_contiguous:
        return arr
    return np.ascontiguousarray(arr, dtype=np.float32)


class EnsembleDynamics(nn.Module):
    """Probabilistic ensemble of ``ensemble_size`` Gaussian MLPs (MBPO's dynamics model).

    Args:
        obs_dim, act_dim: observation and action sizes.
        ensemble_size: members E (MBPO: 7).
        num_elites: members used by :meth:`step` (MBPO: 5), chosen by holdout MSE at every fit.
        hidden_size, num_layers: ``num_layers`` hidden layers of ``hidden_size`` SiLU units,
            then the output layer of width ``2 * (obs_dim + 1)`` (mean, then raw logvar).
        seed: seeds parameter initialization and the fit's own torch.Generator (holdout
            split, bootstrap sets, shuffles).
        device: torch device of the parameters and of training. Fixed at construction (do not
            ``.to()`` the module). Inference through the native kernels needs "cpu"; on another
            device :meth:`predict` and :meth:`step` run a torch path instead (see :meth:`step`).
        lr: Adam learning rate (MBPO: 1e-3).
        weight_decays: per-linear-layer L2 coefficients; default :func:`layer_weight_decays`.
        trainer: what runs :meth:`fit`'s epochs: "native" (the C++ core, one call per epoch;
            CPU models with the extension loaded, else a clear error), "torch" (autograd and
            torch.optim.Adam per batch), or "auto" (native where it can run, else torch).
            :attr:`trainer` gives the resolved name.
        autocast_bf16: train with bf16 matmul inputs in the hidden layers (float32
            accumulation, output layer, master weights and Adam state), on either trainer.

    Parameters (the safetensors layout of DESIGN §3): ``layers[i].weight`` [E, in_i, out_i],
    ``layers[i].bias`` [E, out_i] for i = 0..num_layers, ``max_logvar``/``min_logvar``
    [obs_dim + 1] (shared by the members, trainable), buffers ``input_mean``/``input_std``
    [obs_dim + act_dim] and ``elite_index`` int64 [num_elites].
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        ensemble_size: int = 7,
        num_elites: int = 5,
        hidden_size: int = 200,
        num_layers: int = 4,
        seed: int = 0,
        device: str | torch.device = "cpu",
        lr: float = 1e-3,
        weight_decays: Sequence[float] | None = None,
        trainer: str = "auto",
        autocast_bf16: bool = False,
    ) -> None:
        super().__init__()
        self.obs_dim = _positive_int("obs_dim", obs_dim)
        self.act_dim = _positive_int("act_dim", act_dim, minimum=0)
        self.ensemble_size = _positive_int("ensemble_size", ensemble_size)
        self.num_elites = _positive_int("num_elites", num_elites)
        if self.num_elites > self.ensemble_size:
            raise ValueError(
                f"num_elites: expected <= ensemble_size = {ensemble_size}, got {num_elites}"
            )
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.num_layers = _positive_int("num_layers", num_layers)
        self.seed = _positive_int("seed", seed, minimum=0)
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr: expected a finite float > 0, got {lr!r}")
        self.lr = float(lr)
        n_linear = self.num_layers + 1
        decays = layer_weight_decays(n_linear) if weight_decays is None else list(weight_decays)
        if len(decays) != n_linear or not all(math.isfinite(d) and d >= 0 for d in decays):
            raise ValueError(f"weight_decays: expected {n_linear} finite values >= 0, got {decays}")
        self.weight_decays = [float(d) for d in decays]
        self.device = torch.device(device)
        self._on_cpu = self.device.type == "cpu"
        self._trainer_impl = None  # the epoch backend, built at the first fit
        self._trainer = resolve_trainer(trainer, self.device, self.num_layers + 1)
        self._autocast_bf16 = bool(autocast_bf16)

        in_dim, out_dim = self.obs_dim + self.act_dim, self.obs_dim + 1
        widths = [in_dim] + [self.hidden_size] * self.num_layers + [2 * out_dim]
        init_gen = torch.Generator().manual_seed(self.seed)  # CPU init: same weights on any device
        self.layers = nn.ModuleList(
            BatchedLinear(
                self.ensemble_size, widths[i], widths[i + 1], init="mbpo", generator=init_gen
            )
            for i in range(n_linear)
        )
        self.max_logvar = nn.Parameter(torch.full((out_dim,), _INIT_MAX_LOGVAR))
        self.min_logvar = nn.Parameter(torch.full((out_dim,), _INIT_MIN_LOGVAR))
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_std", torch.ones(in_dim))
        self.register_buffer("elite_index", torch.arange(self.num_elites, dtype=torch.int64))
        self.to(self.device)
        self._generator = torch.Generator(device=self.device).manual_seed(self.seed + 1)
        self._optimizer: torch.optim.Optimizer | None = None
        self._inference: EnsembleInference | None = None
        self._cuda_inference = None  # cuda_ops.CudaEnsemble, built on first device call
        self._bf16 = False
        # load_state_dict replaces the elites in place: rebuild the adapter (it copies them)
        self.register_load_state_dict_post_hook(lambda mod, _keys: mod._invalidate_inference())

    def _apply(self, fn, *args, **kwargs):
        # .to()/.cuda()/.half() would strand the generator, the optimizer state and the
        # zero-copy inference views: the device and float32 dtype are fixed at construction.
        probe = fn(torch.empty(0, device=getattr(self, "device", "cpu")))
        if getattr(self, "device", None) is not None and (
            probe.device != self.device or probe.dtype != torch.float32
        ):
            raise RuntimeError(
                f"EnsembleDynamics: device ({self.device}) and dtype (float32) are fixed at "
                f"construction, refusing to move to {probe.device} / {probe.dtype}; build the "
                "model with device=... or save() it and load(path, device=...)"
            )
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------------ properties

    @property
    def trainer(self) -> str:
        """The trainer :meth:`fit` runs: "native" or "torch" (resolved from the requested
        "auto" | "native" | "torch"). Assignable between fits: the next fit continues from the
        same parameters and Adam state on the other trainer."""
        return self._trainer

    @trainer.setter
    def trainer(self, value: str) -> None:
        self._trainer = resolve_trainer(value, self.device, self.num_layers + 1)
        self._trainer_impl = None

    @property
    def autocast_bf16(self) -> bool:
        """Whether training matmuls of the hidden layers take bf16 inputs (assignable)."""
        return self._autocast_bf16

    @autocast_bf16.setter
    def autocast_bf16(self, value: bool) -> None:
        self._autocast_bf16 = bool(value)
        self._trainer_impl = None

    @property
    def in_dim(self) -> int:
        return self.obs_dim + self.act_dim

    @property
    def out_dim(self) -> int:
        """Width of the target: obs_dim + 1 (Δobs, then reward)."""
        return self.obs_dim + 1

    @property
    def elites(self) -> list[int]:
        """The members :meth:`step` samples from (lowest holdout MSE after the last fit)."""
        return [int(i) for i in self.elite_index.tolist()]

    def set_elites(self, elites: Sequence[int]) -> None:
        """Replaces the elite set: `num_elites` distinct member indices in [0, ensemble_size)."""
        arr = np.asarray(elites)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"elites: expected integer member indices, got dtype {arr.dtype}")
        if arr.shape != (self.num_elites,):
            raise ValueError(f"elites: expected shape ({self.num_elites},), got {tuple(arr.shape)}")
        if arr.min() < 0 or arr.max() >= self.ensemble_size or len(set(arr.tolist())) != arr.size:
            raise ValueError(
                f"elites: expected distinct indices in [0, {self.ensemble_size}), "
                f"got {arr.tolist()}"
            )
        self.elite_index.copy_(torch.from_numpy(arr.astype(np.int64)))
        if self._inference is not None:
            self._inference.set_elites(self.elite_index.cpu().numpy().copy())
        if self._cuda_inference is not None:
            self._cuda_inference.view.set_elites([int(i) for i in arr.tolist()])
            self._cuda_inference.elites = [int(i) for i in arr.tolist()]

    @property
    def inference(self) -> EnsembleInference:
        """The fused-kernel adapter over zero-copy views of this model's CPU parameters.

        In-place parameter updates (optimizer steps, snapshot restores, normalizer refits) are
        seen by the next call without rebuilding. Raises RuntimeError for a non-CPU model.
        """
        if not self._on_cpu:
            raise RuntimeError(
                f"inference: the native kernels run on CPU parameters; this model is on "
                f"{self.device}. Use predict()/step() (torch path) or load the file on CPU."
            )
        if self._inference is None:
            self._inference = EnsembleInference(
                self.obs_dim,
                self.act_dim,
                self.input_mean.numpy(),
                self.input_std.numpy(),
                [layer.weight.detach().numpy() for layer in self.layers],
                [layer.bias.detach().numpy() for layer in self.layers],
                self.max_logvar.detach().numpy(),
                self.min_logvar.detach().numpy(),
                self.elite_index.numpy().copy(),
                activation="silu",
            )
            if self._bf16:
                self._inference.use_bf16(True)
        return self._inference

    def use_bf16(self, enabled: bool = True) -> None:
        """Opt-in bf16 weights for inference (predict/step/disagreement on CPU), a rollout speed
        option: the adapter packs a bf16 snapshot of the weights, re-packed automatically after
        every ``fit`` and ``load_state_dict``. Training stays float32. After changing the
        weights any other way, call ``use_bf16(True)`` again."""
        self._bf16 = bool(enabled)
        if self._inference is not None:
            self._inference.use_bf16(self._bf16)

    def _invalidate_inference(self) -> None:
        self._inference = None
        self._cuda_inference = None

    # ------------------------------------------------------------------ CUDA dispatch

    def _cuda_call(self, obs) -> bool:
        """True when this call takes the device path: a CUDA model given CUDA tensors."""
        return self.device.type == "cuda" and getattr(obs, "is_cuda", False) is True

    def _cuda_native(self):
        """The fused-kernel adapter (cuda_ops.CudaEnsemble), or None when mbpo_fast has no CUDA
        build / device (then the torch forward runs on the tensors instead)."""
        from . import cuda_ops

        if not cuda_ops.available():
            return None
        if self._cuda_inference is None:
            self._cuda_inference = cuda_ops.CudaEnsemble(self)
        return self._cuda_inference

    # ------------------------------------------------------------------ torch forward

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized inputs [E, B, in] -> (mean [E, B, out], soft-clamped logvar [E, B, out])."""
        return self.head(self.hidden(x))

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The SiLU hidden layers: [E, B, in] -> [E, B, hidden_size]."""
        h = x
        for layer in self.layers[:-1]:
            h = F.silu(layer(h))
        return h

    def head(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The output layer and the soft logvar bounds: [E, B, hidden] -> (mean, logvar)."""
        mean, raw = self.layers[-1](h).split(self.out_dim, dim=-1)
        lv = self.max_logvar - F.softplus(self.max_logvar - raw)
        lv = self.min_logvar + F.softplus(lv - self.min_logvar)
        return mean, lv

    def normalize(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """(concat(obs, act) - input_mean) / input_std: [B, obs_dim + act_dim]."""
        return (torch.cat([obs, act], dim=-1) - self.input_mean) / self.input_std

    def predict_torch(
        self, obs: torch.Tensor, act: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Torch forward of every member: (mean, var) [E, B, obs_dim + 1] (Δobs, reward).

        Differentiable; obs [B, obs_dim], act [B, act_dim] float32 on the model's device.
        """
        x = self.normalize(obs, act).unsqueeze(0).expand(self.ensemble_size, -1, -1)
        mean, lv = self(x)
        return mean, lv.exp()

    # ------------------------------------------------------------------ loss

    def weight_decay_loss(self) -> torch.Tensor:
        """sum_i 0.5 * wd_i * ||W_i||^2 over layer weights (not biases, not the logvar bounds)."""
        terms = [
            0.5 * wd * layer.weight.square().sum()
            for wd, layer in zip(self.weight_decays, self.layers, strict=True)
            if wd > 0
        ]
        return torch.stack(terms).sum() if terms else self.max_logvar.new_zeros(())

    def _nll(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-member Gaussian NLL [E]: mean((mu-y)^2 * exp(-lv)) + mean(lv) over rows, outputs."""
        mean, lv = self(x)
        return ((mean - y).square() * torch.exp(-lv) + lv).mean(dim=(1, 2))

    def _data_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Summed member NLLs + the logvar-bound term: the objective without weight decay.

        The L2 term is applied by Adam's per-layer ``weight_decay`` (see :meth:`_make_optimizer`):
        Adam adds ``wd * W`` to the gradient, exactly the gradient of ``0.5 * wd * ||W||^2``,
        inside the fused step instead of as extra autograd work.
        """
        return self._nll(x, y).sum() + self.logvar_bound_loss()

    def logvar_bound_loss(self) -> torch.Tensor:
        """0.01 * (sum(max_logvar) - sum(min_logvar)): keeps the trainable bounds tight."""
        return _LOGVAR_BOUND_COEF * (self.max_logvar.sum() - self.min_logvar.sum())

    def compute_loss(self, obs, act, rew, next_obs) -> dict[str, float | list[float]]:
        """The training objective on one batch fed to every member (no bootstrap), for inspection.

        Returns {"total": float, "nll": list[float] per member, "logvar_bound": float,
        "weight_decay": float}; total = sum(nll) + logvar_bound + weight_decay.
        """
        x, y = self._tensors(*self._validate_transitions(obs, act, rew, next_obs))
        with torch.no_grad():
            xe = self._normalize_x(x).unsqueeze(0).expand(self.ensemble_size, -1, -1)
            nll = self._nll(xe, y.unsqueeze(0).expand(self.ensemble_size, -1, -1))
            bound = _LOGVAR_BOUND_COEF * (self.max_logvar.sum() - self.min_logvar.sum())
            decay = self.weight_decay_loss()
            total = nll.sum() + bound + decay
        return {
            "total": float(total),
            "nll": [float(v) for v in nll],
            "logvar_bound": float(bound),
            "weight_decay": float(decay),
        }

    # ------------------------------------------------------------------ fit

    def _validate_transitions(self, obs, act, rew, next_obs):
        obs = _float_array("obs", obs, (None, self.obs_dim))
        n = obs.shape[0]
        act = _float_array("act", act, (n, self.act_dim))
        rew = _float_array("rew", rew, (n,))
        next_obs = _float_array("next_obs", next_obs, (n, self.obs_dim))
        return obs, act, rew, next_obs

    def _tensors(self, obs, act, rew, next_obs) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs concat(obs, act) [N, in] and targets [Δobs, rew] [N, out] as device tensors."""
        x = np.concatenate([obs, act], axis=1)
        y = np.concatenate([next_obs - obs, rew[:, None]], axis=1)
        return (torch.from_numpy(x).to(self.device), torch.from_numpy(y).to(self.device))

    def _normalize_x(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_mean) / self.input_std

    def _per_member(self) -> list[torch.Tensor]:
        """Parameters with a leading member dimension (snapshotted per member)."""
        return [p for layer in self.layers for p in (layer.weight, layer.bias)]

    def _param_groups(self) -> list[dict]:
        """Adam groups: each layer weight with its own L2 coefficient; biases and logvar bounds
        in one group without decay (DESIGN §4: weights only)."""
        groups = [
            {"params": [layer.weight], "weight_decay": wd}
            for wd, layer in zip(self.weight_decays, self.layers, strict=True)
        ]
        rest = [layer.bias for layer in self.layers] + [self.max_logvar, self.min_logvar]
        groups.append({"params": rest, "weight_decay": 0.0})
        return groups

    def _make_optimizer(self) -> torch.optim.Optimizer:
        try:  # fused Adam: one kernel for every parameter (CPU support since torch 2.4)
            return torch.optim.Adam(self._param_groups(), lr=self.lr, fused=True)
        except (RuntimeError, TypeError):
            return torch.optim.Adam(self._param_groups(), lr=self.lr, foreach=True)

    def _ensure_optimizer(self) -> torch.optim.Optimizer:
        """The Adam optimizer shared by both trainers (its state is what training_state saves)."""
        if self._optimizer is None:
            self._optimizer = self._make_optimizer()
        return self._optimizer

    def _trainer_backend(self):
        """The epoch backend of :attr:`trainer` (mbpo_fast/ensemble_trainer.py)."""
        if self._trainer_impl is None:
            self._trainer_impl = make_backend(self, self.trainer, self.autocast_bf16)
            log_trainer_once(self)
        return self._trainer_impl

    def _bootstrap_indices(self, n_train: int, gen: torch.Generator) -> torch.Tensor:
        """One bootstrap index set per member: int64 [E, n_train], drawn with replacement."""
        shape = (self.ensemble_size, n_train)
        return torch.randint(n_train, shape, generator=gen, device=self.device)

    def _member_mse(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-member MSE float64 [E] of the mean on normalized x [N, in] against targets y
        [N, out], computed by this model's trainer backend."""
        return self._trainer_backend().member_mse(x, y)

    def fit(
        self,
        obs,
        act,
        rew,
        next_obs,
        holdout_ratio: float = 0.2,
        max_holdout: int = 5000,
        batch_size: int = 256,
        max_epochs: int | None = None,
        max_seconds: float | None = None,
        patience: int = 5,
        improvement_threshold: float = 0.01,
        progress: bool = False,
        seed: int | None = None,
    ) -> dict:
        """Trains every member on its bootstrap of (obs, act) -> (next_obs - obs, rew).

        obs, next_obs float32 [N, obs_dim]; act float32 [N, act_dim]; rew float32 [N]
        (float64 is accepted and converted; NaN/Inf raise ValueError).

        Steps: split off a holdout of ``min(int(N * holdout_ratio), max_holdout)`` rows; refit
        the input normalizer on the training split (std < 1e-12 -> 1); draw one bootstrap index
        set per member (with replacement, size = training rows); then per epoch: reshuffle each
        member's set, one Adam step per batch of ``batch_size`` rows per member, evaluate the
        holdout MSE. A member "improves" when its holdout MSE drops by more than
        ``improvement_threshold`` relative to its best. As in the original MBPO, every member's
        best starts at +inf at each call, so epoch 1 is always kept: the pre-fit weights were
        trained on most of the re-drawn holdout rows and would score too well to be a fair
        baseline. Training stops when more than ``patience`` epochs have passed since any
        member last improved (so at least ``patience + 2`` epochs), or at ``max_epochs`` /
        ``max_seconds`` (checked after each epoch). Each member's best weights are then
        restored (the logvar bounds are shared by all members and keep their last values) and
        the ``num_elites`` members with the lowest holdout MSE become the elites. With no
        holdout rows (tiny N or holdout_ratio=0) the training split stands in for it.

        Later fits warm-start from the current weights and optimizer state. `seed` (optional)
        draws this fit's split, bootstraps and shuffles from a fresh generator instead of the
        model's own.

        Returns {"holdout_mse": list[float] per member (restored weights), "elites": list[int],
        "epochs": int (training epochs run), "seconds": float, "train_loss": float (the
        objective averaged over the last epoch's batches, weight decay at the epoch's end),
        "holdout_mse_elite_mean": float, "initial_holdout_mse": list[float] (before training,
        with the refit normalizer), "trainer": str ("native" or "torch")}.

        The epochs run on this model's trainer (:attr:`trainer`, mbpo_fast/ensemble_trainer.py);
        both trainers draw the same split, bootstraps and shuffles and update the same
        parameters and torch.optim.Adam state, so fits with different trainers can alternate.
        """
        return fit_ensemble(
            self,
            obs,
            act,
            rew,
            next_obs,
            holdout_ratio=holdout_ratio,
            max_holdout=max_holdout,
            batch_size=batch_size,
            max_epochs=max_epochs,
            max_seconds=max_seconds,
            patience=patience,
            improvement_threshold=improvement_threshold,
            progress=progress,
            seed=seed,
        )

    # ------------------------------------------------------------------ inference

    def _validate_rows(self, obs, act) -> tuple[np.ndarray, np.ndarray, bool]:
        """float32 obs [B, obs_dim], act [B, act_dim] (a single [obs_dim] row is accepted).

        On CPU the kernels check finiteness themselves (same ValueError, naming obs/act), so
        the per-call Python check is skipped there.
        """
        fin = not self._on_cpu
        single = getattr(obs, "ndim", None) == 1 or (not hasattr(obs, "ndim") and np.ndim(obs) == 1)
        if single:
            obs = _float_array("obs", obs, (self.obs_dim,), fin)[None]
            act = _float_array("act", act, (self.act_dim,), fin)[None]
        else:
            obs = _float_array("obs", obs, (None, self.obs_dim), fin)
            act = _float_array("act", act, (obs.shape[0], self.act_dim), fin)
        return obs, act, single

    def predict(self, obs, act) -> tuple[np.ndarray, np.ndarray]:
        """Every member's Gaussian: (mean, var) float32 [E, B, obs_dim + 1] of (Δobs, reward).

        obs float32 [B, obs_dim], act float32 [B, act_dim] (or single rows [obs_dim],
        [act_dim] -> [E, obs_dim + 1]). Native kernels on CPU; torch forward on other devices.
        A CUDA model given torch CUDA tensors returns CUDA tensors: the fused CUDA kernel
        (mbpo_fast/cuda_ops.py) when mbpo_fast was built with CUDA, else the torch forward.
        """
        if self._cuda_call(obs):
            return self._predict_cuda(obs, act)
        obs, act, single = self._validate_rows(obs, act)
        if self._on_cpu:
            mean, var = self.inference.predict(obs, act)
        else:
            with torch.no_grad():
                m, v = self.predict_torch(
                    torch.from_numpy(obs).to(self.device), torch.from_numpy(act).to(self.device)
                )
            mean, var = m.cpu().numpy(), v.cpu().numpy()
        return (mean[:, 0], var[:, 0]) if single else (mean, var)

    def _validate_members(self, members, batch: int) -> np.ndarray | None:
        if members is None:
            return None
        arr = np.asarray(members)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"members: expected integer member indices, got dtype {arr.dtype}")
        if arr.ndim == 0:
            arr = np.full(batch, int(arr), dtype=np.int64)
        if arr.shape != (batch,):
            raise ValueError(
                f"members: expected shape ({batch},) or a scalar, got {tuple(arr.shape)}"
            )
        bad = (arr < 0) | (arr >= self.ensemble_size)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"members: entry {i} = {int(arr[i])} is out of range [0, {self.ensemble_size})"
            )
        return np.ascontiguousarray(arr, dtype=np.int64)

    def step(
        self,
        obs,
        act,
        seed: int = 0,
        deterministic: bool = False,
        members=None,
        return_members: bool = False,
        out=None,
    ):
        """One model transition per row: (next_obs float32 [B, obs_dim], rew float32 [B]).

        For each row a member is drawn uniformly among the elites (Philox stream of `seed`;
        the same members and noise on every backend) or taken from `members` (int [B] or a
        scalar, any member in [0, E)); only that member runs. Δobs and reward are sampled as
        ``mean + std * N(0, 1)`` (``deterministic=True``: the mean); next_obs = obs + Δobs.
        ``return_members=True`` appends the members used (int64 [B]).
        ``out=(next_obs, rew)``: preallocated float32 [B, obs_dim] and [B] (writeable,
        C-contiguous, not overlapping obs/act) that receive the results and are returned
        (CPU models, batched rows): a control loop then allocates nothing per call.

        Fast path: a CPU model given float32 numpy rows [B, obs_dim] / [B, act_dim] and no
        ``members`` goes straight to the kernel's bound parameters (``inference.handle()``),
        which checks shapes, finiteness and the seed itself (same errors); other inputs
        (single rows, float64, torch tensors, lists) are converted and checked here first.

        A CUDA model given torch CUDA tensors returns torch CUDA tensors computed by the fused
        CUDA kernel (the SAME members and Philox noise as the CPU backend; inputs borrowed,
        enqueued on the current stream; obs/act finiteness is not checked there, which would
        cost a sync). Otherwise a non-CPU model runs the torch path, which draws its members
        and noise from a torch.Generator seeded with `seed` (valid samples, but not the native
        Philox numbers).
        """
        inf = self._inference
        if (
            inf is not None
            and members is None
            and type(obs) is np.ndarray
            and type(act) is np.ndarray
            and obs.dtype is _F32  # native float32 (other descriptors take the general path)
            and act.dtype is _F32
            and obs.ndim == 2
        ):  # the fast path (see above): one native call, nothing converted
            handle = inf._handle
            if handle is None or inf._handle_ops is not _backend.ops:
                handle = inf.handle()
            if out is None:
                if not deterministic and not return_members:
                    return handle.sample(obs, act, seed)
                return handle.step(obs, act, seed, deterministic, None, None, None, return_members)
            out_next, out_rew = _out_pair(out, single=False)
            if not deterministic and not return_members:
                return handle.sample_into(obs, act, seed, out_next, out_rew)
            return handle.step(obs, act, seed, deterministic, None, out_next, out_rew,
                               return_members)
        if (
            isinstance(seed, bool)
            or not isinstance(seed, (int, np.integer))
            or not 0 <= seed < 2**64
        ):
            raise ValueError(f"seed: expected an int in [0, 2**64), got {seed!r}")
        if out is not None and not self._on_cpu:
            raise ValueError(f"out: preallocated outputs are for CPU models; this model is on "
                             f"{self.device}")
        if self._cuda_call(obs):
            next_obs, rew, used = self._step_cuda(obs, act, int(seed), bool(deterministic), members)
            return (next_obs, rew, used) if return_members else (next_obs, rew)
        obs, act, single = self._validate_rows(obs, act)
        if out is not None and single:
            raise ValueError("out: preallocated outputs need batched rows obs [B, obs_dim], "
                             "act [B, act_dim]")
        mem = self._validate_members(members, obs.shape[0])
        if self._on_cpu:
            next_obs, rew, used = self.inference.step(
                obs, act, seed=int(seed), deterministic=bool(deterministic), members=mem, out=out
            )
        else:
            next_obs, rew, used = self._step_torch(obs, act, int(seed), bool(deterministic), mem)
        if single:
            next_obs, rew, used = next_obs[0], rew[0], used[0]
        return (next_obs, rew, used) if return_members else (next_obs, rew)

    @torch.no_grad()
    def _predict_cuda(self, obs, act):
        native = self._cuda_native()
        if native is not None:
            return native.predict(obs, act)
        o, a, single = self._cuda_rows(obs, act)
        mean, var = self.predict_torch(o, a)
        return (mean[:, 0], var[:, 0]) if single else (mean, var)

    def _cuda_rows(self, obs, act):
        """Validated CUDA tensors obs [B, obs_dim], act [B, act_dim] (single rows promoted)."""
        from .cuda_ops import as_cuda_tensor

        single = obs.ndim == 1
        o = as_cuda_tensor("obs", obs, (self.obs_dim,) if single else (None, self.obs_dim),
                           device=self.device).reshape(-1, self.obs_dim)
        a = as_cuda_tensor("act", act, (self.act_dim,) if single else (o.shape[0], self.act_dim),
                           device=self.device).reshape(-1, self.act_dim)
        return o, a, single

    @torch.no_grad()
    def _step_cuda(self, obs, act, seed: int, deterministic: bool, members):
        """Device step on CUDA tensors: the fused kernel, or (no CUDA build) the torch path
        kept on the device."""
        native = self._cuda_native()
        if native is not None:
            return native.step(obs, act, seed=seed, deterministic=deterministic, members=members)
        o, a, single = self._cuda_rows(obs, act)
        mem = None
        if members is not None:
            mem = self._validate_members(
                members.cpu().numpy() if isinstance(members, torch.Tensor) else members, o.shape[0]
            )
        next_obs, rew, used = self._step_torch_tensors(o, a, seed, deterministic, mem)
        if single:
            return next_obs[0], rew[0], used[0]
        return next_obs, rew, used

    @torch.no_grad()
    def _step_torch(
        self,
        obs: np.ndarray,
        act: np.ndarray,
        seed: int,
        deterministic: bool,
        members: np.ndarray | None,
    ):
        """Torch version of :meth:`step` (any device): runs every member, gathers the chosen."""
        o = torch.from_numpy(obs).to(self.device)
        a = torch.from_numpy(act).to(self.device)
        next_obs, rew, used = self._step_torch_tensors(o, a, seed, deterministic, members)
        return next_obs.cpu().numpy(), rew.cpu().numpy(), used.cpu().numpy()

    @torch.no_grad()
    def _step_torch_tensors(self, o, a, seed: int, deterministic: bool, members):
        """The torch step on tensors of the model's device: (next_obs, rew, members used)."""
        gen = torch.Generator(self.device).manual_seed(seed % 2**63)
        b = o.shape[0]
        if members is None:
            pick = torch.randint(self.num_elites, (b,), generator=gen, device=self.device)
            used = self.elite_index[pick]
        else:
            used = torch.from_numpy(members).to(self.device)
        mean, var = self.predict_torch(o, a)
        rows = torch.arange(b, device=self.device)
        mu, sd = mean[used, rows], var[used, rows].sqrt()
        if not deterministic:
            mu = mu + sd * torch.randn(mu.shape, generator=gen, device=self.device)
        return o + mu[:, : self.obs_dim], mu[:, self.obs_dim], used

    def disagreement(self, obs, act, members=None) -> np.ndarray:
        """Per-row float32 [B]: population std across `members` (default: the elites) of the
        predicted means, averaged over the obs_dim + 1 outputs. CPU models, or a CUDA model given
        CUDA tensors (the fused CUDA kernels; returns a CUDA tensor)."""
        if self._cuda_call(obs):
            native = self._cuda_native()
            if native is None:
                from . import cuda_ops

                cuda_ops.require("EnsembleDynamics.disagreement on CUDA tensors")
            if members is not None:
                members = np.asarray(members).reshape(-1)
                if members.size < 1:
                    raise ValueError("members: expected at least one member index")
                members = self._validate_members(members, members.size)
            return native.disagreement(obs, act, members)
        obs, act, single = self._validate_rows(obs, act)
        if members is not None:
            members = np.asarray(members).reshape(-1)
            if members.size < 1:
                raise ValueError("members: expected at least one member index")
            members = self._validate_members(members, members.size)
        out = self.inference.disagreement(obs, act, members)
        return out[0] if single else out

    # ------------------------------------------------------------------ save / load

    def _tensor_specs(self) -> dict[str, tuple[tuple[int, ...], type]]:
        """name -> (shape, numpy dtype) of every tensor in the saved file."""
        return _file_layout(self.obs_dim, self.act_dim, self.ensemble_size, self.num_elites,
                            self.hidden_size, self.num_layers)

    def _named_tensors(self) -> dict[str, torch.Tensor]:
        named = {"input_mean": self.input_mean, "input_std": self.input_std}
        for i, layer in enumerate(self.layers):
            named[f"layers.{i}.weight"] = layer.weight
            named[f"layers.{i}.bias"] = layer.bias
        named.update(
            max_logvar=self.max_logvar, min_logvar=self.min_logvar, elites=self.elite_index
        )
        return named

    def save(self, path: str | os.PathLike) -> None:
        """Writes the DESIGN §3 safetensors layout atomically (readable from C++).

        Tensors: input_mean, input_std [in]; layers.{i}.weight [E, in_i, out_i], layers.{i}.bias
        [E, out_i] (i = 0..num_layers); max_logvar, min_logvar [obs_dim + 1]; elites int64
        [num_elites]. Metadata: obs_dim, act_dim, activation ("silu"), ensemble_size,
        num_elites, hidden_size, num_layers, format. Optimizer state is not included.
        """
        tensors = {name: t.detach().cpu().numpy() for name, t in self._named_tensors().items()}
        metadata = {
            "format": _FORMAT,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "activation": "silu",
            "ensemble_size": self.ensemble_size,
            "num_elites": self.num_elites,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
        }
        save_safetensors(path, tensors, {k: str(v) for k, v in metadata.items()})

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        trainer: str = "auto",
        autocast_bf16: bool = False,
    ) -> EnsembleDynamics:
        """Loads a file written by :meth:`save` (or any file in the DESIGN §3 layout).
        `trainer` / `autocast_bf16`: as in the constructor (the file holds no training state).

        Sizes come from the metadata (ensemble_size, num_elites, hidden_size, num_layers are
        inferred from the tensors when absent). Raises ValueError naming the file and the
        problem for a truncated/corrupt file, missing or unexpected tensors, a tensor whose
        shape or dtype disagrees with the metadata, non-finite values, input_std <= 0, or
        elites out of range / repeated.
        """
        tensors, meta = load_safetensors(path)
        source = os.fspath(path)

        def meta_int(key: str, fallback=None, minimum: int = 1) -> int:
            if key not in meta:
                if fallback is None:
                    raise ValueError(f"{source}: metadata is missing {key!r}")
                return int(fallback)
            try:
                value = int(meta[key])
            except ValueError:
                raise ValueError(
                    f"{source}: metadata {key!r} = {meta[key]!r} is not an int"
                ) from None
            if value < minimum:
                raise ValueError(f"{source}: metadata {key!r} = {value} must be >= {minimum}")
            return value

        activation = meta.get("activation", "silu").lower()
        if activation not in ("silu", "swish"):
            raise ValueError(f"{source}: activation {activation!r} is not supported (only 'silu')")
        w0 = tensors.get("layers.0.weight")
        n_linear = sum(1 for k in tensors if k.startswith("layers.") and k.endswith(".weight"))
        shape0 = tuple(w0.shape) if w0 is not None and w0.ndim == 3 else None
        elites_t = tensors.get("elites")
        sizes = {
            "obs_dim": meta_int("obs_dim"),
            "act_dim": meta_int("act_dim", minimum=0),
            "ensemble_size": meta_int("ensemble_size", shape0[0] if shape0 else None),
            "num_elites": meta_int(
                "num_elites",
                elites_t.shape[0] if elites_t is not None and elites_t.ndim == 1 else None,
            ),
            "hidden_size": meta_int("hidden_size", shape0[2] if shape0 else None),
            "num_layers": meta_int("num_layers", n_linear - 1 if n_linear >= 2 else None),
        }
        # Limits before allocation: the metadata's sizes must match the tensors the file
        # holds (whose bytes are all present) before a model of that size is built.
        if sizes["num_layers"] > len(tensors):  # bounds the layout built below
            raise ValueError(f"{source}: metadata num_layers = {sizes['num_layers']} needs "
                             f"{2 * (sizes['num_layers'] + 1) + 5} tensors, the file has "
                             f"{len(tensors)}")
        specs = _file_layout(**sizes)
        extra = sorted(set(tensors) - set(specs))
        if extra:
            raise ValueError(f"{source}: unexpected tensors {extra} for this metadata")
        arrays = {
            name: require_tensor(tensors, name, shape, dtype, source)
            for name, (shape, dtype) in specs.items()
        }
        try:
            model = cls(**sizes, device=device, trainer=trainer, autocast_bf16=autocast_bf16)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
        for name, arr in arrays.items():
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise ValueError(f"{source}: tensor {name!r} contains non-finite values")
        if not (arrays["input_std"] > 0).all():
            raise ValueError(f"{source}: tensor 'input_std' must be > 0 everywhere")
        el = arrays["elites"]
        if el.min() < 0 or el.max() >= model.ensemble_size or len(set(el.tolist())) != el.size:
            raise ValueError(
                f"{source}: tensor 'elites' = {el.tolist()} must be distinct indices "
                f"in [0, {model.ensemble_size})"
            )
        with torch.no_grad():
            for name, t in model._named_tensors().items():
                t.copy_(torch.from_numpy(arrays[name]))
        model._invalidate_inference()
        return model

    # ------------------------------------------------------------------ checkpointing

    def training_state(self) -> dict:
        """Optimizer and generator state for an exact resume (pair with ``state_dict()``)."""
        return {
            # deep copies: Optimizer.load_state_dict keeps same-device tensors by reference,
            # so a shared state would let two models step the same Adam moments
            "optimizer": None
            if self._optimizer is None
            else copy.deepcopy(self._optimizer.state_dict()),
            "generator": self._generator.get_state(),
        }

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``, with every tensor checked first (torch copies the
        matching tensors before it reports a wrong shape): with ``strict``, a missing or
        unexpected key, a tensor of another shape or dtype than this model's (ValueError naming
        it, the expected and the actual shape) or elites that are not distinct member indices
        raise before anything is copied."""
        if strict:
            check_module_state("load_state_dict", "EnsembleDynamics", state_dict, self)
            el = state_dict["elite_index"]
            if el.numel() and (int(el.min()) < 0 or int(el.max()) >= self.ensemble_size
                               or torch.unique(el).numel() != el.numel()):
                raise ValueError(f"load_state_dict: tensor elite_index = {el.tolist()} must "
                                 f"be distinct indices in [0, {self.ensemble_size})")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def load_training_state(self, state: dict, *, source: str = "load_training_state") -> None:
        """Restores :meth:`training_state` output (after ``load_state_dict`` of the same model).
        The Adam state and the generator state are checked against this model first
        (ValueError prefixed with `source`, naming the tensor; nothing changes then)."""
        if not isinstance(state, dict) or set(state) != {"optimizer", "generator"}:
            keys = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{source}: expected {{'optimizer', 'generator'}}, got {keys}")
        if state["optimizer"] is not None:
            check_adam_state(source, "optimizer", state["optimizer"],
                             self._optimizer or self._make_optimizer())
        check_generator_state(source, "generator", state["generator"], self._generator)
        if state.get("optimizer") is not None:
            opt = self._optimizer or self._make_optimizer()
            opt.load_state_dict(copy_adam_state(state["optimizer"]))
            self._optimizer = opt
        self._generator.set_state(state["generator"])
        self._invalidate_inference()


def _file_layout(obs_dim: int, act_dim: int, ensemble_size: int, num_elites: int,
                 hidden_size: int, num_layers: int) -> dict[str, tuple[tuple[int, ...], type]]:
    """name -> (shape, numpy dtype) of every tensor of a saved ensemble of these sizes."""
    in_dim, out_dim = obs_dim + act_dim, obs_dim + 1
    widths = [in_dim] + [hidden_size] * num_layers + [2 * out_dim]
    specs: dict[str, tuple[tuple[int, ...], type]] = {
        "input_mean": ((in_dim,), np.float32),
        "input_std": ((in_dim,), np.float32),
    }
    for i in range(num_layers + 1):
        specs[f"layers.{i}.weight"] = ((ensemble_size, widths[i], widths[i + 1]), np.float32)
        specs[f"layers.{i}.bias"] = ((ensemble_size, widths[i + 1]), np.float32)
    specs["max_logvar"] = ((out_dim,), np.float32)
    specs["min_logvar"] = ((out_dim,), np.float32)
    specs["elites"] = ((num_elites,), np.int64)
    return specs
