"""Why a run is where it is: model error along rollouts, Q bias against Monte-Carlo returns,
policy entropy (the analysis issue 13 asks for when a run falls short of the published curve).

Usage::

    PYTHONPATH=. python benchmarks/learning_diagnostics.py RUN_DIR [RUN_DIR ...] \\
        [--horizon 15] [--starts 2000] [--recent 10000] [--episodes 5] [--out FILE.md]

For each run directory written by ``mbpo-fast train`` the latest checkpoint is copied to a
temporary directory and resumed there (the run itself is only read, so it may still be
training). Printed as markdown:

1. **Model error along rollouts.** From `--starts` random real states among the last
   `--recent` real transitions whose next `--horizon` transitions lie in one episode, the
   ensemble is rolled with the REAL actions (each row through one random elite, its mean
   prediction: ``step(..., deterministic=True)``), and the predicted state after k steps is
   compared with the real one: RMSE over the observation dims, each dim scaled by the real
   states' std, and the reward's absolute error; beside it the same for the "nothing moves"
   predictor (state after k steps = start state), as a scale. This is the error MBPO's
   k-step branched rollouts carry (they use policy actions, not the real ones; the real
   actions are what makes a ground truth exist).
2. **Q bias.** `--episodes` episodes of the stochastic policy in the evaluation env (native
   actor samples with their log-probabilities): at every visited (s, a), the smaller of the
   two critics against the discounted Monte-Carlo soft return that SAC's critic estimates,
   ``r_t + sum_{j>t} gamma^(j-t) (r_j - alpha * log pi(a_j|s_j))`` (alpha at the checkpoint),
   and the plain return. States within 300 steps of a time-limit truncation are left out
   (their Monte-Carlo tail is cut); terminal episodes count in full.
3. **Policy entropy and alpha** at the checkpoint: alpha, the target entropy, and the
   entropy estimate of the last progress.csv row.
"""

from __future__ import annotations

# First, as in a user's program (mbpo_fast/_openmp.py).
import mbpo_fast  # noqa: F401

# isort: split

import argparse
import csv
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from mbpo_fast.mbpo import MBPO
from mbpo_fast.rollout_native import actor_act

TRUNCATION_MARGIN = 300  # gamma^300 = 0.049 at gamma = 0.99


def _resume_copy(run: Path, tmp: Path) -> MBPO:
    dst = tmp / run.name
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("tb", "*.png"))
    return MBPO.resume(dst, quiet=True)


def model_error(algo: MBPO, horizon: int, starts: int, recent: int,
                rng: np.random.Generator) -> list[dict[str, float]]:
    """Per horizon k = 1..horizon: scaled state RMSE and reward error of the model rolled with
    the real actions, and the state RMSE of the constant predictor."""
    t = algo.real_pool.transitions()
    obs, act, rew, nxt, term = (np.asarray(x) for x in t)
    n = obs.shape[0]
    # transition i continues into i + 1 when the env state carried over (same episode)
    cont = np.zeros(n, bool)
    cont[:-1] = (~term[:-1]) & np.all(nxt[:-1] == obs[1:], axis=1)
    # valid start i: transitions i .. i + horizon - 1 in one episode
    run = np.zeros(n + 1, np.int64)
    for i in range(n - 1, -1, -1):
        run[i] = run[i + 1] + 1 if cont[i] else 1
    lo = max(0, n - recent)
    cand = np.nonzero(run[lo:n] >= horizon)[0] + lo
    if cand.size == 0:
        raise SystemExit(f"no {horizon}-step stretch within one episode among the last {recent} "
                         "real transitions")
    idx = rng.choice(cand, size=min(starts, cand.size), replace=False)
    scale = obs[lo:].std(axis=0) + 1e-6
    s = obs[idx].copy()
    out = []
    for k in range(horizon):
        a = act[idx + k]
        s, r = algo.model.step(s, a, seed=int(rng.integers(2**62)), deterministic=True)
        s = np.asarray(s, np.float32)
        real = nxt[idx + k]
        out.append({
            "k": k + 1,
            "state_rmse": float(np.sqrt(np.mean(((s - real) / scale) ** 2))),
            "reward_mae": float(np.mean(np.abs(np.asarray(r) - rew[idx + k]))),
            "constant_rmse": float(np.sqrt(np.mean(((obs[idx] - real) / scale) ** 2))),
        })
    return out


def q_bias(algo: MBPO, episodes: int, seed: int) -> dict[str, float]:
    cfg = algo.config
    agent, env = algo.agent, algo.eval_env
    gamma, alpha = float(cfg.gamma), float(agent.alpha)
    qs, soft, plain, lengths, returns = [], [], [], [], []
    for ep in range(episodes):
        o, _ = env.reset(seed=seed + ep)
        traj_o, traj_a, traj_r, traj_lp = [], [], [], []
        done = truncated = False
        t = 0
        while not (done or truncated):
            a, lp = actor_act(agent, np.asarray(o, np.float32)[None], seed=seed * 7919 + ep,
                              noise_offset=t * algo.act_dim)
            o2, r, done, truncated, _ = env.step(a[0])
            traj_o.append(np.asarray(o, np.float32))
            traj_a.append(a[0])
            traj_r.append(float(r))
            traj_lp.append(float(lp[0]))
            o, t = o2, t + 1
        T = len(traj_r)
        lengths.append(T)
        returns.append(sum(traj_r))
        r_arr, lp_arr = np.array(traj_r), np.array(traj_lp)
        g_plain, g_soft_tail = np.zeros(T), np.zeros(T)  # tail: sum_{j>t} gamma^(j-t)(r - a lp)
        acc_plain = acc_soft = 0.0
        for i in range(T - 1, -1, -1):
            g_soft_tail[i] = gamma * acc_soft
            acc_plain = r_arr[i] + gamma * acc_plain
            acc_soft = (r_arr[i] - alpha * lp_arr[i]) + gamma * acc_soft
            g_plain[i] = acc_plain
        keep = T if done else max(0, T - TRUNCATION_MARGIN)
        if keep == 0:
            continue
        with torch.no_grad():
            x = torch.from_numpy(np.concatenate([np.stack(traj_o[:keep]),
                                                 np.stack(traj_a[:keep])], 1))
            q = agent.critic(x.to(agent.device)).min(dim=0).values.squeeze(-1).cpu().numpy()
        qs.append(q)
        soft.append(r_arr[:keep] + g_soft_tail[:keep])
        plain.append(g_plain[:keep])
    if not qs:
        raise SystemExit("every episode was truncated within the margin; use more episodes")
    q, gs, gp = np.concatenate(qs), np.concatenate(soft), np.concatenate(plain)
    return {"states": int(q.size), "episodes": episodes,
            "mean_episode_length": float(np.mean(lengths)),
            "mean_return_stochastic": float(np.mean(returns)),
            "alpha": alpha, "mean_q": float(q.mean()), "mean_soft_return": float(gs.mean()),
            "mean_plain_return": float(gp.mean()), "bias": float((q - gs).mean()),
            "relative_bias": float((q - gs).mean() / (abs(gs.mean()) + 1e-8)),
            "corr": float(np.corrcoef(q, gs)[0, 1]) if q.size > 2 else float("nan")}


def last_progress(run: Path) -> dict[str, str]:
    with open(run / "progress.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[-1] if rows else {}


def report(run: Path, args: argparse.Namespace) -> str:
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        algo = _resume_copy(run, Path(tmp))
        try:
            steps = algo.env_steps
            err = model_error(algo, args.horizon, args.starts, args.recent, rng)
            q = q_bias(algo, args.episodes, args.seed)
            target = algo.config.target_entropy
            target = -float(algo.act_dim) if target is None else float(target)
        finally:
            algo.close()
    row = last_progress(run)
    lines = [f"### {run} at {steps:,} env steps (rollout length {row.get('rollout_length', '?')})",
             "",
             f"Model error along {args.horizon}-step stretches of the last {args.recent:,} real "
             f"transitions ({args.starts} starts, real actions, each row through one random "
             "elite's mean; state RMSE in units of each dim's std):",
             "",
             "| k | state RMSE (model) | state RMSE (nothing moves) | reward MAE |",
             "|---:|---:|---:|---:|"]
    for e in err:
        if e["k"] in (1, 2, 3, 5, 10, 15) or e["k"] == args.horizon:
            lines.append(f"| {e['k']} | {e['state_rmse']:.3f} | {e['constant_rmse']:.3f} | "
                         f"{e['reward_mae']:.3f} |")
    lines += ["",
              f"Q bias over {q['states']:,} visited states of {q['episodes']} stochastic-policy "
              f"episodes (mean length {q['mean_episode_length']:.0f}, mean return "
              f"{q['mean_return_stochastic']:.0f}): min-critic Q {q['mean_q']:.1f} against the "
              f"Monte-Carlo soft return {q['mean_soft_return']:.1f} (plain "
              f"{q['mean_plain_return']:.1f}): bias {q['bias']:+.1f} "
              f"({100 * q['relative_bias']:+.0f} %), correlation {q['corr']:.2f}.",
              "",
              f"Policy: alpha {q['alpha']:.4f}, target entropy {target:.1f}, entropy estimate "
              f"{float(row.get('entropy', 'nan')):.2f} (last progress.csv row); critic loss "
              f"{float(row.get('critic_loss', 'nan')):.2f}, mean Q on SAC batches "
              f"{float(row.get('mean_q', 'nan')):.1f}.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--horizon", type=int, default=15)
    ap.add_argument("--starts", type=int, default=2000)
    ap.add_argument("--recent", type=int, default=10_000)
    ap.add_argument("--episodes", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="also append the report here")
    args = ap.parse_args()
    for name, v in (("horizon", args.horizon), ("starts", args.starts),
                    ("recent", args.recent), ("episodes", args.episodes)):
        if v < 1:
            ap.error(f"--{name}: expected >= 1, got {v}")
    text = "\n".join(report(run, args) for run in args.runs)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
