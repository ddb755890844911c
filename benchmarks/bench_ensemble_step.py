"""Ensemble model step: fused native op vs two torch references (Hopper sizes).

Sizes: obs 11, act 3 (in 14), out 24 = 2 * (11 + 1), E = 7 members, 5 elites, 4 x 200
SiLU, float32, 2 threads (torch and native). The chosen-member work is 255.2 kFLOP/row.

The native step also runs with opt-in bf16 weights (AMX tiles where available).

References, written here as the popular PyTorch MBPO code bases do it:
  (a) "all members": every member on every row (one baddbmm per layer over [E, B, in]),
      then pick each row's member and sample — the original MBPO way;
  (b) "split rows": rows permuted and split into K = 5 equal groups (padded), one per
      elite, one batched matmul per layer over [K, B/K, in] with the elite weights gathered
      per call — the mbrl-lib way; (b4k) the same in 4,096-row chunks (activations stay
      in cache).

Run (writes benchmarks/RESULTS_ensemble_step.md):
    PYTHONPATH=. python benchmarks/bench_ensemble_step.py
or with pytest-benchmark (per-implementation timings, no ratios):
    PYTHONPATH=. pytest benchmarks/bench_ensemble_step.py --benchmark-only
"""

from __future__ import annotations

# First, as in a user's program: importing mbpo_fast sets how long torch's idle OpenMP
# workers spin before torch starts (mbpo_fast/_openmp.py). No tuning variable is set here.
import mbpo_fast  # noqa: F401

# isort: split

# Measured in the environment a user has: no OpenMP tuning variable is set here; importing
# mbpo_fast first applies the library's own (mbpo_fast/_openmp.py). Runs recorded before
# 2026-12-04 set GOMP_SPINCOUNT=20000 in the benchmark itself.
import math  # noqa: E402
import os
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mbpo_fast import _backend  # noqa: E402
from mbpo_fast.ensemble_infer import EnsembleInference  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _canary import canary_gflops  # noqa: E402

OBS, ACT, E, K, HIDDEN, LAYERS = 11, 3, 7, 5, 200, 4
THREADS = 2
SETTLE_S = 0.002  # untimed pause before each candidate's samples (see compare())
BATCHES = (1, 32, 256, 4096, 100_000)
WIDTHS = [OBS + ACT] + [HIDDEN] * LAYERS + [2 * (OBS + 1)]
FLOP_PER_ROW = 2 * sum(WIDTHS[i] * WIDTHS[i + 1] for i in range(len(WIDTHS) - 1))


# ---------------------------------------------------------------------------- model


class TorchEnsemble:
    """The model as torch tensors (the parameters EnsembleInference borrows)."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.weights, self.biases = [], []
        for i in range(len(WIDTHS) - 1):
            std = 1.0 / (2.0 * math.sqrt(WIDTHS[i]))
            w = torch.empty(E, WIDTHS[i], WIDTHS[i + 1])
            torch.nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std, generator=g)
            self.weights.append(w)
            self.biases.append(0.05 * torch.randn(E, WIDTHS[i + 1], generator=g))
        self.input_mean = torch.randn(OBS + ACT, generator=g)
        self.input_std = 0.5 + torch.rand(OBS + ACT, generator=g)
        self.max_logvar = 0.5 * torch.ones(OBS + 1)
        self.min_logvar = -10.0 * torch.ones(OBS + 1)
        self.elites = torch.tensor([0, 2, 3, 5, 6])

    def infer(self) -> EnsembleInference:
        return EnsembleInference(
            OBS,
            ACT,
            self.input_mean,
            self.input_std,
            self.weights,
            self.biases,
            self.max_logvar,
            self.min_logvar,
            self.elites.numpy().astype(np.int64),
        )

    def _head(self, h: torch.Tensor, weights, biases):
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            h = torch.baddbmm(b.unsqueeze(1), h, w)
            if i < len(weights) - 1:
                h = torch.nn.functional.silu(h)
        mean, raw = h[..., : OBS + 1], h[..., OBS + 1 :]
        lv = self.max_logvar - torch.nn.functional.softplus(self.max_logvar - raw)
        lv = self.min_logvar + torch.nn.functional.softplus(lv - self.min_logvar)
        return mean, lv

    def _sample(self, obs, mean, lv):
        out = mean + torch.exp(0.5 * lv) * torch.randn_like(mean)
        return obs + out[:, :OBS], out[:, OBS]

    @torch.inference_mode()
    def step_all_members(self, obs: np.ndarray, act: np.ndarray):
        """(a) every member on every row, then pick one member per row."""
        obs_t, act_t = torch.from_numpy(obs), torch.from_numpy(act)
        x = (torch.cat([obs_t, act_t], dim=1) - self.input_mean) / self.input_std
        mean, lv = self._head(x.unsqueeze(0).expand(E, -1, -1), self.weights, self.biases)
        rows = torch.arange(x.shape[0])
        member = self.elites[torch.randint(K, (x.shape[0],))]
        return self._sample(obs_t, mean[member, rows], lv[member, rows])

    @torch.inference_mode()
    def step_split_rows(self, obs: np.ndarray, act: np.ndarray, chunk: int | None = None):
        """(b) rows permuted and split into K groups, one batched matmul per layer."""
        obs_t, act_t = torch.from_numpy(obs), torch.from_numpy(act)
        batch = obs_t.shape[0]
        w = [wi[self.elites] for wi in self.weights]  # elite weights gathered per call
        b = [bi[self.elites] for bi in self.biases]
        chunk = chunk or batch
        next_obs = torch.empty_like(obs_t)
        rew = torch.empty(batch)
        for start in range(0, batch, chunk):
            o, a = obs_t[start : start + chunk], act_t[start : start + chunk]
            n = o.shape[0]
            g = -(-n // K)
            perm = torch.randperm(n)
            x = (torch.cat([o, a], dim=1) - self.input_mean) / self.input_std
            xp = torch.zeros(K * g, x.shape[1])
            xp[:n] = x[perm]
            mean, lv = self._head(xp.view(K, g, -1), w, b)
            mean, lv = mean.reshape(K * g, -1)[:n], lv.reshape(K * g, -1)[:n]
            no, r = self._sample(o[perm], mean, lv)
            next_obs[start + perm] = no
            rew[start + perm] = r
        return next_obs, rew


def _inputs(batch: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((batch, OBS)).astype(np.float32),
        rng.standard_normal((batch, ACT)).astype(np.float32),
    )




def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _setup_threads() -> None:
    torch.set_num_threads(THREADS)
    _backend.ops.set_num_threads(THREADS)


# ---------------------------------------------------------------------------- script


def compare(
    batch: int,
    model: TorchEnsemble,
    infer: EnsembleInference,
    infer_bf16: EnsembleInference,
    budget_s: float,
) -> dict:
    """Interleaved A/B/C... medians (seconds per call) for one batch size."""
    obs, act = _inputs(batch)
    cands = {
        "native": lambda: infer.step(obs, act, seed=7),
        "native_bf16": lambda: infer_bf16.step(obs, act, seed=7),
        "ref_a": lambda: model.step_all_members(obs, act),
        "ref_b": lambda: model.step_split_rows(obs, act),
    }
    if batch > 4096:
        cands["ref_b4k"] = lambda: model.step_split_rows(obs, act, chunk=4096)
    for fn in cands.values():  # warm up (allocations, thread pools, caches)
        fn()
        fn()
    one = max(_time(fn) for fn in cands.values())
    inner = max(1, int(0.002 / max(one, 1e-7)))  # ~2 ms per timed sample at small B
    rounds = max(5, min(200, int(budget_s / (len(cands) * (one * (inner + 1) + SETTLE_S)))))
    times: dict[str, list[float]] = {k: [] for k in cands}
    for _ in range(rounds):
        for name, fn in cands.items():
            # A short pause, then one untimed call: together they absorb the hand-over from
            # the previous candidate, so each sample measures the candidate's steady-state
            # per-call cost. The pause lets torch's OpenMP workers, which keep spinning on
            # the second core for ~0.5-2 ms after torch's last parallel region, go to
            # sleep; without it whatever runs next shares that core with a spinner (see
            # RESULTS_ensemble_step.md: +300 µs on the native B = 256 call). The untimed
            # call reloads the candidate's weights into the caches and wakes its threads.
            time.sleep(SETTLE_S)
            fn()
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            times[name].append((time.perf_counter() - t0) / inner)
    return {k: statistics.median(v) for k, v in times.items()}


def _bf16_error(infer: EnsembleInference, infer_bf16: EnsembleInference) -> tuple:
    obs, act = _inputs(4096, seed=3)
    mean, var = infer.predict(obs, act)
    mean16, var16 = infer_bf16.predict(obs, act)
    err = np.abs(mean16 - mean) / np.sqrt(var)
    return float(err.max()), float(np.median(err)), float(np.abs(var16 / var - 1).max())


def _fmt_time(t: float) -> str:
    return f"{t * 1e6:.1f} µs" if t < 1e-3 else f"{t * 1e3:.2f} ms"


def main(path: str | None = None, budget_s: float = 6.0) -> str:
    _setup_threads()
    model = TorchEnsemble()
    infer = model.infer()
    infer_bf16 = model.infer()
    infer_bf16.use_bf16()
    bf16_error = _bf16_error(infer, infer_bf16)
    canary_before = canary_gflops(THREADS)
    results = {b: compare(b, model, infer, infer_bf16, budget_s) for b in BATCHES}
    canary_after = canary_gflops(THREADS)
    lines = [
        "# Ensemble step: fused native op vs torch references",
        "",
        f"Hopper sizes: in {OBS + ACT}, out {2 * (OBS + 1)}, E={E} ({K} elites), "
        f"{LAYERS}x{HIDDEN} SiLU, float32, {THREADS} threads; "
        f"{FLOP_PER_ROW / 1e3:.1f} kFLOP per row for the chosen member. Backend: "
        f"{_backend.name}, kernel: {_backend.ops.ensemble_kernel()}. Medians of interleaved "
        "calls (candidate and references alternate in one process; each timed sample "
        f"follows a {SETTLE_S * 1e3:.0f} ms pause and one untimed call of the same "
        "implementation).",
        "",
        f"torch's OpenMP spin: {mbpo_fast.build_info()['openmp_spin']} (nothing set by the "
        "benchmark; docs/threads.md). "
        f"Large batched matmul (torch bmm 7x1024x512 @ 512x512) in the same run: "
        f"{canary_before:.0f} GFLOP/s before, {canary_after:.0f} GFLOP/s after.",
        "",
        "| B | native step | (a) all members | (b) split rows | (b) 4,096-row chunks "
        "| vs faster ref | vs (b) | vs (b) chunked | native GFLOP/s | (b) GFLOP/s "
        "| bf16 step | bf16 vs float32 | bf16 GFLOP/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b, r in results.items():
        best_ref = min(r["ref_a"], r["ref_b"])
        chunked = r.get("ref_b4k")
        chunk_ratio = f"{chunked / r['native']:.2f}×" if chunked else "—"
        lines.append(
            f"| {b:,} | {_fmt_time(r['native'])} | {_fmt_time(r['ref_a'])} | "
            f"{_fmt_time(r['ref_b'])} | {_fmt_time(chunked) if chunked else '—'} | "
            f"{best_ref / r['native']:.1f}× | {r['ref_b'] / r['native']:.2f}× | "
            f"{chunk_ratio} | "
            f"{b * FLOP_PER_ROW / r['native'] / 1e9:.1f} | "
            f"{b * FLOP_PER_ROW / r['ref_b'] / 1e9:.1f} | "
            f"{_fmt_time(r['native_bf16'])} | {r['native'] / r['native_bf16']:.2f}× | "
            f"{b * FLOP_PER_ROW / r['native_bf16'] / 1e9:.1f} |"
        )
    lines += [
        "",
        "GFLOP/s count only the chosen member's work (255.2 kFLOP/row) for every column;",
        "reference (a) does 7x that arithmetic.",
        "",
        f"bf16 (opt-in `EnsembleInference.use_bf16()`; AMX tiles: "
        f"{_backend.ops.ensemble_bf16_amx()}, AVX512_BF16: {_backend.ops.ensemble_bf16_native()}): "
        f"over 4,096 rows x 7 members, |mean_bf16 - mean_f32| / predicted std is "
        f"{bf16_error[0]:.2g} at most and {bf16_error[1]:.2g} in the median; "
        f"variances differ by {bf16_error[2]:.2g} relative at most.",
        "",
        "Command: `PYTHONPATH=. python benchmarks/bench_ensemble_step.py` "
        "(pytest-benchmark: `pytest benchmarks/bench_ensemble_step.py --benchmark-only`).",
        "",
    ]
    text = "\n".join(lines)
    if path:
        Path(path).write_text(text)
    return text


# ---------------------------------------------------------------------------- pytest-benchmark


@pytest.fixture(scope="module")
def model():
    _setup_threads()
    return TorchEnsemble()


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("impl", ["native", "native_bf16", "ref_a", "ref_b"])
def test_ensemble_step(benchmark, model, batch, impl):
    obs, act = _inputs(batch)
    if impl.startswith("native"):
        infer = model.infer()
        if impl == "native_bf16":
            infer.use_bf16()
        fn = lambda: infer.step(obs, act, seed=7)  # noqa: E731
    elif impl == "ref_a":
        fn = lambda: model.step_all_members(obs, act)  # noqa: E731
    else:
        fn = lambda: model.step_split_rows(obs, act)  # noqa: E731
    benchmark.extra_info["flop_per_row"] = FLOP_PER_ROW
    benchmark.pedantic(fn, rounds=5 if batch >= 4096 else 50, warmup_rounds=1)


if __name__ == "__main__":
    out = Path(__file__).with_name("RESULTS_ensemble_step.md")
    budget = float(os.environ.get("BENCH_BUDGET_S", "6"))
    print(main(str(out) if "--no-write" not in sys.argv else None, budget))
