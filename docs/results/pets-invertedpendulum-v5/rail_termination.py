"""Plan with the PETS InvertedPendulum run's final model against the real env, ending planned
trajectories at the pole angle (the env's termination) and, optionally, at the rail end.

    PYTHONPATH=. python docs/results/pets-invertedpendulum-v5/rail_termination.py 0.9 0,1,2
    PYTHONPATH=. python docs/results/pets-invertedpendulum-v5/rail_termination.py none 0,1,2

LIMIT: end a planned trajectory where |x| > LIMIT (``none``: the built-in termination only);
SEEDS: planner seeds s, each one episode from env reset seed 1000 + s; MODEL defaults to the
checkpoint of ``runs/pets-ip-c`` (the run in this folder). Prints one line per episode.
"""

from __future__ import annotations

import sys
import time

import gymnasium as gym
import numpy as np
import torch

import mbpo_fast as mf

ENV = "InvertedPendulum-v5"
DEFAULT_MODEL = "runs/pets-ip-c/checkpoints/ckpt-35/model.safetensors"


def main() -> None:
    limit = None if sys.argv[1] == "none" else float(sys.argv[1])
    seeds = [int(s) for s in sys.argv[2].split(",")]
    path = sys.argv[3] if len(sys.argv) > 3 else DEFAULT_MODEL
    mf.set_num_threads(1)
    torch.set_num_threads(1)
    model = mf.EnsembleDynamics.load(path)

    def rail_termination(obs, act, next_obs):
        # the env's rule (|angle| > 0.2 or a non-finite state), plus the rail end
        return ((np.abs(next_obs[:, 1]) > 0.2) | (np.abs(next_obs[:, 0]) > limit)
                | ~np.isfinite(next_obs).all(axis=1))

    env = gym.make(ENV)
    for seed in seeds:
        mpc = mf.MPC(model, env.action_space.low, env.action_space.high, reward_fn=ENV,
                     termination=ENV if limit is None else rail_termination, population=350,
                     elites=35, iterations=5, horizon=30, particles=20, seed=seed)
        obs, _ = env.reset(seed=1000 + seed)
        total, xs, t0 = 0.0, [], time.time()
        for _ in range(1000):
            obs, rew, terminated, truncated, _ = env.step(mpc.plan(obs))
            total += rew
            xs.append(obs[0])
            if terminated or truncated:
                break
        print(f"limit {limit} seed {seed}: return {total:.0f}, max |x| {np.abs(xs).max():.2f}, "
              f"final x {obs[0]:.2f}, {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
