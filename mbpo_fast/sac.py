"""Soft Actor-Critic (Haarnoja et al. 2018) with automatic entropy tuning, tuned for speed.

The math is the standard SAC of the MBPO paper (softlearning / CleanRL / SB3):

* Actor: an MLP ``obs -> (mean, log_std)`` with ReLU hidden layers; ``log_std`` is clamped
  to ``[LOG_STD_MIN, LOG_STD_MAX] = [-20, 2]`` with ``torch.clamp`` (a hard clamp, not a
  tanh rescale: a native rollout engine replicates exactly this).
  A pre-squash sample ``u = mean + exp(log_std) * eps`` (``eps ~ N(0, I)``) becomes the action
  ``a = tanh(u) * scale + bias`` with ``scale = (high - low) / 2``, ``bias = (high + low) / 2``.
  By the change of variables its log-density is::

      log pi(a|s) = sum_i [ -eps_i^2 / 2 - log_std_i - log(2 pi) / 2 ]            (Normal(u))
                  - sum_i [ log(scale_i) + 2 * (log 2 - u_i - softplus(-2 u_i)) ]  (|da/du|)

  where ``2 * (log 2 - u - softplus(-2u)) == log(1 - tanh(u)^2)`` exactly, but stays finite
  and accurate for large ``|u|`` (actions at the bounds), unlike ``log(1 - tanh^2 + 1e-6)``.
* Critics: twin Q networks ``concat(obs, act) -> Q``, held as ONE 2-member batched ensemble
  (:class:`mbpo_fast.nn.BatchedLinear`: weight ``[2, in, out]``), with Polyak-averaged targets.
* Critic target:
  ``y = r + gamma * (1 - terminated) * (min_j Qtarg_j(s', a') - alpha * log pi(a'|s'))``
  with ``a' ~ pi(.|s')`` from the current actor; bootstrapping stops on ``terminated`` only
  (time-limit truncation is not terminal). Loss: ``sum_j mean_B (Q_j(s, a) - y)^2``.
* Actor loss (after the critic step, with the updated critics): ``mean(alpha * log pi(a|s) -
  min_j Q_j(s, a))``, ``a ~ pi(.|s)``.
* Temperature: ``alpha = exp(log_alpha)``, loss ``-mean(log_alpha * (log pi(a|s) + H_target))``
  using the actor step's sample; ``H_target`` defaults to ``-act_dim``.

This module holds the agent: networks, acting, export and checkpoints. The update itself
runs in a trainer (:mod:`mbpo_fast.sac_trainer`): the torch trainer (autograd, any device)
or the native one (one C++ call per ``[K, B, ...]`` block, in place on the same tensors;
benchmarks/RESULTS_sac.md). ``update`` accepts a block of K batches sampled in one call and
draws the block's noise in one ``torch.randn`` call, so the trainers are interchangeable
at any block.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .checkpoint import load_torch_file
from .io import atomic_write, save_safetensors
from .nn import BatchedLinear
from .sac_trainer import TRAINERS, make_trainer
from .state_checks import (
    check_adam_state,
    check_generator_state,
    check_module_state,
    check_tensor,
    copy_adam_state,
)
from .types import Transition

logger = logging.getLogger("mbpo_fast.sac")
_LOGGED_TRAINERS: set[tuple] = set()  # log each (requested, resolved) trainer once

LOG_STD_MIN = -20.0
LOG_STD_MAX = 2.0
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG2 = math.log(2.0)
_FORMAT = "mbpo_fast.SAC/1"
_NARROW = 16  # output widths up to this run as x @ W^T (see _MLP.forward) ...
_NARROW_MIN_ROWS = 32  # ... for batches of at least this many rows


def squashed_gaussian(mean: torch.Tensor, log_std: torch.Tensor, eps: torch.Tensor | None,
                      scale: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples ``a = tanh(mean + exp(log_std) * eps) * scale + bias``; returns ``(a, log pi(a))``.

    mean, log_std, eps: float [B, act_dim] (``log_std`` already clamped); scale, bias:
    [act_dim]. ``eps=None`` gives the deterministic action ``tanh(mean) * scale + bias`` (its
    log-density is evaluated at ``u = mean``). Returns a [B, act_dim] and log pi [B]; the
    formula is in the module docstring.
    """
    if eps is None:
        u = mean
        per_dim = -log_std
    else:
        u = torch.addcmul(mean, log_std.exp(), eps)
        per_dim = -0.5 * eps.square() - log_std
    # log|da/du| = log(scale) + log(1 - tanh(u)^2) = log(scale) + 2*(log 2 - u - softplus(-2u));
    # the u-independent terms are summed once into `const`.
    per_dim = per_dim + 2.0 * (u + F.softplus(-2.0 * u))
    const = -mean.shape[-1] * (_HALF_LOG_2PI + 2.0 * _LOG2) - scale.log().sum()
    action = torch.addcmul(bias, torch.tanh(u), scale)
    return action, per_dim.sum(-1) + const


class _MLP(nn.Module):
    """A stack of :class:`BatchedLinear` layers with ReLU between them.

    ``forward(x)``: x float32 [E, B, in] (or [B, in], broadcast to every member with
    ``expand``, no copy) -> [E, B, out]. With ``E == 1`` the layers run as plain ``addmm``
    on the member's [in, out] weight (the same numbers, a better-shaped kernel).
    """

    def __init__(self, ensemble_size: int, sizes: list[int], generator: torch.Generator) -> None:
        super().__init__()
        self.ensemble_size = ensemble_size
        self.layers = nn.ModuleList(
            BatchedLinear(ensemble_size, n_in, n_out, init="torch", generator=generator)
            for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *hidden, out = self.layers
        n_out = out.weight.shape[-1]
        if self.ensemble_size == 1:
            if x.dim() == 3:
                x = x[0]
            for layer in hidden:
                x = torch.relu_(torch.addmm(layer.bias[0], x, layer.weight[0]))  # in place
            with _float32_output(x) as x:
                if n_out <= _NARROW and x.shape[0] >= _NARROW_MIN_ROWS:
                    # A narrow head (the policy's 2 * act_dim columns) as x @ W^T with W^T
                    # contiguous: BLAS handles that shape far better than x @ W with a
                    # 6-column W (measured 34 vs 81 µs at 256 x 256 x 6, one thread); the
                    # transposed copy is 2 * act_dim * hidden floats. Not for a few rows
                    # (act() on one observation), where the copy would cost more.
                    return F.linear(x, out.weight[0].t().contiguous(), out.bias[0]).unsqueeze(0)
                return torch.addmm(out.bias[0], x, out.weight[0]).unsqueeze(0)
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.ensemble_size, *x.shape)  # a view, no copy
        for layer in hidden:
            x = torch.relu_(torch.baddbmm(layer.bias.unsqueeze(1), x, layer.weight))
        with _float32_output(x) as x:
            if n_out == 1:
                # One output per member (the critics' Q): a broadcast multiply and a row sum.
                # A batched matmul with a single output column (and its backward, an outer
                # product with K = 1) is a degenerate shape for BLAS: ~150-265 µs per call
                # at [2, 256, 256] on one thread; this takes a fraction of that (SAC update
                # 9.7 -> 9.0 ms, benchmarks/RESULTS_sac.md).
                return ((x * out.weight.transpose(1, 2)).sum(-1, keepdim=True)
                        + out.bias.unsqueeze(1))
            return torch.baddbmm(out.bias.unsqueeze(1), x, out.weight)


@contextlib.contextmanager
def _float32_output(x: torch.Tensor):
    """Under bf16 autocast, runs the output layer in float32: it is a sliver of the FLOPs,
    and Q-values / policy means rounded to bf16 (8 bits of mantissa: +-0.25 at |Q| = 64)
    would put that rounding straight into the TD errors and log-probabilities."""
    if not torch.is_autocast_enabled(x.device.type):
        yield x
        return
    with torch.autocast(x.device.type, enabled=False):
        yield x.float()


def _as_tensor(x: Any, name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x
    else:
        try:
            arr = np.asarray(x)
        except Exception as exc:  # ragged lists and the like
            raise TypeError(f"{name}: expected an array, got {type(x).__name__} ({exc})") from None
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)
                                       or arr.dtype == np.bool_):
            raise TypeError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
        if not arr.flags.writeable:  # torch.from_numpy warns on read-only arrays
            arr = arr.copy()
        t = torch.from_numpy(arr)  # zero-copy where the dtype already matches
    return t.to(device=device, dtype=dtype, non_blocking=True)


class SAC:
    """Soft Actor-Critic agent (see the module docstring for the exact math).

    Args:
        obs_dim, act_dim: observation / action sizes (> 0).
        action_low, action_high: float [act_dim] bounds, finite, ``low < high`` elementwise.
        hidden_size, num_layers: actor and critics have ``num_layers`` hidden ReLU layers of
            ``hidden_size`` units (MBPO: 2 x 256).
        lr: Adam learning rate of actor, critics and ``log_alpha``.
        gamma: discount; tau: Polyak rate of the target critics (per update).
        target_entropy: entropy target of the temperature; None -> ``-act_dim``.
        init_alpha: initial temperature (> 0).
        device: torch device of the networks (``act`` always returns numpy on the host).
        seed: seeds the parameter initialization and the agent's own ``torch.Generator``,
            which drives all action noise (``act`` and ``update``): two agents built with the
            same arguments behave identically.
        autocast_bf16: run the hidden layers' matmuls of :meth:`update` (forward and
            backward) with bf16 inputs and float32 accumulation; parameters, optimizer
            state, output layers and losses stay float32. The torch trainer uses bf16
            autocast (which also rounds those layers' outputs to bf16); the native trainer
            keeps activations in float32. Faster on CPUs with bf16 dot products; learning on
            Pendulum-v1 was unchanged (benchmarks/RESULTS_sac.md). ``act`` always runs in
            float32.
        compile: wrap the two loss computations in ``torch.compile``. Measured on the 2-core
            CPU machines: ~40 s of compilation, then updates ~25% SLOWER than eager, so it
            is off by default; it is here for GPUs, where it may pay (torch trainer only).
        trainer: who runs :meth:`update` (:mod:`mbpo_fast.sac_trainer`): "native" (one C++
            call per block, in place on these tensors; CPU, native extension, no compile),
            "torch" (autograd; any device), or "auto": native where it can run, else torch.
            "native" raises ValueError when it cannot run. Stored in ``config``; checkpoints
            written before the option existed load with "auto". The state is the same
            tensors for both, so trainers may be switched at any point (e.g. save, then
            ``SAC.load(path, trainer=...)``).

    Attributes ``actor`` (ensemble-of-one :class:`_MLP`), ``critic``, ``critic_target`` (2-member
    ensembles), ``log_alpha`` and the optimizers are public for inspection; ``trainer`` names
    the resolved trainer.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        action_low: Any,
        action_high: Any,
        hidden_size: int = 256,
        num_layers: int = 2,
        lr: float = 3e-4,
        gamma: float = 0.99,
        tau: float = 5e-3,
        target_entropy: float | None = None,
        init_alpha: float = 1.0,
        device: str | torch.device = "cpu",
        seed: int = 0,
        autocast_bf16: bool = False,
        compile: bool = False,
        trainer: str = "auto",
    ) -> None:
        low, high, target_entropy = _check_arguments(
            obs_dim, act_dim, action_low, action_high, hidden_size, num_layers, lr, gamma, tau,
            target_entropy, init_alpha, trainer)
        obs_dim, act_dim = int(obs_dim), int(act_dim)

        self.device = torch.device(device)
        self.config: dict[str, Any] = dict(
            obs_dim=obs_dim, act_dim=act_dim, action_low=low.tolist(),
            action_high=high.tolist(), hidden_size=int(hidden_size), num_layers=int(num_layers),
            lr=float(lr), gamma=float(gamma), tau=float(tau),
            target_entropy=float(target_entropy), init_alpha=float(init_alpha),
            seed=int(seed), autocast_bf16=bool(autocast_bf16), compile=bool(compile))
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.gamma, self.tau = float(gamma), float(tau)
        self.target_entropy = float(target_entropy)
        self.autocast_bf16 = bool(autocast_bf16)

        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        init_gen = torch.Generator().manual_seed(int(seed))  # init on CPU, then move
        hidden = [int(hidden_size)] * int(num_layers)
        self.actor = _MLP(1, [obs_dim, *hidden, 2 * act_dim], init_gen).to(self.device)
        self.critic = _MLP(2, [obs_dim + act_dim, *hidden, 1], init_gen).to(self.device)
        self.critic_target = _MLP(2, [obs_dim + act_dim, *hidden, 1], init_gen).to(self.device)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(init_alpha), device=self.device,
                                      requires_grad=True)

        self._low_np = low.astype(np.float32)
        self._high_np = high.astype(np.float32)
        self.action_scale = torch.tensor((high - low) / 2.0, dtype=torch.float32,
                                         device=self.device)
        self.action_bias = torch.tensor((high + low) / 2.0, dtype=torch.float32,
                                        device=self.device)
        self._low = torch.tensor(self._low_np, device=self.device)
        self._high = torch.tensor(self._high_np, device=self.device)

        # fused Adam exists for CPU and CUDA float tensors in torch >= 2.4; foreach otherwise.
        opt_kw = _fast_adam_kwargs(self.device)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=lr, **opt_kw)
        # Actor and temperature step together (one backward, one fused Adam call): Adam is
        # per-parameter, so this is the same math as two optimizers, with half the overhead.
        # Param group 0: the actor's weights, group 1: [log_alpha].
        self.actor_optim = torch.optim.Adam(
            [{"params": list(self.actor.parameters())}, {"params": [self.log_alpha]}],
            lr=lr, **opt_kw)
        self.num_updates = 0

        self._trainer = make_trainer(self, trainer, compile=bool(compile))
        self.config["trainer"] = trainer
        log_key = (trainer, self._trainer.name, self.autocast_bf16)
        if log_key not in _LOGGED_TRAINERS:
            _LOGGED_TRAINERS.add(log_key)
            logger.info("SAC trainer: %s (requested %r%s)", self._trainer.name, trainer,
                        ", bf16 matmuls" if self.autocast_bf16 else "")

    @property
    def trainer(self) -> str:
        """The trainer that runs :meth:`update`: "native" or "torch" ("auto" resolved)."""
        return self._trainer.name

    def set_trainer(self, trainer: str) -> None:
        """Switches the trainer ("auto" | "native" | "torch") for the next :meth:`update`;
        the state (tensors, Adam, generator, num_updates) carries over unchanged. Raises
        ValueError (and keeps the current trainer) when "native" cannot run."""
        if trainer not in TRAINERS:
            raise ValueError(f"SAC: trainer must be one of {TRAINERS}, got {trainer!r}")
        self._trainer = make_trainer(self, trainer, compile=bool(self.config["compile"]))
        self.config["trainer"] = trainer
        logger.info("SAC trainer: %s (requested %r)", self._trainer.name, trainer)

    # ------------------------------------------------------------------ acting
    def _policy(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """obs [B, obs_dim] -> (mean, clamped log_std), each [B, act_dim]."""
        out = self.actor(obs)[0]
        mean, log_std = out[:, :self.act_dim], out[:, self.act_dim:]
        return mean, torch.clamp(log_std, LOG_STD_MIN, LOG_STD_MAX)

    def _sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self._policy(obs)
        eps = torch.randn(mean.shape, generator=self.generator, device=self.device)
        return squashed_gaussian(mean, log_std, eps, self.action_scale, self.action_bias)

    def act(self, obs: Any, deterministic: bool = False) -> np.ndarray:
        """Policy action(s) for ``obs``.

        obs: float [obs_dim] or [B, obs_dim] (numpy, list or torch tensor).
        Returns float32 numpy [act_dim] or [B, act_dim], inside ``[action_low, action_high]``
        (``deterministic=True``: ``tanh(mean) * scale + bias``; else a sample whose noise
        comes from the agent's generator).
        """
        t = _as_tensor(obs, "obs", self.device, torch.float32)
        single = t.dim() == 1
        if t.dim() not in (1, 2) or t.shape[-1] != self.obs_dim:
            raise ValueError(f"act: obs must have shape ({self.obs_dim},) or (B, {self.obs_dim}), "
                             f"got {tuple(t.shape)}")
        with torch.inference_mode():
            mean, log_std = self._policy(t.unsqueeze(0) if single else t)
            u = mean
            if not deterministic:
                eps = torch.randn(mean.shape, generator=self.generator, device=self.device)
                u = torch.addcmul(mean, log_std.exp(), eps)
            a = torch.tanh(u).mul_(self.action_scale).add_(self.action_bias)
            # tanh saturates to exactly +-1 in float32; rounding of scale + bias may then
            # step past a bound by one ulp, so clamp to the closed box.
            a = torch.clamp(a, self._low, self._high)
            if single:
                a = a[0]
            return a.cpu().numpy()

    # ------------------------------------------------------------------ updating
    def update(self, batch: Transition) -> dict[str, torch.Tensor]:
        """One SAC update per batch.

        batch: a :class:`Transition` of numpy arrays or torch tensors, either one batch
        (obs float [B, obs_dim], act [B, act_dim], rew [B], next_obs [B, obs_dim],
        terminated bool [B]) or a block of K batches with a leading [K, B, ...] dimension
        (K updates run in sequence from that one sampled block). Shapes are validated
        before anything changes; values are not (rows must be finite: checking would cost
        a host synchronization per update, and the pools never store non-finite rows).

        Returns a dict of detached float32 tensors, 0-d for one batch or [K] for a block:
        ``critic_loss``, ``actor_loss``, ``alpha`` (the temperature used in the update),
        ``entropy`` (``-mean log pi`` of the actor step's sample) and ``mean_q`` (mean of
        both critics on the batch). Nothing here waits on the device; ``float(v)`` when
        logging is the only synchronization.
        """
        if not isinstance(batch, tuple) or len(batch) != 5:
            raise TypeError(f"update: batch must be a Transition (obs, act, rew, next_obs, "
                            f"terminated), got {type(batch).__name__}")
        obs, act, rew, next_obs, terminated = batch
        dev, f32 = self.device, torch.float32
        obs = _as_tensor(obs, "batch.obs", dev, f32)
        lead = tuple(obs.shape[:-1])
        if obs.dim() not in (2, 3) or obs.shape[-1] != self.obs_dim or 0 in lead:
            raise ValueError(f"update: batch.obs must have shape (B, {self.obs_dim}) or "
                             f"(K, B, {self.obs_dim}), got {tuple(obs.shape)}")
        act = _as_tensor(act, "batch.act", dev, f32)
        rew = _as_tensor(rew, "batch.rew", dev, f32)
        next_obs = _as_tensor(next_obs, "batch.next_obs", dev, f32)
        term = _as_tensor(terminated, "batch.terminated", dev, torch.bool)
        for name, t, shape in (("act", act, (*lead, self.act_dim)), ("rew", rew, lead),
                               ("next_obs", next_obs, (*lead, self.obs_dim)),
                               ("terminated", term, lead)):
            if tuple(t.shape) != shape:
                raise ValueError(f"update: batch.{name} must have shape {shape}, "
                                 f"got {tuple(t.shape)}")
        single = obs.dim() == 2
        if single:
            obs, act, rew, next_obs, term = (t.unsqueeze(0)
                                             for t in (obs, act, rew, next_obs, term))
        k, b = obs.shape[0], obs.shape[1]
        self._trainer.prepare()  # may raise (unsupported Adam settings): nothing drawn yet
        # The whole block's noise in one draw (both trainers consume the generator alike).
        eps = torch.randn((k, 2, b, self.act_dim), generator=self.generator, device=self.device)
        stats = self._trainer.update_block(obs, act, rew, next_obs, term, eps)
        self.num_updates += k
        if single:
            return {key: v[0] for key, v in stats.items()}
        return stats

    @property
    def alpha(self) -> float:
        """The current temperature exp(log_alpha) (synchronizes; for logging)."""
        return float(self.log_alpha.detach().exp())

    # ------------------------------------------------------------------ export
    def actor_weights(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The actor's layers as zero-copy numpy views: [(weight [1, in, out], bias [1, out])].

        float32, CPU only (raises ValueError for another device). The views alias the live
        parameters, which the optimizer updates in place, so a native engine holding them
        always sees the current policy. Layer i has ``in = obs_dim`` (i = 0) or
        ``hidden_size``, ``out = hidden_size`` or ``2 * act_dim`` (last: mean, then log_std).
        """
        if self.device.type != "cpu":
            raise ValueError(f"actor_weights: zero-copy views need a CPU agent, this one is on "
                             f"{self.device}")
        return [(layer.weight.detach().numpy(), layer.bias.detach().numpy())
                for layer in self.actor.layers]

    def export_actor(self, path: str | os.PathLike) -> None:
        """Writes the actor as safetensors (atomically), readable from C++ without Python.

        Tensors: ``layers.{i}.weight`` float32 [in_i, out_i] (y = x @ W + b),
        ``layers.{i}.bias`` float32 [out_i] for i = 0..num_layers (the last layer has
        2*act_dim outputs: mean, then raw log_std), ``action_scale`` and ``action_bias``
        float32 [act_dim], and the action box ``action_low``, ``action_high`` float32
        [act_dim] (the clamp ``act`` applies; loaders derive it from scale and bias when a
        file lacks it). Metadata: ``format`` ("mbpo_fast.actor/1"), ``obs_dim``,
        ``act_dim``, ``num_layers`` (hidden layers), ``hidden_size``, ``activation``
        ("relu"), ``log_std_min`` ("-20"), ``log_std_max`` ("2").
        Policy: ``log_std = clamp(raw, log_std_min, log_std_max)``,
        ``a = tanh(mean + exp(log_std) * eps) * action_scale + action_bias``.
        """
        tensors: dict[str, np.ndarray] = {}
        for i, layer in enumerate(self.actor.layers):
            tensors[f"layers.{i}.weight"] = layer.weight.detach()[0].float().cpu().numpy()
            tensors[f"layers.{i}.bias"] = layer.bias.detach()[0].float().cpu().numpy()
        tensors["action_scale"] = self.action_scale.cpu().numpy()
        tensors["action_bias"] = self.action_bias.cpu().numpy()
        tensors["action_low"] = self._low_np.copy()
        tensors["action_high"] = self._high_np.copy()
        metadata = {"format": "mbpo_fast.actor/1", "obs_dim": str(self.obs_dim),
                    "act_dim": str(self.act_dim), "num_layers": str(self.config["num_layers"]),
                    "hidden_size": str(self.config["hidden_size"]), "activation": "relu",
                    "log_std_min": f"{LOG_STD_MIN:g}", "log_std_max": f"{LOG_STD_MAX:g}"}
        save_safetensors(path, tensors, metadata)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training exactly: config, networks, target networks,
        optimizer states, log_alpha, the noise generator's state and the update counter."""
        return {
            "format": _FORMAT,
            "config": dict(self.config),
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "actor_optim": self.actor_optim.state_dict(),
            "critic_optim": self.critic_optim.state_dict(),
            "generator": self.generator.get_state(),
            "num_updates": self.num_updates,
        }

    _ARCH_KEYS = ("obs_dim", "act_dim", "hidden_size", "num_layers")
    _CONFIG_KEYS = frozenset({"obs_dim", "act_dim", "action_low", "action_high", "hidden_size",
                              "num_layers", "lr", "gamma", "tau", "target_entropy",
                              "init_alpha", "seed", "autocast_bf16", "compile", "trainer"})

    def load_state_dict(self, state: Mapping[str, Any], *, source: str = "load_state_dict"
                        ) -> None:
        """Restores :meth:`state_dict` output. The architecture (obs_dim, act_dim,
        hidden_size, num_layers) must match, and every tensor (networks, log_alpha, Adam
        moments, generator state) must have this agent's shape and dtype: all of it is checked
        before anything is copied, so a bad state raises ValueError (prefixed with `source`,
        naming the tensor, the expected and the actual shape) and changes nothing."""
        cfg = _check_config(state, source)
        diff = {k: (cfg.get(k), self.config[k]) for k in self._ARCH_KEYS
                if cfg.get(k) != self.config[k]}
        if diff:
            raise ValueError(f"{source}: architecture mismatch (saved, this agent): {diff}")
        self._check_state(state, source)
        self._load_unchecked(state)
        for key in ("action_low", "action_high", "lr", "gamma", "tau", "target_entropy",
                    "init_alpha", "seed", "autocast_bf16"):
            self.config[key] = cfg[key]
        self.gamma, self.tau = float(cfg["gamma"]), float(cfg["tau"])
        self.target_entropy = float(cfg["target_entropy"])
        self.autocast_bf16 = bool(cfg["autocast_bf16"])
        low, high = np.asarray(cfg["action_low"]), np.asarray(cfg["action_high"])
        self._low_np, self._high_np = low.astype(np.float32), high.astype(np.float32)
        with torch.no_grad():
            self.action_scale.copy_(torch.from_numpy((high - low) / 2.0))
            self.action_bias.copy_(torch.from_numpy((high + low) / 2.0))
            self._low.copy_(torch.from_numpy(self._low_np))
            self._high.copy_(torch.from_numpy(self._high_np))

    def _check_state(self, state: Mapping[str, Any], source: str) -> None:
        """Every tensor of `state` against this agent's (see :mod:`mbpo_fast.state_checks`)."""
        for name in ("actor", "critic", "critic_target"):
            check_module_state(source, name, state.get(name), getattr(self, name))
        check_tensor(source, "log_alpha", state.get("log_alpha"), self.log_alpha.shape,
                     self.log_alpha.dtype)
        check_adam_state(source, "actor_optim", state.get("actor_optim"), self.actor_optim)
        check_adam_state(source, "critic_optim", state.get("critic_optim"), self.critic_optim)
        check_generator_state(source, "generator", state.get("generator"), self.generator)
        n = state.get("num_updates")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{source}: num_updates = {n!r}, expected an int >= 0")

    def _load_unchecked(self, state: Mapping[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        # Optimizer.load_state_dict keeps the given tensors when dtype and device already
        # match: copy them, or this agent would share Adam moments with the state's owner.
        self.actor_optim.load_state_dict(copy_adam_state(state["actor_optim"]))
        self.critic_optim.load_state_dict(copy_adam_state(state["critic_optim"]))
        self.generator.set_state(state["generator"])
        self.num_updates = int(state["num_updates"])

    def save(self, path: str | os.PathLike) -> None:
        """Writes :meth:`state_dict` to `path` atomically (torch serialization)."""
        buf = io.BytesIO()
        torch.save(self.state_dict(), buf)
        atomic_write(path, lambda f: f.write(buf.getbuffer()))

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
             trainer: str | None = None) -> SAC:
        """Rebuilds an agent saved with :meth:`save`; training continues exactly as if the
        original had never stopped. ``trainer`` overrides the saved choice (None: keep it;
        checkpoints without one: "auto"). Raises ValueError naming the file for a truncated,
        corrupt or unsafe one (the file is read weights-only: it runs no code), for a config
        whose networks the file cannot hold (checked before they are built: memory stays
        bounded by the file's size), and for any tensor of another shape than the agent's."""
        source = os.fspath(path)
        state = load_torch_file(path, map_location=device)
        config = _check_config(state, source)
        need = 4 * _num_network_floats(config["obs_dim"], config["act_dim"],
                                       config["hidden_size"], config["num_layers"])
        size = os.path.getsize(path)
        if need > size:
            raise ValueError(f"{source}: config describes networks of {need} bytes "
                             f"(obs_dim, act_dim, hidden_size, num_layers = "
                             f"{[config[k] for k in cls._ARCH_KEYS]}), the file has {size}")
        config["trainer"] = trainer if trainer is not None else config.get("trainer", "auto")
        try:
            agent = cls(**config, device=device)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
        try:
            agent.load_state_dict(state, source=source)
        except (KeyError, TypeError, IndexError, RuntimeError) as exc:  # past every check: a
            raise ValueError(f"{source}: invalid SAC state ({type(exc).__name__}: {exc})") \
                from None  # gap in them, still a file this agent cannot hold
        return agent


def _check_config(state: Any, source: str) -> dict[str, Any]:
    """The ``config`` of a :meth:`SAC.state_dict`, checked as the constructor checks its
    arguments (ValueError prefixed with `source`)."""
    if not isinstance(state, Mapping) or state.get("format") != _FORMAT:
        raise ValueError(f"{source}: not a {_FORMAT} checkpoint")
    cfg = state.get("config")
    if not isinstance(cfg, Mapping) or not (set(SAC._CONFIG_KEYS) - {"compile", "trainer"}
                                            <= set(cfg) <= SAC._CONFIG_KEYS):
        keys = sorted(map(str, cfg)) if isinstance(cfg, Mapping) else type(cfg).__name__
        raise ValueError(f"{source}: config: expected the keys {sorted(SAC._CONFIG_KEYS)}, "
                         f"got {keys}")
    cfg = dict(cfg)
    try:
        _check_arguments(cfg["obs_dim"], cfg["act_dim"], cfg["action_low"], cfg["action_high"],
                         cfg["hidden_size"], cfg["num_layers"], cfg["lr"], cfg["gamma"],
                         cfg["tau"], cfg["target_entropy"], cfg["init_alpha"],
                         cfg.get("trainer", "auto"))
        for key in ("seed",):
            if isinstance(cfg[key], bool) or not isinstance(cfg[key], int):
                raise ValueError(f"SAC: {key} must be an int, got {cfg[key]!r}")
        for key in ("autocast_bf16", "compile"):
            if not isinstance(cfg.get(key, False), bool):
                raise ValueError(f"SAC: {key} must be a bool, got {cfg[key]!r}")
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{source}: config: {exc}") from None
    return cfg


def _num_network_floats(obs_dim: int, act_dim: int, hidden_size: int, num_layers: int) -> int:
    """Parameters of the actor, the critic and its target (exact Python ints)."""
    def mlp(members: int, sizes: list[int]) -> int:
        return members * sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))

    if num_layers > 1 << 16:  # no such file exists; keeps the sum below cheap
        return 1 << 62
    hidden = [hidden_size] * num_layers
    return (mlp(1, [obs_dim, *hidden, 2 * act_dim])
            + 2 * mlp(2, [obs_dim + act_dim, *hidden, 1]))


def _check_arguments(obs_dim, act_dim, action_low, action_high, hidden_size, num_layers, lr,
                     gamma, tau, target_entropy, init_alpha, trainer):
    """The constructor's argument checks (ValueError naming the argument); returns the
    float64 action bounds and the target entropy (default ``-act_dim``)."""
    for arg, value in (("obs_dim", obs_dim), ("act_dim", act_dim),
                       ("hidden_size", hidden_size), ("num_layers", num_layers)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"SAC: {arg} must be a positive int, got {value!r}")
    obs_dim, act_dim = int(obs_dim), int(act_dim)
    low = np.asarray(action_low, dtype=np.float64)
    high = np.asarray(action_high, dtype=np.float64)
    for name, b in (("action_low", low), ("action_high", high)):
        if b.shape != (act_dim,):
            raise ValueError(f"SAC: {name} must have shape ({act_dim},) (act_dim), "
                             f"got {b.shape}")
        if not np.all(np.isfinite(b)):
            raise ValueError(f"SAC: {name} must be finite, got {b}")
    if not np.all(low < high):
        raise ValueError(f"SAC: action_low must be < action_high elementwise, got "
                         f"low={low}, high={high}")
    for arg, value, lo, hi in (("lr", lr, 0.0, math.inf), ("gamma", gamma, 0.0, 1.0),
                               ("tau", tau, 0.0, 1.0),
                               ("init_alpha", init_alpha, 0.0, math.inf)):
        if not (lo < float(value) <= hi) or not math.isfinite(float(value)):
            raise ValueError(f"SAC: {arg} must be in ({lo}, {hi}], got {value!r}")
    if trainer not in TRAINERS:
        raise ValueError(f"SAC: trainer must be one of {TRAINERS}, got {trainer!r}")
    if target_entropy is None:
        target_entropy = -float(act_dim)
    if not math.isfinite(float(target_entropy)):
        raise ValueError(f"SAC: target_entropy must be finite, got {target_entropy!r}")
    return low, high, float(target_entropy)


def _fast_adam_kwargs(device: torch.device) -> dict[str, bool]:
    """``fused=True`` where this torch has a fused Adam for the device, else ``foreach``."""
    probe = torch.zeros(1, device=device, requires_grad=True)
    try:
        opt = torch.optim.Adam([probe], fused=True)
        probe.grad = torch.zeros_like(probe)
        opt.step()
        return {"fused": True}
    except (RuntimeError, ValueError):
        return {"foreach": True}
