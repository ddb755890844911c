"""The GPU check of mbpo_fast in one script: build, run the `gpu` tests, time the kernels.

    PYTHONPATH=. python benchmarks/gpu_suite.py            # cmake dev build, tests, timings
    PYTHONPATH=. python benchmarks/gpu_suite.py --build pip
    PYTHONPATH=. python benchmarks/gpu_suite.py --no-build --skip-tests --batches 256,4096

Exits 0 with "no CUDA device" (and does nothing else) when torch sees no GPU, so it is safe
to run anywhere. Hopper sizes: obs 11, act 3, E = 7 members, 5 elites, 4 x 200 SiLU,
float32; 255.2 kFLOP per row for the chosen member.

Timed, interleaved (A B C D A B C D ...) in one process, CUDA events around `--iters` calls,
median over `--repeats` rounds, one table:
  fused        mbpo_fast EnsembleDynamics.step on CUDA tensors (csrc/cuda/ensemble_step.cu)
  bmm+gather   torch: every member on every row (one baddbmm per layer over [E, B, in]),
               then gather each row's member and sample (the original MBPO code's way)
  split        torch: rows sorted by member, each elite's MLP on its rows, scattered back
  graph        the bmm+gather version captured once in a CUDA graph and replayed
  predict      mbpo_fast predict (all 7 members, mean and var) for reference
A float32 matmul canary (TFLOP/s of a 4096^3 matmul) is printed before and after: discard
the run when it dropped (another job on the GPU).

Then the device rollout (one step per call, B = --batches) and the issue 16 features on it
(`--feature-starts`, default 400 and 100,000 starts, horizon 5): plain, the uncertainty
features (quantile stop q0.9 + penalty: every elite once per alive row), and a learned
termination model, median wall time per rollout and the ratio to the plain rollout.

Then the MPC planner on a CUDA model (csrc/cuda/planner.cu, issue 17): one `MPC.plan` with
PETS's settings (CEM 500 x 5, horizon 30, 20 particles, TS-inf, Hopper reward and
termination) against bench_planner.TorchCEM on the same CUDA model, interleaved, and the
small real-time budget (random shooting, population 200, horizon 15, 1 particle) on the GPU
beside the CPU planner, with the two planners' actions compared for the same seed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OBS, ACT, E, K, HIDDEN, LAYERS = 11, 3, 7, 5, 200, 4
WIDTHS = [OBS + ACT] + [HIDDEN] * LAYERS + [2 * (OBS + 1)]
FLOP_PER_ROW = 2 * sum(WIDTHS[i] * WIDTHS[i + 1] for i in range(len(WIDTHS) - 1))


def _run(cmd: list[str], **kw) -> int:
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT, **kw)


def build(kind: str) -> None:
    py = sys.executable
    if kind == "pip":
        rc = _run([py, "-m", "pip", "install", "-e", ".", "--no-build-isolation"])
    else:
        import pybind11

        bdir = "build/gpu"
        rc = _run(
            [
                "cmake",
                "-S",
                ".",
                "-B",
                bdir,
                "-G",
                "Ninja",
                "-DMBPO_FAST_PYTHON=ON",
                "-DMBPO_FAST_INPLACE=ON",
                "-DMBPO_FAST_CUDA=ON",
                f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
                f"-DPython_EXECUTABLE={py}",
            ]
        )
        if rc == 0:
            rc = _run(["cmake", "--build", bdir, f"-j{os.cpu_count() or 2}"])
    if rc != 0:
        sys.exit(f"gpu_suite: the build failed (exit {rc})")


# ---------------------------------------------------------------------------- torch references


def torch_refs(model, batch: int):
    """The reference step implementations over the model's own CUDA parameters."""
    import torch
    import torch.nn.functional as F

    ws = [layer.weight for layer in model.layers]
    bs = [layer.bias for layer in model.layers]
    elites = model.elite_index
    mean_in, std_in = model.input_mean, model.input_std
    maxlv, minlv = model.max_logvar, model.min_logvar
    out = OBS + 1

    def head_to_sample(mu, raw, obs, noise):
        lv = maxlv - F.softplus(maxlv - raw)
        lv = minlv + F.softplus(lv - minlv)
        y = mu + (0.5 * lv).exp() * noise
        return obs + y[:, :OBS], y[:, OBS]

    def bmm_gather(obs, act, pick, noise):
        x = ((torch.cat([obs, act], 1) - mean_in) / std_in).unsqueeze(0).expand(E, -1, -1)
        for i, (w, b) in enumerate(zip(ws, bs, strict=True)):
            x = torch.baddbmm(b.unsqueeze(1), x, w)
            if i + 1 < len(ws):
                x = F.silu(x)
        rows = torch.arange(obs.shape[0], device=obs.device)
        h = x[elites[pick], rows]
        return head_to_sample(h[:, :out], h[:, out:], obs, noise)

    elite_ids = [int(i) for i in model.elite_index.tolist()]

    def split(obs, act, pick, noise):
        x0 = (torch.cat([obs, act], 1) - mean_in) / std_in
        next_obs = torch.empty_like(obs)
        rew = torch.empty(obs.shape[0], device=obs.device)
        order = torch.argsort(pick)
        counts = torch.bincount(pick, minlength=K).tolist()  # one sync, as such code does
        start = 0
        for k, c in enumerate(counts):
            idx = order[start : start + c]
            start += c
            if c == 0:
                continue
            h = x0[idx]
            m = elite_ids[k]
            for i, (w, b) in enumerate(zip(ws, bs, strict=True)):
                h = torch.addmm(b[m], h, w[m])
                if i + 1 < len(ws):
                    h = F.silu(h)
            no, r = head_to_sample(h[:, :out], h[:, out:], obs[idx], noise[idx])
            next_obs[idx] = no
            rew[idx] = r
        return next_obs, rew

    return bmm_gather, split


def median_times(cands: dict, iters: int, repeats: int) -> dict:
    import torch

    times = {name: [] for name in cands}
    for fn in cands.values():  # warm-up (kernel selection, allocator, graph capture)
        fn()
    torch.cuda.synchronize()
    for _ in range(repeats):
        for name, fn in cands.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            times[name].append(start.elapsed_time(end) * 1e3 / iters)  # µs per call
    return {name: statistics.median(v) for name, v in times.items()}


def canary() -> float:
    import torch

    a = torch.randn(4096, 4096, device="cuda")
    b = torch.randn(4096, 4096, device="cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    end.synchronize()
    return 10 * 2 * 4096**3 / (start.elapsed_time(end) * 1e-3) / 1e12


def time_kernels(batches: list[int], iters: int, repeats: int) -> None:
    import torch

    import mbpo_fast as mf

    torch.backends.cuda.matmul.allow_tf32 = False  # the references stay float32 like the kernel
    print(f"\nmatmul canary before: {canary():.1f} TFLOP/s (fp32, 4096^3)")
    model = mf.EnsembleDynamics(
        OBS,
        ACT,
        ensemble_size=E,
        num_elites=K,
        hidden_size=HIDDEN,
        num_layers=LAYERS,
        device="cuda",
    )
    rows = []
    for batch in batches:
        g = torch.Generator(device="cuda").manual_seed(batch)
        obs = torch.randn(batch, OBS, device="cuda", generator=g)
        act = torch.rand(batch, ACT, device="cuda", generator=g) * 2 - 1
        pick = torch.randint(K, (batch,), device="cuda", generator=g)
        noise = torch.randn(batch, OBS + 1, device="cuda", generator=g)
        bmm_gather, split = torch_refs(model, batch)
        with torch.no_grad():
            graph = torch.cuda.CUDAGraph()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                bmm_gather(obs, act, pick, noise)  # warm-up before capture
            torch.cuda.current_stream().wait_stream(s)
            with torch.cuda.graph(graph):
                bmm_gather(obs, act, pick, noise)
            args = (obs, act, pick, noise)
            cands = {
                "fused": partial(model.step, obs, act, seed=1),
                "bmm+gather": partial(bmm_gather, *args),
                "split": partial(split, *args),
                "graph": graph.replay,
                "predict": partial(model.predict, obs, act),
            }
            n_iter = max(3, iters if batch <= 4096 else iters // 10)
            med = median_times(cands, n_iter, repeats)
        for name, us in med.items():
            useful = batch * FLOP_PER_ROW * (E if name == "predict" else 1)
            rows.append((batch, name, us, med[name] / med["fused"], useful / (us * 1e-6) / 1e9))
    print(f"matmul canary after:  {canary():.1f} TFLOP/s\n")
    head = ("B", "implementation", "median us/call", "x fused", "useful GFLOP/s")
    print(f"{head[0]:>8} | {head[1]:<12} | {head[2]:>14} | {head[3]:>8} | {head[4]:>14}")
    print("-" * 70)
    for batch, name, us, ratio, gf in rows:
        print(f"{batch:>8} | {name:<12} | {us:>14.1f} | {ratio:>8.2f} | {gf:>14.1f}")
    print(
        f"\n(useful FLOPs: {FLOP_PER_ROW / 1e3:.1f} kFLOP per row for the chosen member; "
        "predict counts all 7 members)"
    )
    time_rollout(model, batches, repeats)


def time_rollout(model, batches: list[int], repeats: int) -> None:
    """One-step device rollouts (actor + step + termination + append, csrc/cuda/rollout.cu):
    median wall time per call, which includes its single sync at the end."""
    import time

    import numpy as np
    import torch

    import mbpo_fast as mf
    from mbpo_fast import cuda_ops

    agent = mf.SAC(OBS, ACT, -np.ones(ACT), np.ones(ACT), device="cuda")
    print(f"\n{'B':>8} | {'device rollout, 1 step':>24} | {'useful GFLOP/s':>14}")
    print("-" * 54)
    for batch in batches:
        try:
            real = mf.ReplayPool(batch, OBS, ACT, device="cuda")
            obs = torch.randn(batch, OBS, device="cuda") * 0.02
            obs[:, 0] = 1.25
            real.add_batch(
                obs,
                torch.zeros(batch, ACT, device="cuda"),
                torch.zeros(batch, device="cuda"),
                obs,
                torch.zeros(batch, dtype=torch.bool, device="cuda"),
            )
            pool = mf.ReplayPool(4 * batch, OBS, ACT, device="cuda")
            times = []
            for r in range(repeats + 1):
                torch.cuda.synchronize()
                t = time.perf_counter()
                cuda_ops.branched_rollout(model, agent, "Hopper-v5", real, pool, batch, 1, r)
                if r:  # the first call warms up
                    times.append(time.perf_counter() - t)
            us = statistics.median(times) * 1e6
            flops = batch * (FLOP_PER_ROW + 2 * (OBS * 256 + 256 * 256 + 256 * 2 * ACT))
            print(f"{batch:>8} | {us:>21.1f} us | {flops / (us * 1e-6) / 1e9:>14.1f}")
        except Exception as exc:  # keep the rest of the report
            print(f"{batch:>8} | FAILED: {type(exc).__name__}: {exc}")


def _device_real_pool(batch: int):
    import torch

    import mbpo_fast as mf

    real = mf.ReplayPool(batch, OBS, ACT, device="cuda")
    obs = torch.randn(batch, OBS, device="cuda") * 0.02
    obs[:, 0] = 1.25  # Hopper's healthy height
    real.add_batch(
        obs,
        torch.zeros(batch, ACT, device="cuda"),
        torch.zeros(batch, device="cuda"),
        obs,
        torch.zeros(batch, dtype=torch.bool, device="cuda"),
    )
    return real


def time_rollout_features(starts: list[int], repeats: int, horizon: int = 5) -> None:
    """Issue 16's cost on the device: the plain rollout against the uncertainty features (every
    elite once per alive row) and a learned termination model, same seed and model."""
    import time

    import numpy as np
    import torch

    import mbpo_fast as mf
    from mbpo_fast import cuda_ops

    model = mf.EnsembleDynamics(
        OBS, ACT, ensemble_size=E, num_elites=K, hidden_size=HIDDEN, num_layers=LAYERS,
        device="cuda",
    )
    with torch.no_grad():  # calm predictions: rows live for the horizon
        model.layers[-1].weight.mul_(0.02)
        model.layers[-1].bias.mul_(0.02)
        model.max_logvar.fill_(-5.0)
        model.min_logvar.fill_(-9.0)
    agent = mf.SAC(OBS, ACT, -np.ones(ACT), np.ones(ACT), device="cuda")
    term = mf.TerminationModel(OBS, ACT, hidden_size=64, num_layers=2, seed=0)
    variants = {
        "plain": ("Hopper-v5", {}),
        "q0.9 + penalty": ("Hopper-v5", {"disagreement_quantile": 0.9, "uncertainty_penalty": 1.0}),
        "learned term.": (term, {}),
        "both": (term, {"disagreement_quantile": 0.9, "uncertainty_penalty": 1.0}),
    }
    print(f"\n{'starts':>8} | {'rollout, horizon ' + str(horizon):<18} | {'median ms':>10} | "
          f"{'x plain':>8} | {'rows':>8} | {'stopped':>8}")
    print("-" * 76)
    for n in starts:
        try:
            real = _device_real_pool(min(n, 100_000))
            pool = mf.ReplayPool(max(1, n * horizon), OBS, ACT, device="cuda")
            last = {}
            for termination, kw in variants.values():  # warm-up
                cuda_ops.branched_rollout(model, agent, termination, real, pool, n, horizon, 0,
                                          **kw)
            times = {name: [] for name in variants}
            for r in range(repeats):  # interleaved
                for name, (termination, kw) in variants.items():
                    torch.cuda.synchronize()
                    t = time.perf_counter()
                    last[name] = cuda_ops.branched_rollout(
                        model, agent, termination, real, pool, n, horizon, r + 1, **kw)
                    times[name].append(time.perf_counter() - t)
            med = {name: statistics.median(v) * 1e3 for name, v in times.items()}
            for name in variants:
                st = last[name]
                ratio = med[name] / med["plain"]
                print(f"{n:>8} | {name:<18} | {med[name]:>10.2f} | {ratio:>8.2f} | "
                      f"{st['rows_added']:>8} | {st['num_stopped']:>8}")
        except Exception as exc:  # keep the rest of the report
            print(f"{n:>8} | FAILED: {type(exc).__name__}: {exc}")


def time_planner(repeats: int) -> None:
    """MPC.plan with a CUDA model against a lean torch CEM on the same device, and the small
    real-time budget on the GPU and on the CPU (same weights and seed: actions compared)."""
    import time

    import numpy as np
    import torch

    import mbpo_fast as mf

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_planner import BUDGET, PETS, TorchCEM, hopper_model, observation

    cpu = hopper_model()
    gpu = mf.EnsembleDynamics(OBS, ACT, ensemble_size=E, num_elites=K, hidden_size=HIDDEN,
                              num_layers=LAYERS, device="cuda")
    gpu.load_state_dict(cpu.state_dict())
    low, high = -np.ones(ACT, np.float32), np.ones(ACT, np.float32)
    obs = observation(np.random.default_rng(0))
    env = dict(reward_fn="Hopper-v5", termination="Hopper-v5")
    print("\nMPC planner on the GPU (Hopper-size model, Hopper-v5 reward and termination)")
    try:
        mpc = mf.MPC(gpu, low, high, **env, **PETS, seed=1)
        ref = TorchCEM(gpu, low, high, PETS["horizon"], PETS["population"], PETS["elites"],
                       PETS["iterations"], PETS["alpha"], PETS["particles"], seed=1)
        mpc.plan(obs), ref.plan(obs)  # warm-up
        t_mpc, t_ref = [], []
        for _ in range(max(2, repeats // 2)):  # interleaved
            for fn, times in ((mpc.plan, t_mpc), (ref.plan, t_ref)):
                torch.cuda.synchronize()
                t = time.perf_counter()
                fn(obs)
                times.append(time.perf_counter() - t)
        a, b = statistics.median(t_mpc), statistics.median(t_ref)
        flop = (PETS["population"] * PETS["particles"] * PETS["horizon"] * PETS["iterations"]
                * FLOP_PER_ROW)
        print(f"  PETS plan: mbpo_fast {a * 1e3:.1f} ms ({flop / a / 1e9:.0f} useful GFLOP/s), "
              f"torch CEM {b * 1e3:.1f} ms -> {b / a:.2f}x; failed particles "
              f"{mpc.last_stats['failed']}")
    except Exception as exc:  # keep the rest of the report
        print(f"  PETS plan FAILED: {type(exc).__name__}: {exc}")
    try:
        m_gpu = mf.MPC(gpu, low, high, **env, **BUDGET, seed=2)
        m_cpu = mf.MPC(cpu, low, high, **env, **BUDGET, seed=2)
        acts = [(m_gpu.plan(obs), m_cpu.plan(obs)) for _ in range(2)]  # also the warm-ups
        diff = max(float(np.abs(g - c).max()) for g, c in acts)
        t_gpu, t_cpu = [], []
        for _ in range(repeats):
            for m, times in ((m_gpu, t_gpu), (m_cpu, t_cpu)):
                t = time.perf_counter()
                m.plan(obs)
                times.append(time.perf_counter() - t)
        print(f"  budget (random shooting 200 x 15, 1 particle): GPU "
              f"{statistics.median(t_gpu) * 1e3:.2f} ms, CPU {statistics.median(t_cpu) * 1e3:.2f} "
              f"ms; max |action GPU - CPU| over 2 calls = {diff:.2e}")
    except Exception as exc:
        print(f"  budget plan FAILED: {type(exc).__name__}: {exc}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--no-build", action="store_true", help="use the extension as it is")
    ap.add_argument("--build", choices=("cmake", "pip"), default="cmake")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--batches", default="256,4096,100000")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--feature-starts", default="400,100000",
                    help="start rows of the issue 16 feature timings ('' to skip)")
    ap.add_argument("--skip-planner", action="store_true", help="skip the MPC planner timings")
    args = ap.parse_args(argv)

    try:
        import torch
    except ImportError:
        print("gpu_suite: no CUDA device (torch is not installed); nothing to run")
        return 0
    if not torch.cuda.is_available():
        print("gpu_suite: no CUDA device (torch.cuda.is_available() is False); nothing to run")
        return 0
    cc = "".join(map(str, torch.cuda.get_device_capability()))
    print(f"gpu_suite: {torch.cuda.get_device_name()} (sm_{cc})")
    if not args.no_build:
        build(args.build)
    # a fresh interpreter sees the freshly built extension
    check = subprocess.run(
        [sys.executable, "-c", "import mbpo_fast as mf; print(mf.has_cuda(), mf.build_info())"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    print(check.stdout.strip() or check.stderr.strip())
    if not check.stdout.startswith("True"):
        print("gpu_suite: a GPU is present but mbpo_fast has no CUDA path (built without nvcc?)")
        return 1
    status = 0
    if not args.skip_tests:
        status = _run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"])
        print(f"gpu tests: {'passed' if status == 0 else f'FAILED (exit {status})'}")
    time_kernels([int(b) for b in args.batches.split(",")], args.iters, args.repeats)
    if args.feature_starts:
        time_rollout_features([int(b) for b in args.feature_starts.split(",")], args.repeats)
    if not args.skip_planner:
        time_planner(args.repeats)
    return status


if __name__ == "__main__":
    sys.exit(main())
