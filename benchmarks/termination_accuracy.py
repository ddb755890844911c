"""How well the learned termination model (mf.TerminationModel) recovers an environment's own
termination from real transitions (issue 16's evidence).

Usage::

    PYTHONPATH=. python benchmarks/termination_accuracy.py [--steps 30000] \\
        [--pool ENV=RUN_DIR ...] [--out FILE.md]

For Hopper-v5 and Walker2d-v5: `--steps` transitions of a uniformly random policy (episodes
reset on termination or truncation), and, with ``--pool Hopper-v5=runs/hopper-native-s1``,
the real pool of a training run's latest checkpoint (the transitions of its trained,
improving policy). Each data set is split 80/20 at random into training rows and TEST rows
the model never sees; ``fit`` (which holds out 20 % of its rows for early stopping) runs on
the training rows; reported: the balanced accuracy (mean of the recalls of terminated and
not-terminated transitions) and both recalls on the test rows, against the environment's
own ``terminated`` flags.
"""

from __future__ import annotations

# First, as in a user's program (mbpo_fast/_openmp.py).
import mbpo_fast  # noqa: F401

# isort: split

import argparse
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

import mbpo_fast as mf
from mbpo_fast.mbpo import latest_checkpoint

ENVS = ("Hopper-v5", "Walker2d-v5")


def random_transitions(env_id: str, steps: int, seed: int) -> tuple[np.ndarray, ...]:
    env = gym.make(env_id)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    rows: list[tuple] = []
    for _ in range(steps):
        act = env.action_space.sample()
        nxt, _, term, trunc, _ = env.step(act)
        rows.append((obs, act, nxt, term))
        obs = env.reset()[0] if term or trunc else nxt
    env.close()
    o, a, n, t = (np.asarray(x) for x in zip(*rows, strict=True))
    return (o.astype(np.float32), a.astype(np.float32), n.astype(np.float32), t.astype(bool))


def pool_transitions(run: Path) -> tuple[np.ndarray, ...]:
    pool = mf.ReplayPool.load(latest_checkpoint(run) / "real_pool.bin")
    t = pool.transitions()
    return (np.asarray(t.obs), np.asarray(t.act), np.asarray(t.next_obs),
            np.asarray(t.terminated, bool))


def evaluate(data: tuple[np.ndarray, ...], seed: int) -> dict[str, float]:
    obs, act, nxt, term = data
    n = obs.shape[0]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_test = n // 5
    test, train = perm[:n_test], perm[n_test:]
    model = mf.TerminationModel(obs.shape[1], act.shape[1], seed=seed)
    t0 = time.perf_counter()
    fit = model.fit(obs[train], act[train], nxt[train], term[train])
    seconds = time.perf_counter() - t0
    pred = np.asarray(model(obs[test], act[test], nxt[test]), bool)
    y = term[test]
    rec_pos = float((pred & y).sum() / max(1, y.sum()))
    rec_neg = float((~pred & ~y).sum() / max(1, (~y).sum()))
    return {"rows": n, "positive_fraction": float(term.mean()), "test_rows": int(n_test),
            "test_positives": int(y.sum()), "balanced_accuracy": 0.5 * (rec_pos + rec_neg),
            "recall_terminated": rec_pos, "recall_alive": rec_neg, "epochs": fit["epochs"],
            "fit_seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30_000)
    ap.add_argument("--pool", action="append", default=[], metavar="ENV=RUN_DIR")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.steps < 10:
        ap.error(f"--steps: expected >= 10, got {args.steps}")
    sets: list[tuple[str, str, tuple[np.ndarray, ...]]] = []
    for env_id in ENVS:
        sets.append((env_id, f"random policy, {args.steps:,} steps",
                     random_transitions(env_id, args.steps, args.seed)))
    for item in args.pool:
        env_id, _, run = item.partition("=")
        if not run:
            ap.error(f"--pool: expected ENV=RUN_DIR, got {item!r}")
        sets.append((env_id, f"real pool of {run} (trained policy)", pool_transitions(Path(run))))
    lines = ["| env | data | rows (terminated %) | test rows (terminated) | balanced accuracy "
             "| recall terminated / alive | fit epochs, s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for env_id, what, data in sets:
        r = evaluate(data, args.seed)
        lines.append(
            f"| {env_id} | {what} | {r['rows']:,} ({100 * r['positive_fraction']:.1f} %) | "
            f"{r['test_rows']:,} ({r['test_positives']}) | **{r['balanced_accuracy']:.3f}** | "
            f"{r['recall_terminated']:.3f} / {r['recall_alive']:.3f} | "
            f"{r['epochs']}, {r['fit_seconds']:.0f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
