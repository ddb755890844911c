"""The SAC agent alone (no model) learning Pendulum-v1: prints the evaluation curve.

    PYTHONPATH=. python benchmarks/sac_pendulum.py --steps 10000 --seed 0 [--bf16]

1,000 uniformly random steps, then one SAC update (batch 256) per environment step.
Pendulum episodes end only by the 200-step time limit, which is a truncation: the agent
keeps bootstrapping (terminated is always False). Evaluation: the deterministic policy
(tanh of the mean) over `eval_episodes` fresh episodes. A return above about -200 is
solved; -400 is the acceptance bar of tests/test_sac.py.

The replay buffer here is a deliberately minimal numpy ring buffer local to this script,
so the test depends on nothing but the agent.
"""

from __future__ import annotations

# First, as in a user's program: importing mbpo_fast sets how long torch's idle OpenMP
# workers spin before torch starts (mbpo_fast/_openmp.py). No tuning variable is set here.
import mbpo_fast  # noqa: F401

# isort: split

import argparse
import time

import gymnasium as gym
import numpy as np
import torch

from mbpo_fast.sac import SAC
from mbpo_fast.types import Transition


class _Buffer:
    def __init__(self, capacity: int, obs_dim: int, act_dim: int, seed: int) -> None:
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.act = np.zeros((capacity, act_dim), np.float32)
        self.rew = np.zeros(capacity, np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.term = np.zeros(capacity, bool)
        self.capacity, self.size, self.pos = capacity, 0, 0
        self.rng = np.random.default_rng(seed)

    def add(self, obs, act, rew, next_obs, term) -> None:
        i = self.pos
        self.obs[i], self.act[i], self.rew[i] = obs, act, rew
        self.next_obs[i], self.term[i] = next_obs, term
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, k: int, batch_size: int) -> Transition:
        """k batches of batch_size rows at once: [k, batch_size, ...]."""
        idx = self.rng.integers(0, self.size, (k, batch_size))
        return Transition(self.obs[idx], self.act[idx], self.rew[idx], self.next_obs[idx],
                          self.term[idx])


def evaluate(agent: SAC, episodes: int, seed: int) -> float:
    env = gym.make("Pendulum-v1")
    total = 0.0
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        done = False
        while not done:
            obs, rew, terminated, truncated, _ = env.step(agent.act(obs, deterministic=True))
            total += float(rew)
            done = terminated or truncated
    env.close()
    return total / episodes


def train(total_steps: int = 10_000, seed: int = 0, eval_every: int = 1_000,
          eval_episodes: int = 5, random_steps: int = 1_000, batch_size: int = 256,
          autocast_bf16: bool = False, verbose: bool = True,
          threads: int | None = None) -> list[tuple[int, float]]:
    """Returns the evaluation curve [(env steps, mean eval return)].

    threads: torch intra-op threads during the run (restored afterwards); 1 is the robust
    choice on a shared machine, where a descheduled OpenMP worker stalls every small op.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train(total_steps, seed, eval_every, eval_episodes, random_steps, batch_size,
                      autocast_bf16, verbose)
    finally:
        torch.set_num_threads(previous)


def _train(total_steps, seed, eval_every, eval_episodes, random_steps, batch_size,
           autocast_bf16, verbose) -> list[tuple[int, float]]:
    torch.manual_seed(seed)
    env = gym.make("Pendulum-v1")
    obs_dim = env.observation_space.shape[0]
    act_dim = env.action_space.shape[0]
    agent = SAC(obs_dim, act_dim, env.action_space.low, env.action_space.high, seed=seed,
                autocast_bf16=autocast_bf16)
    buf = _Buffer(total_steps, obs_dim, act_dim, seed)
    rng = np.random.default_rng(seed + 1)
    obs, _ = env.reset(seed=seed)
    curve: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    for step in range(1, total_steps + 1):
        if step <= random_steps:
            act = rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32)
        else:
            act = agent.act(obs)
        next_obs, rew, terminated, truncated, _ = env.step(act)
        buf.add(obs, act, rew, next_obs, terminated)
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
        if step > random_steps:
            stats = agent.update(buf.sample(1, batch_size))
        if step % eval_every == 0:
            ret = evaluate(agent, eval_episodes, seed=10_000 + step)
            curve.append((step, ret))
            if verbose:
                extra = ""
                if step > random_steps:
                    extra = (f"  alpha {float(stats['alpha'][0]):.3f}"
                             f"  entropy {float(stats['entropy'][0]):+.2f}"
                             f"  Q {float(stats['mean_q'][0]):+.1f}")
                print(f"step {step:6d}  eval return {ret:8.1f}{extra}  "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    env.close()
    return curve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=1_000)
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast in the SAC update")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = p.parse_args()
    curve = train(a.steps, a.seed, a.eval_every, a.eval_episodes, autocast_bf16=a.bf16,
                  threads=a.threads)
    print("final eval return", curve[-1][1], "best", max(r for _, r in curve))


if __name__ == "__main__":
    main()
