"""A straightforward CleanRL-style SAC update: the reference that mbpo_fast.SAC is measured against.

Written the way CleanRL's ``sac_continuous_action.py`` is: two separate ``nn.Sequential``
critics and their targets, an actor of ``nn.Linear`` layers, plain ``torch.optim.Adam``
(default settings), Polyak averaging by a Python loop over parameters, gradients of every
network computed on every backward pass (the critic weights' gradients from the actor
loss are computed and thrown away), and ``.item()`` on the losses every update for logging.

It implements exactly the same math as :class:`mbpo_fast.SAC` (same losses, same update
order, same noise draws from the same ``torch.Generator``), so ``from_agent`` gives a copy
whose parameters track the agent's to float rounding; tests/test_sac.py checks that.
"""

from __future__ import annotations

# First, as in a user's program: importing mbpo_fast sets how long torch's idle OpenMP
# workers spin before torch starts (mbpo_fast/_openmp.py). No tuning variable is set here.
import mbpo_fast  # noqa: F401

# isort: split

import math

import torch
from torch import nn
from torch.nn import functional as F

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i != len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Actor(nn.Module):
    def __init__(self, obs_dim, act_dim, hidden, low, high):
        super().__init__()
        self.net = _mlp([obs_dim, *hidden, 2 * act_dim])
        self.act_dim = act_dim
        f32 = torch.float32
        self.register_buffer("action_scale", torch.as_tensor((high - low) / 2.0, dtype=f32))
        self.register_buffer("action_bias", torch.as_tensor((high + low) / 2.0, dtype=f32))

    def get_action(self, obs, eps):
        out = self.net(obs)
        mean, log_std = out[:, :self.act_dim], out[:, self.act_dim:]
        log_std = torch.clamp(log_std, LOG_STD_MIN, LOG_STD_MAX)
        std = log_std.exp()
        x_t = mean + std * eps  # rsample with externally drawn noise
        y_t = torch.tanh(x_t)
        action = y_t * self.action_scale + self.action_bias
        log_prob = torch.distributions.Normal(mean, std).log_prob(x_t)
        log_prob = log_prob - (torch.log(self.action_scale)
                               + 2.0 * (math.log(2.0) - x_t - F.softplus(-2.0 * x_t)))
        return action, log_prob.sum(1)


class ReferenceSAC:
    """CleanRL-style SAC with the same hyperparameters and update math as mbpo_fast.SAC."""

    def __init__(self, obs_dim, act_dim, low, high, hidden_size=256, num_layers=2, lr=3e-4,
                 gamma=0.99, tau=5e-3, target_entropy=None, init_alpha=1.0, seed=0):
        torch.manual_seed(seed)
        hidden = [hidden_size] * num_layers
        low = torch.as_tensor(low, dtype=torch.float64)
        high = torch.as_tensor(high, dtype=torch.float64)
        self.actor = Actor(obs_dim, act_dim, hidden, low, high)
        self.qf1 = _mlp([obs_dim + act_dim, *hidden, 1])
        self.qf2 = _mlp([obs_dim + act_dim, *hidden, 1])
        self.qf1_target = _mlp([obs_dim + act_dim, *hidden, 1])
        self.qf2_target = _mlp([obs_dim + act_dim, *hidden, 1])
        self.qf1_target.load_state_dict(self.qf1.state_dict())
        self.qf2_target.load_state_dict(self.qf2.state_dict())
        self.q_optimizer = torch.optim.Adam(
            list(self.qf1.parameters()) + list(self.qf2.parameters()), lr=lr)
        self.actor_optimizer = torch.optim.Adam(list(self.actor.parameters()), lr=lr)
        self.log_alpha = torch.tensor(math.log(init_alpha), requires_grad=True)
        self.a_optimizer = torch.optim.Adam([self.log_alpha], lr=lr)
        self.target_entropy = -float(act_dim) if target_entropy is None else float(target_entropy)
        self.gamma, self.tau, self.act_dim = gamma, tau, act_dim
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def from_agent(cls, agent) -> ReferenceSAC:
        """A reference holding a copy of `agent`'s current weights, alpha and generator state."""
        c = agent.config
        ref = cls(c["obs_dim"], c["act_dim"], torch.tensor(c["action_low"]),
                  torch.tensor(c["action_high"]), c["hidden_size"], c["num_layers"], c["lr"],
                  c["gamma"], c["tau"], c["target_entropy"], c["init_alpha"], c["seed"])
        with torch.no_grad():
            for lin, bl in zip(ref.actor.net[::2], agent.actor.layers, strict=True):
                lin.weight.copy_(bl.weight[0].T)
                lin.bias.copy_(bl.bias[0])
            for j, (net, tgt) in enumerate(((ref.qf1, ref.qf1_target), (ref.qf2, ref.qf2_target))):
                for lin, tlin, bl, tbl in zip(net[::2], tgt[::2], agent.critic.layers,
                                              agent.critic_target.layers, strict=True):
                    lin.weight.copy_(bl.weight[j].T)
                    lin.bias.copy_(bl.bias[j])
                    tlin.weight.copy_(tbl.weight[j].T)
                    tlin.bias.copy_(tbl.bias[j])
            ref.log_alpha.copy_(agent.log_alpha)
        ref.generator.set_state(agent.generator.get_state())
        return ref

    def update(self, obs, actions, rewards, next_obs, dones) -> dict[str, float]:
        """One update on torch tensors [B, ...] (dones: float 1.0 where terminated)."""
        alpha = self.log_alpha.detach().exp().item()
        eps = torch.randn((2, obs.shape[0], self.act_dim), generator=self.generator)
        with torch.no_grad():
            next_actions, next_log_pi = self.actor.get_action(next_obs, eps[0])
            qf1_next = self.qf1_target(torch.cat([next_obs, next_actions], 1)).view(-1)
            qf2_next = self.qf2_target(torch.cat([next_obs, next_actions], 1)).view(-1)
            min_qf_next = torch.min(qf1_next, qf2_next) - alpha * next_log_pi
            next_q_value = rewards + (1 - dones) * self.gamma * min_qf_next
        qf1_a_values = self.qf1(torch.cat([obs, actions], 1)).view(-1)
        qf2_a_values = self.qf2(torch.cat([obs, actions], 1)).view(-1)
        qf1_loss = F.mse_loss(qf1_a_values, next_q_value)
        qf2_loss = F.mse_loss(qf2_a_values, next_q_value)
        qf_loss = qf1_loss + qf2_loss
        self.q_optimizer.zero_grad()
        qf_loss.backward()
        self.q_optimizer.step()

        pi, log_pi = self.actor.get_action(obs, eps[1])
        qf1_pi = self.qf1(torch.cat([obs, pi], 1)).view(-1)
        qf2_pi = self.qf2(torch.cat([obs, pi], 1)).view(-1)
        min_qf_pi = torch.min(qf1_pi, qf2_pi)
        actor_loss = ((alpha * log_pi) - min_qf_pi).mean()
        self.actor_optimizer.zero_grad()
        actor_loss.backward()
        self.actor_optimizer.step()

        alpha_loss = (-self.log_alpha * (log_pi.detach() + self.target_entropy)).mean()
        self.a_optimizer.zero_grad()
        alpha_loss.backward()
        self.a_optimizer.step()

        with torch.no_grad():
            for net, tgt in ((self.qf1, self.qf1_target), (self.qf2, self.qf2_target)):
                for param, target_param in zip(net.parameters(), tgt.parameters(), strict=True):
                    target_param.data.copy_(
                        self.tau * param.data + (1 - self.tau) * target_param.data)
        return {"critic_loss": qf_loss.item(), "actor_loss": actor_loss.item(), "alpha": alpha,
                "entropy": -log_pi.mean().item(),
                "mean_q": 0.5 * (qf1_a_values.mean().item() + qf2_a_values.mean().item())}
