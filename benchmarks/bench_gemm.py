"""The trainers' GEMM (mbpo_fast._C.train_ops.sgemm / sgemm_bf16) vs torch.mm, one thread.

The native trainers call sgemm once per layer, per network and per thread, so both sides run
on ONE thread (torch.set_num_threads(1)). Shapes are the ones the trainers issue (row-major,
y = x @ W + b with W stored [in, out]):
  * SAC, Hopper (obs 11, act 3, hidden 256, batch 256): forward x @ W, weight gradient
    dW = x^T @ dy ("TN") and input gradient dx = dy @ W^T ("NT"), incl. the narrow layers
    (k = 11 / 14 inputs, n = 6 actor head, n = 1 critic head);
  * ensemble member (14 -> 200 x 4 -> 24, batch 256): the same three forms.

Candidates, timed interleaved (A B C A B C ...), median of SAMPLES blocks of REPS calls:
  * ours (native loop): sgemm(..., repeats=REPS) runs the REPS calls inside one native call:
    the kernel as the C++ trainers see it;
  * ours (python loop): one binding call per product (adds ~1 us of Python/pybind11);
  * torch: torch.mm(a, b, out=c) on the same memory (transposes as views), one Python call
    per product (the way a torch trainer issues it; includes torch's dispatch overhead,
    reported separately as the time of a 1 x 1 x 1 product).
  * bf16: ours rounds to bf16 inside the kernel; torch's reference is what autocast does per
    matmul on CPU: cast both operands to bf16, then a bf16 mm (oneDNN).

Run:
    PYTHONPATH=. python benchmarks/bench_gemm.py [--quick] [--out benchmarks/RESULTS_gemm.md]
or with pytest-benchmark (per-implementation timings, no ratios):
    PYTHONPATH=. pytest benchmarks/bench_gemm.py --benchmark-only
"""

from __future__ import annotations

# First, as in a user's program: importing mbpo_fast sets how long torch's idle OpenMP
# workers spin before torch starts (mbpo_fast/_openmp.py). No tuning variable is set here.
import mbpo_fast  # noqa: F401

# isort: split

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _canary import canary_gflops  # noqa: E402

try:
    from mbpo_fast._C import train_ops as ops
except ImportError:  # pragma: no cover - the extension is not built
    ops = None

# (label, form, m, n, k): form "NN" = x @ W, "TN" = x^T @ dy, "NT" = dy @ W^T
SHAPES = [
    ("SAC hidden fwd", "NN", 256, 256, 256),
    ("SAC hidden dW", "TN", 256, 256, 256),
    ("SAC hidden dx", "NT", 256, 256, 256),
    ("SAC actor in fwd (k=11)", "NN", 256, 256, 11),
    ("SAC critic in fwd (k=14)", "NN", 256, 256, 14),
    ("SAC critic in dW", "TN", 14, 256, 256),
    ("SAC critic in dx (da)", "NT", 256, 14, 256),
    ("SAC actor head fwd (n=6)", "NN", 256, 6, 256),
    ("SAC actor head dW", "TN", 256, 6, 256),
    ("SAC actor head dx", "NT", 256, 256, 6),
    ("SAC critic head fwd (n=1)", "NN", 256, 1, 256),
    ("SAC critic head dW", "TN", 256, 1, 256),
    ("SAC critic head dx", "NT", 256, 256, 1),
    ("ens hidden fwd", "NN", 256, 200, 200),
    ("ens hidden dW", "TN", 200, 200, 256),
    ("ens hidden dx", "NT", 256, 200, 200),
    ("ens in fwd (k=14)", "NN", 256, 200, 14),
    ("ens head fwd (n=24)", "NN", 256, 24, 200),
    ("ens head dW", "TN", 200, 24, 256),
    ("ens head dx", "NT", 256, 200, 24),
]


def operands(form: str, m: int, n: int, k: int, seed: int = 0):
    """float32 a, b (stored as the form says) and c [m, n]."""
    rng = np.random.default_rng(seed)
    ta, tb = form[0] == "T", form[1] == "T"
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    return a, b, np.zeros((m, n), np.float32), ta, tb


def candidates(form, m, n, k, bf16, reps):
    """name -> callable running `reps` products (all on the same memory)."""
    a, b, c, ta, tb = operands(form, m, n, k)
    fn = ops.sgemm_bf16 if bf16 else ops.sgemm
    ta_t, tb_t, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
    opa = ta_t.t() if ta else ta_t
    opb = tb_t.t() if tb else tb_t

    def ours_native():
        fn(a, b, c, trans_a=ta, trans_b=tb, repeats=reps)

    def ours_python():
        for _ in range(reps):
            fn(a, b, c, trans_a=ta, trans_b=tb)

    if bf16:
        out16 = torch.empty((m, n), dtype=torch.bfloat16)

        def torch_mm():
            for _ in range(reps):
                torch.mm(opa.bfloat16(), opb.bfloat16(), out=out16)
    else:

        def torch_mm():
            for _ in range(reps):
                torch.mm(opa, opb, out=tc)

    return {"ours (native loop)": ours_native, "ours (python loop)": ours_python, "torch": torch_mm}


def reps_for(m, n, k) -> int:
    """Enough calls per timed block for ~2 ms of work at ~100 GFLOP/s."""
    return int(max(5, min(2000, 2e-3 * 100e9 / (2 * m * n * k))))


def measure(form, m, n, k, bf16, samples) -> dict[str, float]:
    """Median seconds per product of each candidate, interleaved."""
    reps = reps_for(m, n, k)
    cands = candidates(form, m, n, k, bf16, reps)
    for f in cands.values():  # warm-up (thread-local buffers, torch's caches)
        f()
    times = {name: [] for name in cands}
    for _ in range(samples):
        for name, f in cands.items():
            t0 = time.perf_counter()
            f()
            times[name].append((time.perf_counter() - t0) / reps)
    return {name: statistics.median(ts) for name, ts in times.items()}


def torch_call_overhead(samples=21) -> float:
    """Seconds of one torch.mm call on 1 x 1 operands (Python + dispatcher)."""
    a, b, c = torch.ones(1, 1), torch.ones(1, 1), torch.empty(1, 1)
    ts = []
    for _ in range(samples):
        t0 = time.perf_counter()
        for _ in range(1000):
            torch.mm(a, b, out=c)
        ts.append((time.perf_counter() - t0) / 1000)
    return statistics.median(ts)


def elementwise_candidates(n_adam: int = 70_401, rows: int = 256, width: int = 200):
    """(label, ours, torch) pairs for the trainers' elementwise ops, one call each.

    n_adam = one SAC critic's parameters (14*256+256 + 256*256+256 + 256+1). torch's side is
    the op a torch trainer runs: Adam(fused=True).step() on one parameter of that size,
    F.silu / aten.silu_backward, aten.threshold_backward (ReLU's backward), dy.sum(0).
    Ours work in place, so their timings include restoring the inputs (np.copyto) each call.
    """
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n_adam).astype(np.float32)
    g = (0.1 * rng.standard_normal(n_adam)).astype(np.float32)
    m, v, step = np.zeros_like(p), np.zeros_like(p), np.zeros(1, np.float32)
    p_t = torch.nn.Parameter(torch.from_numpy(p.copy()))
    p_t.grad = torch.from_numpy(g.copy())
    opt = torch.optim.Adam([p_t], lr=1e-9, weight_decay=1e-4, fused=True)
    x = rng.standard_normal((rows, width)).astype(np.float32)
    gy = rng.standard_normal((rows, width)).astype(np.float32)
    w = rng.standard_normal((width, width)).astype(np.float32)
    xs, gs, pre = x.copy(), gy.copy(), np.empty_like(x)
    x_t, gy_t = torch.from_numpy(x), torch.from_numpy(gy)
    dw, db = np.zeros((width, width), np.float32), np.zeros(width, np.float32)
    return [
        (
            f"adam_step n={n_adam} (wd 1e-4)",
            lambda: ops.adam_step(p, g, m, v, step, lr=1e-9, weight_decay=1e-4),
            opt.step,
        ),
        (
            f"silu fwd+bwd [{rows},{width}]",
            lambda: (  # fresh inputs each call: repeated in-place SiLU drifts into denormals
                np.copyto(xs, x),
                np.copyto(gs, gy),
                ops.activation_forward(xs, "silu", pre),
                ops.activation_backward(x, gs, "silu"),
            ),
            lambda: (
                torch.nn.functional.silu(x_t),
                torch.ops.aten.silu_backward(gy_t, x_t),
            ),
        ),
        (
            f"relu bwd [{rows},{width}]",
            lambda: (np.copyto(gs, gy), ops.activation_backward(x, gs, "relu")),
            lambda: torch.ops.aten.threshold_backward(gy_t, x_t, 0.0),
        ),
        (
            f"linear_backward dW+db [{rows},{width}]->{width}",
            lambda: ops.linear_backward(x, w, gy, dw=dw, db=db, need_dx=False),
            lambda: (x_t.t() @ gy_t, gy_t.sum(0)),
        ),
    ]


def run_elementwise(samples: int) -> list[str]:
    lines = [
        "",
        "| op | ours us | torch us | torch / ours |",
        "|---|---:|---:|---:|",
    ]
    for label, ours, theirs in elementwise_candidates():
        reps = 50
        for f in (ours, theirs):
            f()
        times = {0: [], 1: []}
        for _ in range(samples):
            for i, f in enumerate((ours, theirs)):
                t0 = time.perf_counter()
                for _ in range(reps):
                    f()
                times[i].append((time.perf_counter() - t0) / reps)
        a, b = statistics.median(times[0]), statistics.median(times[1])
        lines.append(f"| {label} | {a * 1e6:.2f} | {b * 1e6:.2f} | {b / a:.2f} |")
        print(lines[-1], flush=True)
    return lines


def run(quick: bool) -> str:
    torch.set_num_threads(1)
    samples = 7 if quick else 15
    canary_before = canary_gflops(threads=1)
    overhead = torch_call_overhead()
    lines = [
        f"sgemm kernel: {ops.sgemm_kernel_name()}, "
        f"sgemm_bf16 kernel: {ops.sgemm_bf16_kernel_name()}; "
        f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), 1 thread; "
        f"{platform.processor() or platform.machine()}",
        f"torch.mm call overhead (1x1x1): {overhead * 1e6:.2f} us",
        "",
        "| shape | form | m x n x k | precision | ours native us | GFLOP/s | ours python us "
        "| torch us | GFLOP/s | torch / ours (native) | torch / ours (python) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for bf16 in (False, True):
        for label, form, m, n, k in SHAPES:
            med = measure(form, m, n, k, bf16, samples)
            flop = 2.0 * m * n * k
            nat, py, tt = med["ours (native loop)"], med["ours (python loop)"], med["torch"]
            prec = "bf16" if bf16 else "f32"
            lines.append(
                f"| {label} | {form} | {m}x{n}x{k} | {prec} | {nat * 1e6:.2f} "
                f"| {flop / nat / 1e9:.0f} | {py * 1e6:.2f} | {tt * 1e6:.2f} "
                f"| {flop / tt / 1e9:.0f} | {tt / nat:.2f} | {tt / py:.2f} |"
            )
            print(lines[-1], flush=True)
    lines += run_elementwise(samples)
    canary_after = canary_gflops(threads=1)
    lines.append("")
    lines.append(
        "canary (torch.bmm [7,1024,512]@[7,512,512], 1 thread): "
        f"{canary_before:.0f} GFLOP/s before, {canary_after:.0f} after"
    )
    return "\n".join(lines)


def main() -> None:
    if ops is None:
        raise SystemExit("mbpo_fast._C is not built (see README: developer build)")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="7 samples instead of 15")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    table = run(args.quick)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


# ---------------------------------------------------------------------------- pytest-benchmark

_BENCH_NAMES = ("SAC hidden fwd", "SAC actor head fwd (n=6)", "ens head fwd (n=24)")
_BENCH_SHAPES = [s for s in SHAPES if s[0] in _BENCH_NAMES]


@pytest.fixture(scope="module")
def one_thread():
    if ops is None:
        pytest.skip("native extension not built")
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.mark.parametrize("bf16", [False, True], ids=["f32", "bf16"])
@pytest.mark.parametrize("who", ["ours (native loop)", "torch"])
@pytest.mark.parametrize("shape", _BENCH_SHAPES, ids=lambda s: s[0])
def test_gemm(benchmark, one_thread, shape, who, bf16):
    _, form, m, n, k = shape
    benchmark(candidates(form, m, n, k, bf16, reps=10)[who])


if __name__ == "__main__":
    main()
