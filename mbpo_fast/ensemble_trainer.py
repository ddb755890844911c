"""Training of :class:`~mbpo_fast.ensemble.EnsembleDynamics`: MBPO's fit procedure and its
two interchangeable epoch backends.

:func:`fit_ensemble` is the procedure (DESIGN §4): validation, holdout split, normalizer refit,
bootstrap sets, epochs, early stopping with per-member best-snapshot restore, elites, progress
bar and the returned statistics. It draws every random number (split, bootstraps, the
per-epoch shuffle ``idx``) from the fit's torch.Generator itself, then hands each epoch to a
backend:

* :class:`TorchEnsembleTrainer`: per batch, a torch forward/backward of the model's
  objective and ``torch.optim.Adam.step`` (any device; optional bf16 autocast of the hidden
  layers).
* :class:`NativeEnsembleTrainer`: the whole epoch in ONE call of the C++ core
  (``mbpo_fast::EnsembleTrainer``, csrc/include/mbpo_fast/ensemble_trainer.h), GIL released,
  working in place on zero-copy views of the torch parameters and of torch.optim.Adam's
  ``exp_avg`` / ``exp_avg_sq`` / ``step`` tensors (CPU models, native extension).

Both backends consume the generator identically and leave the same torch state (parameters
and Adam state of the same optimizer), so a run may switch trainers between fits and
``training_state()`` / checkpoints keep working.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from . import _backend

__all__ = [
    "TRAINERS",
    "NativeEnsembleTrainer",
    "TorchEnsembleTrainer",
    "fit_ensemble",
    "native_trainer_available",
    "resolve_trainer",
]

_log = logging.getLogger("mbpo_fast.ensemble")

TRAINERS = ("auto", "native", "torch")
_EVAL_CHUNK = 8192  # rows per torch holdout forward: bounds activation memory on large splits


def native_trainer_available() -> bool:
    """True when the native extension (with the ensemble trainer) is the active backend."""
    return _backend.name == "native" and hasattr(_backend.ops, "EnsembleTrainer")


_NATIVE_MAX_LINEAR = 16  # kEnsembleMaxLayers (csrc/include/mbpo_fast/ensemble.h)


def resolve_trainer(trainer: str, device: torch.device, num_linear: int = 2) -> str:
    """The trainer a model on `device` with `num_linear` layers runs for the requested
    `trainer` ("auto" | "native" | "torch"): "auto" = native on CPU with the extension loaded,
    an AVX-512 GEMM (:func:`mbpo_fast._backend.native_training_accelerated`) and at most 16
    linear layers, torch otherwise. "native" raises when it cannot run (never
    a silent fallback)."""
    if not isinstance(trainer, str) or trainer not in TRAINERS:
        raise ValueError(f"trainer: expected one of {TRAINERS}, got {trainer!r}")
    on_cpu = device.type == "cpu"
    fits = num_linear <= _NATIVE_MAX_LINEAR
    if trainer == "torch":
        return "torch"
    if trainer == "auto":
        fast = native_trainer_available() and _backend.native_training_accelerated()
        return "native" if on_cpu and fits and fast else "torch"
    if not fits:
        raise ValueError(
            f"trainer='native' supports at most {_NATIVE_MAX_LINEAR} linear layers "
            f"(num_layers <= {_NATIVE_MAX_LINEAR - 1}), got {num_linear}; use trainer='torch'"
        )
    if not on_cpu:
        raise ValueError(
            f"trainer='native' trains CPU models only; this model is on {device}. "
            "Use trainer='torch' (or 'auto') for a CUDA model."
        )
    if not native_trainer_available():
        reason = (
            f"the active backend is {_backend.name!r} (MBPO_FAST_BACKEND or a missing build)"
            if _backend.name != "native"
            else "the extension has no EnsembleTrainer (rebuild it)"
        )
        raise RuntimeError(
            f"trainer='native' needs the native extension mbpo_fast._C: {reason}. "
            "Build it (pip install -e .) or use trainer='torch' / 'auto'."
        )
    return "native"


def _trainable(model) -> list[torch.Tensor]:
    """The trainable tensors in the native layout: [w0, b0, ..., wL, bL, max_logvar, min_logvar]."""
    return [p for layer in model.layers for p in (layer.weight, layer.bias)] + [
        model.max_logvar,
        model.min_logvar,
    ]


class TorchEnsembleTrainer:
    """Epoch backend on torch: one forward/backward and ``optimizer.step()`` per batch.

    ``bf16=True`` runs the hidden layers under torch.autocast(bfloat16) (bf16 matmul inputs,
    float32 accumulation); the output layer, the loss, the parameters and Adam stay float32.
    """

    name = "torch"

    def __init__(self, model, bf16: bool = False) -> None:
        self.model = model
        self.bf16 = bool(bf16)

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        m = self.model
        if not self.bf16:
            return m._data_loss(x, y)
        with torch.autocast(m.device.type, dtype=torch.bfloat16):
            h = m.hidden(x)
        mean, lv = m.head(h.float())
        nll = ((mean - y).square() * torch.exp(-lv) + lv).mean(dim=(1, 2))
        return nll.sum() + m.logvar_bound_loss()

    def train_epoch(
        self,
        optimizer: torch.optim.Optimizer,
        x: torch.Tensor,
        y: torch.Tensor,
        idx: torch.Tensor,
        batch_size: int,
    ) -> float:
        """One Adam step per slice ``idx[:, s:s+batch_size]`` (member e trains on rows
        ``x[idx[e]]``). x float32 [N, in], y [N, out], idx int64 [E, M]. Returns the mean batch
        loss (one host sync per epoch)."""
        loss_sum = torch.zeros((), device=x.device)
        n_batches = 0
        for s in range(0, idx.shape[1], batch_size):
            b = idx[:, s : s + batch_size]  # [E, b]: one gather per batch for x and y
            loss = self._loss(x[b], y[b])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            n_batches += 1
        return float(loss_sum) / n_batches

    def finish(self) -> None:
        """End of a fit: nothing held."""

    @torch.no_grad()
    def member_mse(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-member MSE float64 [E] of the mean on normalized x [N, in] against y [N, out]."""
        m = self.model
        total = torch.zeros(m.ensemble_size, device=x.device, dtype=torch.float64)
        for s in range(0, x.shape[0], _EVAL_CHUNK):
            xs = x[s : s + _EVAL_CHUNK].unsqueeze(0).expand(m.ensemble_size, -1, -1)
            mean, _ = m(xs)
            total += (mean - y[s : s + _EVAL_CHUNK]).square().sum(dim=(1, 2)).double()
        return total / (x.shape[0] * m.out_dim)


class NativeEnsembleTrainer:
    """Epoch backend on the C++ core: one GIL-free call per epoch, in place on the torch
    parameters and torch.optim.Adam's state tensors (created as torch's first step would).

    ``bf16=True``: the hidden layers' matmuls take bf16 inputs with float32 accumulation; the
    output layer, the parameters and Adam stay float32.
    """

    name = "native"

    def __init__(self, model, bf16: bool = False) -> None:
        if model.device.type != "cpu":
            raise ValueError(f"NativeEnsembleTrainer: the model is on {model.device}, not CPU")
        self.model = model
        self.bf16 = bool(bf16)
        self._core = None
        self._bound_to: tuple[int, ...] = ()
        self._views: dict[tuple, np.ndarray] = {}

    # The native core and the cached views point into this process's memory: a copy or a
    # pickle of the model gets a fresh backend that binds at its first use.
    def __getstate__(self) -> dict:
        return {"model": self.model, "bf16": self.bf16}

    def __setstate__(self, state: dict) -> None:
        # no checks here: during a deepcopy the model copy is not populated yet
        self.model, self.bf16 = state["model"], state["bf16"]
        self._core, self._bound_to, self._views = None, (), {}

    def _view(self, t: torch.Tensor) -> np.ndarray:
        """A zero-copy numpy view of CPU tensor `t`, cached for the tensors a fit passes every
        epoch (the view keeps its tensor alive, so a cached key cannot be reused by another)."""
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype)
        view = self._views.get(key)
        if view is None:
            if len(self._views) >= 4:
                self._views.pop(next(iter(self._views)))
            view = self._views[key] = t.detach().numpy()
        return view

    def _core_for(self, optimizer: torch.optim.Optimizer):
        """The native trainer over the current parameters and Adam state tensors (rebuilt
        when the optimizer or its state tensors were replaced, e.g. by load_training_state)."""
        params = _trainable(self.model)
        state = optimizer.state
        for p in params:
            if len(state[p]) == 0:  # as torch.optim.Adam's first step creates it
                state[p]["step"] = torch.tensor(0.0, dtype=torch.float32)
                state[p]["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state[p]["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        tensors = params + [state[p][k] for k in ("exp_avg", "exp_avg_sq", "step") for p in params]
        key = tuple(t.data_ptr() for t in tensors) + (id(optimizer),)
        if self._core is None or key != self._bound_to:
            groups = optimizer.param_groups
            beta1, beta2 = groups[0]["betas"]
            m = self.model
            names = ("exp_avg", "exp_avg_sq", "step")
            views = {k: [state[p][k].numpy() for p in params] for k in names}
            self._core = _backend.ops.EnsembleTrainer(
                m.obs_dim,
                m.act_dim,
                m.ensemble_size,
                m.hidden_size,
                m.num_layers,
                list(m.weight_decays),
                float(groups[0]["lr"]),
                float(beta1),
                float(beta2),
                float(groups[0]["eps"]),
                self.bf16,
                [p.detach().numpy() for p in params],
                views["exp_avg"],
                views["exp_avg_sq"],
                views["step"],
            )
            self._bound_to = key
        return self._core

    def train_epoch(
        self,
        optimizer: torch.optim.Optimizer,
        x: torch.Tensor,
        y: torch.Tensor,
        idx: torch.Tensor,
        batch_size: int,
    ) -> float:
        """Same contract as :meth:`TorchEnsembleTrainer.train_epoch`, one native call."""
        _check_native_optimizer(optimizer, self.model)
        core = self._core_for(optimizer)
        return float(core.train_epoch(self._view(x), self._view(y), idx.numpy(), int(batch_size)))

    def finish(self) -> None:
        """End of a fit: drops the cached views (they keep the fit's data alive)."""
        self._views.clear()

    def member_mse(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-member MSE float64 [E] (float32 forward, double sums), as the torch backend."""
        core = self._core_for(self.model._ensure_optimizer())
        return torch.from_numpy(core.member_mse(self._view(x), self._view(y)))


def _check_native_optimizer(optimizer: torch.optim.Optimizer, model) -> None:
    """The native step implements torch.optim.Adam with the model's param groups and plain
    settings; anything else would silently train differently, so it is refused."""
    if type(optimizer) is not torch.optim.Adam:
        raise TypeError(
            f"native trainer: expected torch.optim.Adam, got {type(optimizer).__name__}"
        )
    first = optimizer.param_groups[0]
    for g in optimizer.param_groups:
        if g.get("amsgrad") or g.get("maximize") or g.get("decoupled_weight_decay"):
            raise ValueError("native trainer: amsgrad, maximize and AdamW are not supported")
        if any(g[k] != first[k] for k in ("lr", "betas", "eps")):
            raise ValueError("native trainer: per-group lr / betas / eps are not supported")
    expected = model._param_groups()
    got = [([id(p) for p in g["params"]], g["weight_decay"]) for g in optimizer.param_groups]
    if got != [([id(p) for p in g["params"]], g["weight_decay"]) for g in expected]:
        raise ValueError(
            "native trainer: the optimizer's param groups (tensors, weight_decay) differ from "
            "the model's (_param_groups)"
        )


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if int(value) < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


def fit_ensemble(
    model,
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
    """MBPO's model fit of `model` with its trainer backend; see EnsembleDynamics.fit."""
    t0 = time.perf_counter()
    obs, act, rew, next_obs = model._validate_transitions(obs, act, rew, next_obs)
    n = obs.shape[0]
    if not (isinstance(holdout_ratio, (int, float)) and 0.0 <= holdout_ratio < 1.0):
        raise ValueError(f"holdout_ratio: expected a float in [0, 1), got {holdout_ratio!r}")
    max_holdout = _positive_int("max_holdout", max_holdout, minimum=0)
    batch_size = _positive_int("batch_size", batch_size)
    if max_epochs is not None:
        max_epochs = _positive_int("max_epochs", max_epochs)
    if max_seconds is not None and not (isinstance(max_seconds, (int, float)) and max_seconds > 0):
        raise ValueError(f"max_seconds: expected a number > 0 or None, got {max_seconds!r}")
    patience = _positive_int("patience", patience)
    if not (isinstance(improvement_threshold, (int, float)) and improvement_threshold >= 0):
        raise ValueError(
            f"improvement_threshold: expected a float >= 0, got {improvement_threshold!r}"
        )
    if seed is not None:
        seed = _positive_int("seed", seed, minimum=0)
    n_hold = min(int(n * holdout_ratio), max_holdout)
    if n - n_hold < 1:
        raise ValueError(
            f"obs: need at least one training row, got {n} rows with {n_hold} held out"
        )

    backend = model._trainer_backend()
    gen = model._generator if seed is None else torch.Generator(model.device).manual_seed(seed)
    dev, E = model.device, model.ensemble_size
    x_all, y_all = model._tensors(obs, act, rew, next_obs)
    perm = torch.randperm(n, generator=gen, device=dev)
    train_idx, hold_idx = perm[n_hold:], perm[:n_hold]
    x_train, y_train = x_all[train_idx], y_all[train_idx]
    n_train = x_train.shape[0]

    with torch.no_grad():  # normalizer: in place, so borrowed numpy views stay valid
        x64 = x_train.double()
        std = x64.std(dim=0, unbiased=False)
        std = torch.where(std < 1e-12, torch.ones_like(std), std)
        model.input_mean.copy_(x64.mean(dim=0))
        model.input_std.copy_(std)
    x_train = model._normalize_x(x_train)
    if n_hold > 0:
        x_hold, y_hold = model._normalize_x(x_all[hold_idx]), y_all[hold_idx]
    else:
        x_hold, y_hold = x_train, y_train

    boot = model._bootstrap_indices(n_train, gen)
    opt = model._ensure_optimizer()
    members = model._per_member()

    initial = model._member_mse(x_hold, y_hold).tolist()
    # Every member's best starts at +inf: epoch 1 always improves (see EnsembleDynamics.fit).
    best = torch.full((E,), math.inf, device=dev, dtype=torch.float64)
    snapshot = [p.detach().clone() for p in members]
    epochs, since_improved, train_loss = 0, 0, float("nan")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_epochs, desc="ensemble fit", unit="epoch", leave=False)
    try:
        while True:
            # one shuffle per member per epoch; batches are contiguous slices of it
            order = torch.argsort(torch.rand(E, n_train, generator=gen, device=dev), dim=1)
            idx = boot.gather(1, order)
            batch_loss = backend.train_epoch(opt, x_train, y_train, idx, batch_size)
            epochs += 1
            mse = model._member_mse(x_hold, y_hold)
            improved = torch.isinf(best) | ((best - mse) > improvement_threshold * best)
            best = torch.where(improved, mse, best)
            with torch.no_grad():
                for p, snap in zip(members, snapshot, strict=True):
                    mask = improved.view(E, *([1] * (p.dim() - 1)))
                    snap.copy_(torch.where(mask, p, snap))
            any_improved = bool(improved.any())
            train_loss = batch_loss + float(model.weight_decay_loss().detach())
            since_improved = 0 if any_improved else since_improved + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(holdout_mse=f"{float(mse.mean()):.4g}", loss=f"{train_loss:.4g}")
            if since_improved > patience:
                break
            if max_epochs is not None and epochs >= max_epochs:
                break
            if max_seconds is not None and time.perf_counter() - t0 >= max_seconds:
                break
    finally:
        backend.finish()
        if bar is not None:
            bar.close()

    with torch.no_grad():  # in place: numpy views held by the inference adapter stay valid
        for p, snap in zip(members, snapshot, strict=True):
            p.copy_(snap)
    final = model._member_mse(x_hold, y_hold)
    order = torch.argsort(final)[: model.num_elites]
    model.elite_index.copy_(order.to(model.elite_index))
    model._invalidate_inference()
    final_list = final.tolist()
    elites = model.elites
    return {
        "holdout_mse": final_list,
        "elites": elites,
        "epochs": epochs,
        "seconds": time.perf_counter() - t0,
        "train_loss": train_loss,
        "holdout_mse_elite_mean": float(np.mean([final_list[i] for i in elites])),
        "initial_holdout_mse": initial,
        "trainer": backend.name,
    }


def make_backend(model, name: str, bf16: bool):
    """The epoch backend object for a resolved trainer name."""
    if name == "native":
        return NativeEnsembleTrainer(model, bf16)
    return TorchEnsembleTrainer(model, bf16)


def log_trainer_once(model) -> None:
    """Logs (INFO) which trainer a model's fits run: once per model and trainer setting."""
    setting = (model.trainer, model.autocast_bf16)
    if getattr(model, "_trainer_logged", None) != setting:
        model._trainer_logged = setting
        _log.info(
            "EnsembleDynamics: %s trainer%s (E=%d, %d x %d hidden)",
            model.trainer,
            " with bf16 matmuls" if model.autocast_bf16 else "",
            model.ensemble_size,
            model.num_layers,
            model.hidden_size,
        )
