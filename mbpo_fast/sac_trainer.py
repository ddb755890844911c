"""SAC training backends: the update step of :class:`mbpo_fast.sac.SAC`, in torch or native.

Both trainers run the same math (the module docstring of :mod:`mbpo_fast.sac`) on the
same state: the agent's modules, ``log_alpha`` and the two ``torch.optim.Adam`` optimizers,
whose tensors stay the single source of truth. The native trainer works IN PLACE on that
memory (zero-copy numpy views of the torch tensors), so checkpoints, ``export_actor``,
``act`` and the torch trainer see every native update, and a run may switch trainers at
any block.

Interface (what :meth:`SAC.update` calls)::

    trainer.prepare()   # validates / binds; raises before anything changes
    trainer.update_block(obs, act, rew, next_obs, terminated, eps) -> dict[str, Tensor [K]]

with float32 tensors obs, next_obs [K, B, obs_dim], act [K, B, act_dim], rew [K, B], bool
terminated [K, B] and the block's noise eps [K, 2, B, act_dim] (eps[k, 0]: next-state
actions, eps[k, 1]: policy actions), drawn by the agent from its generator in one call, so
both trainers consume the generator identically.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import torch

from . import _backend

if TYPE_CHECKING:  # pragma: no cover
    from .sac import SAC

logger = logging.getLogger("mbpo_fast.sac")

TRAINERS = ("auto", "native", "torch")
_STAT_KEYS = ("critic_loss", "actor_loss", "alpha", "entropy", "mean_q")


class TorchSacTrainer:
    """The update in torch autograd (any device; optional bf16 autocast and torch.compile).

    Where its speed comes from: both critics run as one batched matmul per layer; the
    critic weights are frozen while the actor loss is back-propagated (no wasted weight
    gradients); Adam is the fused kernel; Polyak is one ``torch._foreach_lerp_``; nothing
    synchronizes with the host (stats stay tensors).
    """

    name = "torch"

    def __init__(self, agent: SAC, compile: bool = False) -> None:
        self.agent = agent
        self._critic_params = list(agent.critic.parameters())
        self._target_params = list(agent.critic_target.parameters())
        self._critic_loss_fn = self._critic_loss
        self._actor_loss_fn = self._actor_loss
        if compile:
            self._critic_loss_fn = torch.compile(self._critic_loss, dynamic=False)
            self._actor_loss_fn = torch.compile(self._actor_loss, dynamic=False)

    @torch.no_grad()
    def _td_target(self, rew, next_obs, not_done, alpha, eps_next) -> torch.Tensor:
        """y = r + gamma * (1 - terminated) * (min_j Qtarg_j(s', a') - alpha * log pi(a'|s')),
        a' = the squashed sample of the current actor at s' with noise eps_next [B, act_dim]."""
        from .sac import squashed_gaussian

        ag = self.agent
        mean, log_std = ag._policy(next_obs)
        next_act, next_logp = squashed_gaussian(mean, log_std, eps_next,
                                                ag.action_scale, ag.action_bias)
        q_next = ag.critic_target(torch.cat([next_obs, next_act], -1)).squeeze(-1)  # [2, B]
        v_next = torch.min(q_next[0], q_next[1]) - alpha * next_logp
        return torch.addcmul(rew, not_done, v_next, value=ag.gamma)

    def _critic_loss(self, obs, act, rew, next_obs, not_done, alpha, eps_next):
        target = self._td_target(rew, next_obs, not_done, alpha, eps_next)
        q = self.agent.critic(torch.cat([obs, act], -1)).squeeze(-1)  # [2, B]
        loss = (q - target).square().mean(-1).sum()
        return loss, q.detach().mean()

    def _actor_loss(self, obs, alpha, eps):
        from .sac import squashed_gaussian

        ag = self.agent
        mean, log_std = ag._policy(obs)
        action, logp = squashed_gaussian(mean, log_std, eps, ag.action_scale, ag.action_bias)
        q = ag.critic(torch.cat([obs, action], -1)).squeeze(-1)
        loss = (alpha * logp - torch.min(q[0], q[1])).mean()
        return loss, logp.detach()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.agent.autocast_bf16:
            return torch.autocast(self.agent.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare(self) -> None:
        """Nothing to check: autograd runs any configuration."""

    def _update_one(self, obs, act, rew, next_obs, not_done, eps) -> dict[str, torch.Tensor]:
        """One update; eps [2, B, act_dim] (next-state actions, then policy actions)."""
        ag = self.agent
        alpha = ag.log_alpha.detach().exp()
        with self._autocast():
            critic_loss, mean_q = self._critic_loss_fn(obs, act, rew, next_obs, not_done,
                                                       alpha, eps[0])
        ag.critic_optim.zero_grad(set_to_none=True)
        critic_loss.backward()
        ag.critic_optim.step()

        # Freeze the critic weights: back-propagating the actor loss then computes only the
        # input gradients through the critics, not their (discarded) weight gradients.
        for p in self._critic_params:
            p.requires_grad_(False)
        try:
            with self._autocast():
                actor_loss, logp = self._actor_loss_fn(obs, alpha, eps[1])
            mean_logp = logp.float().mean()
            alpha_loss = -ag.log_alpha * (mean_logp + ag.target_entropy)
            ag.actor_optim.zero_grad(set_to_none=True)
            # the two losses share no parameters: one backward gives both gradients
            (actor_loss + alpha_loss).backward()
        finally:
            for p in self._critic_params:
                p.requires_grad_(True)
        ag.actor_optim.step()

        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._critic_params, ag.tau)
        return {"critic_loss": critic_loss.detach().float(),
                "actor_loss": actor_loss.detach().float(),
                "alpha": alpha,
                "entropy": -mean_logp,
                "mean_q": mean_q.float()}

    def update_block(self, obs, act, rew, next_obs, terminated, eps) -> dict[str, torch.Tensor]:
        not_done = (~terminated).to(torch.float32)
        stats = [self._update_one(obs[k], act[k], rew[k], next_obs[k], not_done[k], eps[k])
                 for k in range(obs.shape[0])]
        return {key: torch.stack([s[key] for s in stats]) for key in _STAT_KEYS}


def native_unsupported_reason(agent: SAC) -> str | None:
    """Why the native trainer cannot run this agent, or None when it can."""
    from . import _backend

    if _backend.name != "native":
        return (f"the native extension is not loaded (backend {_backend.name!r}; build it, or "
                f"unset MBPO_FAST_BACKEND=numba)")
    if not hasattr(_backend.ops, "SacLearner"):
        return "the loaded native extension predates the native SAC trainer (rebuild it)"
    if agent.device.type != "cpu":
        return f"it runs on the CPU, this agent is on {agent.device}"
    if agent.config.get("compile"):
        return "compile=True is a torch-trainer option"
    if agent.config["num_layers"] > 15:
        return f"at most 15 hidden layers, got {agent.config['num_layers']}"
    return None


class NativeSacTrainer:
    """The update as one native call per block (mbpo_fast._C.SacLearner, GIL released).

    The learner borrows the agent's tensors: actor / critic / target parameters, log_alpha
    and every Adam state tensor (created here as ``torch.optim.Adam(fused=True)`` would on its
    first step when missing). It is rebuilt when any of those tensors is replaced (e.g. by
    ``Optimizer.load_state_dict``) or an optimizer hyperparameter changes.
    """

    name = "native"

    def __init__(self, agent: SAC) -> None:
        reason = native_unsupported_reason(agent)
        if reason is not None:
            raise ValueError(f"SAC(trainer='native'): cannot run: {reason}")
        self.agent = agent
        self._learner: Any = None
        self._key: tuple | None = None

    # -------------------------------------------------------------- binding
    def _adam_settings(self) -> tuple[float, float, float, float]:
        """(lr, beta1, beta2, eps) shared by every param group; ValueError for options the
        native Adam does not implement."""
        settings = set()
        for optim in (self.agent.critic_optim, self.agent.actor_optim):
            for group in optim.param_groups:
                for opt, off in (("weight_decay", 0), ("amsgrad", False), ("maximize", False),
                                 ("differentiable", False)):
                    if group.get(opt, off) != off:
                        raise ValueError(f"SAC(trainer='native'): Adam option {opt}="
                                         f"{group[opt]!r} is not supported (torch trainer only)")
                lr = group["lr"]
                if isinstance(lr, torch.Tensor):
                    lr = float(lr)
                settings.add((float(lr), float(group["betas"][0]), float(group["betas"][1]),
                              float(group["eps"])))
        if len(settings) != 1:
            raise ValueError(f"SAC(trainer='native'): every Adam param group must share lr, "
                             f"betas and eps; got {sorted(settings)}")
        return settings.pop()

    @staticmethod
    def _adam_state(optim: torch.optim.Optimizer, p: torch.Tensor) -> dict:
        state = optim.state[p]
        if len(state) == 0:  # what torch.optim.Adam(fused=True) creates on its first step
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _tensors(self) -> tuple[list, list, list, tuple]:
        ag = self.agent
        actor = [(p, self._adam_state(ag.actor_optim, p)) for p in ag.actor.parameters()]
        critic = [(p, self._adam_state(ag.critic_optim, p)) for p in ag.critic.parameters()]
        target = list(ag.critic_target.parameters())
        log_alpha = (ag.log_alpha, self._adam_state(ag.actor_optim, ag.log_alpha))
        return actor, critic, target, log_alpha

    def prepare(self) -> None:
        """Binds (or re-binds) the learner to the agent's current tensors; raises ValueError
        for settings the native trainer does not implement. Called before the block's noise
        is drawn, so a raising call changes nothing."""
        self._learner_for_block()

    def _learner_for_block(self):
        ag = self.agent
        adam = self._adam_settings()
        actor, critic, target, log_alpha = self._tensors()
        tensors = [t for p, s in (*actor, *critic, log_alpha)
                   for t in (p, s["exp_avg"], s["exp_avg_sq"], s["step"])] + target
        key = (adam, ag.gamma, ag.tau, ag.target_entropy, ag.autocast_bf16,
               tuple(ag.action_scale.tolist()), tuple(ag.action_bias.tolist()),
               tuple((t.data_ptr(), t.dtype, tuple(t.shape), t.is_contiguous()) for t in tensors))
        if key == self._key:
            return self._learner

        def view(t: torch.Tensor, name: str):
            if t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu":
                raise ValueError(f"SAC(trainer='native'): {name} must be a contiguous float32 "
                                 f"CPU tensor, got {t.dtype} on {t.device} "
                                 f"(contiguous={t.is_contiguous()})")
            return t.detach().numpy()

        def slot(p, s, name):
            return (view(p, name), view(s["exp_avg"], f"{name} exp_avg"),
                    view(s["exp_avg_sq"], f"{name} exp_avg_sq"), view(s["step"], f"{name} step"))

        from . import _backend

        cfg = ag.config
        self._learner = _backend.ops.SacLearner(
            obs_dim=ag.obs_dim, act_dim=ag.act_dim, hidden_size=cfg["hidden_size"],
            num_layers=cfg["num_layers"], gamma=ag.gamma, tau=ag.tau,
            target_entropy=ag.target_entropy, lr=adam[0], beta1=adam[1], beta2=adam[2],
            adam_eps=adam[3], action_scale=ag.action_scale.tolist(),
            action_bias=ag.action_bias.tolist(), bf16=ag.autocast_bf16,
            actor=[slot(p, s, f"actor parameter {i}") for i, (p, s) in enumerate(actor)],
            critic=[slot(p, s, f"critic parameter {i}") for i, (p, s) in enumerate(critic)],
            critic_target=[view(t, f"critic_target parameter {i}")
                           for i, t in enumerate(target)],
            log_alpha=slot(*log_alpha, "log_alpha"))
        self._key = key
        return self._learner

    def update_block(self, obs, act, rew, next_obs, terminated, eps) -> dict[str, torch.Tensor]:
        learner = self._learner_for_block()

        def arr(t: torch.Tensor):
            return t.detach().contiguous().numpy()

        out = learner.update_block(arr(obs), arr(act), arr(rew), arr(next_obs), arr(terminated),
                                   arr(eps))
        return {key: torch.from_numpy(out[key]) for key in _STAT_KEYS}


def make_trainer(agent: SAC, trainer: str, compile: bool) -> TorchSacTrainer | NativeSacTrainer:
    """Resolves ``trainer`` ("auto" | "native" | "torch") for `agent` and builds it."""
    if trainer not in TRAINERS:
        raise ValueError(f"SAC: trainer must be one of {TRAINERS}, got {trainer!r}")
    if trainer == "torch":
        return TorchSacTrainer(agent, compile=compile)
    if trainer == "native":
        return NativeSacTrainer(agent)
    reason = native_unsupported_reason(agent)
    if reason is None and not _backend.native_training_accelerated():
        reason = "this CPU has no AVX-512: the portable GEMM is slower than torch's BLAS"
    if reason is None:
        return NativeSacTrainer(agent)
    logger.debug("SAC trainer 'auto' -> torch: native cannot run (%s)", reason)
    return TorchSacTrainer(agent, compile=compile)
