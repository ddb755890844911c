"""End-to-end MBPO throughput: env steps per hour of `mbpo-fast train` per training backend.

Measures what a user gets from a run with the paper's settings: the SAME checkpoint is
resumed once per trainer, in alternating blocks (native, torch, native, torch, ...), and
each block runs ``--block`` real env steps of the full loop (model fit on the whole real
pool + 100,000 branched rollouts every 250 steps, 20 SAC updates per step, env steps,
evaluation excluded). Nothing is tuned: the library's defaults, ``--threads`` CPU threads for
torch and the native kernels (as ``mbpo-fast train --threads``).

The checkpoint is made by this script: ``--rows`` uniformly random real steps (the random
phase extended to ``--rows`` steps, so the model is fitted on ``--rows`` real transitions,
as a run is at that point), then one model fit, so that the measured blocks' fits are warm
starts as in a run. A real run's pool holds on-policy transitions instead, so its fits stop
after a different number of epochs; the per-epoch cost is the same.

    python benchmarks/e2e_throughput.py --env Hopper-v5 --rows 20000 --block 250 --repeats 2
    python benchmarks/e2e_throughput.py --rows 60000 --block 250 --repeats 1 --trainers native

Prints one line per block and a summary (median seconds per phase, env steps / hour, the
ratio native / torch) and, with ``--json``, writes them to a file. ``--project`` uses the
measured per-step costs at two pool sizes to project the hours of a 125,000-step run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import mbpo_fast as mf
from mbpo_fast.config import MBPOConfig
from mbpo_fast.mbpo import _PHASES, MBPO

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _canary import canary_gflops  # noqa: E402


def make_checkpoint(env_id: str, rows: int, block: int, seed: int, logdir: Path) -> None:
    """Runs `rows` random env steps (the extended random phase) and checkpoints there."""
    cfg = MBPOConfig.for_env(env_id, seed=seed)
    cfg.init_random_steps = rows
    cfg.total_steps = rows + block  # sizes the real pool; blocks step the loop themselves
    cfg.checkpoint_freq = 0
    cfg.eval_freq = 10_000_000
    cfg.validate()
    algo = MBPO(cfg, logdir=logdir, quiet=True)
    try:
        logdir.mkdir(parents=True, exist_ok=True)
        (logdir / "config.json").write_text(cfg.to_json())
        while algo.env_steps < rows:
            algo._step()
        # One fit (and rollout) before the checkpoint: in a run the model at this point is
        # warm-started from the previous fits, so a block's fit must not start from scratch
        # (a first fit on 20,000 rows runs ~170 epochs, a warm one a few dozen).
        algo.train_model_and_rollout()
        algo.save_checkpoint()
    finally:
        algo.close()


def run_block(logdir: Path, trainer: str, block: int, bf16: bool) -> dict[str, float]:
    """Resumes the checkpoint with `trainer` and runs `block` env steps; per-phase seconds."""
    overrides = [f"trainer={trainer}", f"autocast_bf16={'true' if bf16 else 'false'}"]
    algo = MBPO.resume(logdir, quiet=True, overrides=overrides)
    try:
        start = dict(algo.seconds)
        t0 = time.perf_counter()
        for _ in range(block):
            algo._step()
        wall = time.perf_counter() - t0
        out = {p: algo.seconds[p] - start[p] for p in _PHASES}
        out["wall"] = wall
        out["steps_per_hour"] = block / wall * 3600.0
        out["sac_trainer"] = algo.agent.trainer
        out["model_trainer"] = algo.model.trainer
        out["model_epochs"] = algo.last_model.get("model_epochs", float("nan"))
        return out
    finally:
        algo.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", default="Hopper-v5")
    ap.add_argument("--rows", type=int, nargs="+", default=[20_000],
                    help="real transitions in the checkpoint (one measurement per value)")
    ap.add_argument("--block", type=int, default=250, help="env steps per block (>= 1 fit)")
    ap.add_argument("--repeats", type=int, default=2, help="blocks per trainer")
    ap.add_argument("--trainers", nargs="+", default=["native", "torch"],
                    help="trainers, alternated in this order (add native-bf16 for bf16)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--project", type=int, default=125_000,
                    help="project the hours of a run of this many steps (needs 2 --rows)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    mf.set_num_threads(args.threads)
    report: dict = {"env": args.env, "threads": args.threads, "block": args.block,
                    "canary_before": canary_gflops(), "results": {}}
    print(f"canary {report['canary_before']:.0f} GFLOP/s; backend {mf.backend()}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="mbpo_e2e_"))
    try:
        for rows in args.rows:
            logdir = tmp / f"rows{rows}"
            t0 = time.perf_counter()
            make_checkpoint(args.env, rows, args.block, args.seed, logdir)
            print(f"checkpoint at {rows} random steps ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
            blocks: dict[str, list[dict]] = {t: [] for t in args.trainers}
            for rep in range(args.repeats):
                for name in args.trainers:
                    trainer, bf16 = name.removesuffix("-bf16"), name.endswith("-bf16")
                    r = run_block(logdir, trainer, args.block, bf16)
                    blocks[name].append(r)
                    print(f"rows {rows} rep {rep} {name:>12}: " + " ".join(
                        f"{p} {r[p]:.1f}s" for p in (*_PHASES, "wall")) +
                        f"  epochs {r['model_epochs']:.0f}  {r['steps_per_hour']:.0f} steps/h",
                        flush=True)
            summary = {}
            for name, rs in blocks.items():
                med = {k: statistics.median(r[k] for r in rs)
                       for k in (*_PHASES, "wall", "steps_per_hour")}
                summary[name] = {"median": med, "blocks": rs}
            report["results"][str(rows)] = summary
            if "torch" in summary:
                base = summary["torch"]["median"]["steps_per_hour"]
                for name in summary:
                    ratio = summary[name]["median"]["steps_per_hour"] / base
                    summary[name]["ratio_vs_torch"] = ratio
                    print(f"rows {rows}: {name} {summary[name]['median']['steps_per_hour']:.0f}"
                          f" steps/h = {ratio:.2f}x torch", flush=True)
        if len(args.rows) >= 2:
            report["projection"] = _project(report, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report["canary_after"] = canary_gflops()
    print(f"canary after {report['canary_after']:.0f} GFLOP/s")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def _project(report: dict, args: argparse.Namespace) -> dict[str, float]:
    """Hours of a run of `args.project` steps: seconds per step linear in the pool size
    between the two measured sizes (extrapolated beyond), plus the random phase at the
    measured env cost. The model fit is the part that grows with the pool."""
    cfg = MBPOConfig.for_env(args.env)
    (r0, s0), (r1, s1) = sorted((int(r), s) for r, s in report["results"].items())[:2]
    out = {}
    for name in s0:
        c0 = s0[name]["median"]["wall"] / args.block
        c1 = s1[name]["median"]["wall"] / args.block
        slope = (c1 - c0) / (r1 - r0)
        steps = range(cfg.init_random_steps, args.project, 1000)
        seconds = sum(1000 * (c0 + slope * (s + 500 - r0)) for s in steps)
        out[name] = seconds / 3600.0
        print(f"projected {args.project} steps with {name}: {out[name]:.1f} h")
    return out


if __name__ == "__main__":
    sys.exit(main())
