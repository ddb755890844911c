"""Compares MBPO runs, several seeds per environment, with a published learning curve.

::

    mbpo-fast compare runs/hopper-s0 runs/hopper-s1 runs/hopper-s2 \\
        --reference mbpo_official_curves.csv --out hopper.png --window 115000:125000

    from mbpo_fast import compare
    result = compare.compare(["runs/hopper-s0", "runs/hopper-s1"], "curves.csv")
    print(compare.format_markdown(result))
    compare.plot(result[0], "hopper.png")

A run is a directory written by ``mbpo-fast train``: ``config.json`` gives the environment
(``env_id``) and the ``seed``, ``progress.csv`` one row per evaluation (``env_steps``,
``eval_return_mean``, ...). Runs are grouped by environment; within a group every seed counts
once (two runs of one environment with the same seed are an error: averaging a seed twice
would understate the spread).

Conventions, the same on both sides:

- x axis: env steps INCLUDING the random phase. ``env_steps`` in ``progress.csv`` counts
  every real step from the first random one, and so does the reference (MBPO's logger
  counts its 5,000 random steps; its small offsets such as 6,019 are the logger's own).
- Each run and the reference are interpolated linearly onto one grid (multiples of
  ``every``, plus the longest run's last evaluation), never extrapolated: a grid point
  outside a run's first..last evaluation has no value for that run, so runs that stop early
  drop out of later points and the number of seeds ``n`` is reported per point.
- Across seeds: mean, and sd with ddof=1 (undefined for a single seed). The z-score is
  (seed mean - published mean) / published sd: how many published (across-seed) sds the
  seed mean lies from the published mean.
- Window averages (``windows``, e.g. 115,000..125,000): per seed, the mean of its own
  evaluations with lo <= env_steps <= hi (only seeds whose evaluations span the whole window
  count); the reference is interpolated at the same evaluation steps and averaged (mean and
  sd alike), so both sides average the same x positions.

The reference file is a CSV with columns ``env, step, return_mean, return_std`` (see
``shared/reference/mbpo_official_curves``); a gymnasium id maps to the reference task of the
same name without its version suffix (``Hopper-v5`` -> ``Hopper``). Environments without a
reference curve are still tabled, without the reference columns.

Nothing here imports matplotlib until :func:`plot` is called.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "ReferenceCurve", "Run", "TableRow", "WindowSummary", "EnvComparison",
    "load_run", "load_reference", "reference_task", "group_runs", "interpolate",
    "parse_window", "compare_env", "compare", "config_differences", "format_markdown", "plot",
    "plot_paths",
]

PathLike = str | Path

#: MBPO's published curves (Janner et al. 2019; mean and sd over seeds per evaluation step),
#: shipped with the package; where they come from: ``data/mbpo_official_curves.md``.
MBPO_REFERENCE = Path(__file__).resolve().parent / "data" / "mbpo_official_curves.csv"

#: Columns ``load_reference`` needs in the reference CSV.
REFERENCE_COLUMNS = ("env", "step", "return_mean", "return_std")
#: Columns ``load_run`` needs in ``progress.csv``.
RUN_COLUMNS = ("env_steps", "eval_return_mean")


@dataclass(frozen=True)
class Run:
    """One training run: its config and its evaluation curve.

    ``steps`` float64 [rows], strictly increasing env steps (random phase included);
    ``returns`` float64 [rows], the mean deterministic evaluation return at each step.
    """

    path: Path
    env_id: str
    seed: int
    config: dict
    steps: np.ndarray
    returns: np.ndarray


@dataclass(frozen=True)
class ReferenceCurve:
    """A published curve of one task: float64 [points] ``steps`` (strictly increasing),
    ``mean`` and ``sd`` (across the paper's seeds) at each step."""

    task: str
    steps: np.ndarray
    mean: np.ndarray
    sd: np.ndarray


@dataclass(frozen=True)
class TableRow:
    """One grid point. ``per_seed`` float64 [seeds] (NaN where a run does not reach it);
    ``sd`` is NaN for n < 2, the reference fields are NaN without a reference there."""

    step: int
    n: int
    per_seed: np.ndarray
    mean: float
    sd: float
    ref_mean: float
    ref_sd: float
    z: float


@dataclass(frozen=True)
class WindowSummary:
    """Averages over lo <= env_steps <= hi.

    ``per_seed``: seed -> (mean of its evaluations in the window, number of evaluations) for
    the seeds whose evaluations span the window; ``excluded``: seed -> why it does not count.
    ``mean``/``sd`` across the counted seeds (sd NaN for n < 2); ``ref_mean``/``ref_sd``: the
    reference interpolated at the counted seeds' evaluation steps in the window and averaged
    (NaN if the reference does not cover them all); ``ref_points``: how many steps that is.
    """

    lo: int
    hi: int
    per_seed: dict[int, tuple[float, int]]
    excluded: dict[int, str]
    n: int
    mean: float
    sd: float
    ref_mean: float
    ref_sd: float
    ref_points: int
    z: float


@dataclass(frozen=True)
class EnvComparison:
    """All runs of one environment against its reference curve (``reference`` None when the
    reference file has no curve for it, or no reference file was given)."""

    env_id: str
    runs: list[Run]
    reference: ReferenceCurve | None
    every: int
    rows: list[TableRow]
    windows: list[WindowSummary] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]


# ---------------------------------------------------------------- loading


def _float(text: str | None, where: str, column: str) -> float:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: column {column!r} is not a number: {text!r}") from None


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:  # a directory, no permission, binary data
        raise ValueError(f"{path}: not a readable CSV file ({exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [c for c in required if c not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {list(required)} "
                         f"in the header, got {header}")
    rows = list(reader)
    if not rows:
        raise ValueError(f"{path}: no data rows")
    return rows


def load_run(path: PathLike) -> Run:
    """Reads ``config.json`` and ``progress.csv`` of a run directory.

    Raises FileNotFoundError when the directory or one of the files is missing, ValueError
    when a file is garbled (unparsable JSON, no ``env_id``/``seed``, missing columns,
    non-numeric or non-finite values, env steps not strictly increasing, no rows).
    """
    run = Path(path)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run} does not exist"
                                if not run.exists() else f"{run} is not a directory")
    config_path = run / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run}: no config.json (not a run directory of mbpo-fast "
                                "train?)")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{config_path}: not readable JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
    env_id, seed = config.get("env_id"), config.get("seed")
    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"{config_path}: 'env_id' must be a non-empty string, got {env_id!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"{config_path}: 'seed' must be an integer, got {seed!r}")
    progress = run / "progress.csv"
    if not progress.is_file():
        raise FileNotFoundError(f"{run}: no progress.csv (no evaluation logged yet?)")
    rows = _read_csv(progress, RUN_COLUMNS)
    steps = np.empty(len(rows))
    returns = np.empty(len(rows))
    for i, r in enumerate(rows):
        where = f"{progress} line {i + 2}"
        steps[i] = _float(r["env_steps"], where, "env_steps")
        returns[i] = _float(r["eval_return_mean"], where, "eval_return_mean")
        if not (math.isfinite(steps[i]) and math.isfinite(returns[i])):
            raise ValueError(f"{where}: env_steps and eval_return_mean must be finite, got "
                             f"{r['env_steps']!r}, {r['eval_return_mean']!r}")
    if np.any(np.diff(steps) <= 0):
        i = int(np.argmax(np.diff(steps) <= 0))
        raise ValueError(f"{progress}: env_steps must be strictly increasing, got "
                         f"{steps[i]:g} then {steps[i + 1]:g} (lines {i + 2}, {i + 3})")
    return Run(run, env_id, seed, config, steps, returns)


def load_reference(path: PathLike) -> dict[str, ReferenceCurve]:
    """Reads a reference CSV (columns ``env, step, return_mean, return_std``, one row per
    evaluation); returns task name -> curve, each sorted by step.

    Raises FileNotFoundError for a missing file, ValueError for a garbled one (missing
    columns, non-numeric or non-finite values, a negative sd, a step repeated within a task).
    """
    path = Path(path)
    rows = _read_csv(path, REFERENCE_COLUMNS)
    points: dict[str, list[tuple[float, float, float]]] = {}
    for i, r in enumerate(rows):
        where = f"{path} line {i + 2}"
        task = (r["env"] or "").strip()
        if not task:
            raise ValueError(f"{where}: empty 'env'")
        values = tuple(_float(r[c], where, c) for c in ("step", "return_mean", "return_std"))
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"{where}: values must be finite, got {values}")
        if values[2] < 0:
            raise ValueError(f"{where}: return_std must be >= 0, got {values[2]:g}")
        points.setdefault(task, []).append(values)  # type: ignore[arg-type]
    curves = {}
    for task, pts in points.items():
        a = np.array(sorted(pts), dtype=np.float64)
        if np.any(np.diff(a[:, 0]) == 0):
            dup = a[1:, 0][np.diff(a[:, 0]) == 0][0]
            raise ValueError(f"{path}: task {task!r} has step {dup:g} more than once")
        curves[task] = ReferenceCurve(task, a[:, 0].copy(), a[:, 1].copy(), a[:, 2].copy())
    return curves


def reference_task(env_id: str) -> str:
    """The reference's task name of a gymnasium id: the id without its version suffix
    (``Hopper-v5`` -> ``Hopper``, ``Walker2d-v5`` -> ``Walker2d``)."""
    return re.sub(r"-v\d+$", "", env_id)


def group_runs(runs: Iterable[Run]) -> dict[str, list[Run]]:
    """Groups runs by ``env_id`` (in order of first appearance), each sorted by seed.

    Raises ValueError when two runs of one environment have the same seed.
    """
    groups: dict[str, list[Run]] = {}
    for run in runs:
        group = groups.setdefault(run.env_id, [])
        twin = next((r for r in group if r.seed == run.seed), None)
        if twin is not None:
            raise ValueError(f"{twin.path} and {run.path} are both {run.env_id} seed "
                             f"{run.seed}; pass each seed once")
        group.append(run)
    return {env: sorted(g, key=lambda r: r.seed) for env, g in groups.items()}


# ---------------------------------------------------------------- statistics


def interpolate(steps: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Linear interpolation of a curve (float64 [k] steps, strictly increasing, and values)
    at float64 [m] points; NaN outside steps[0]..steps[-1] (never extrapolated)."""
    at = np.asarray(at, dtype=np.float64)
    out = np.interp(at, steps, values)
    out[(at < steps[0]) | (at > steps[-1])] = np.nan
    return out


def _mean_sd(values: np.ndarray) -> tuple[int, float, float]:
    """(n, mean, sd with ddof=1) of the finite entries of float64 [k]; NaN mean for n = 0,
    NaN sd for n < 2."""
    mean, sd = _column_mean_sd(values.reshape(-1, 1))
    return int(np.isfinite(values).sum()), float(mean[0]), float(sd[0])


def _column_mean_sd(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of float64 [seeds, points] (NaN = no value): mean and sd (ddof=1) of the
    finite entries; NaN where there are fewer than 1 (mean) or 2 (sd)."""
    ok = np.isfinite(values)
    n = ok.sum(axis=0)
    filled = np.where(ok, values, 0.0)
    mean = np.divide(filled.sum(axis=0), n, out=np.full(n.shape, np.nan), where=n >= 1)
    sq = np.where(ok, (values - mean) ** 2, 0.0).sum(axis=0)
    sd = np.sqrt(np.divide(sq, n - 1, out=np.full(n.shape, np.nan), where=n >= 2))
    return mean, sd


def _z(mean: float, ref_mean: float, ref_sd: float) -> float:
    if not (math.isfinite(mean) and math.isfinite(ref_mean)) or not ref_sd > 0:
        return math.nan
    return (mean - ref_mean) / ref_sd


def parse_window(text: str) -> tuple[int, int]:
    """``"115000:125000"`` -> (115000, 125000); ValueError unless 0 <= lo <= hi."""
    lo_text, sep, hi_text = text.partition(":")
    try:
        if not sep:
            raise ValueError
        lo, hi = int(lo_text.replace("_", "")), int(hi_text.replace("_", ""))
    except ValueError:
        raise ValueError(f"window must be LO:HI in env steps (e.g. 115000:125000), got "
                         f"{text!r}") from None
    if not 0 <= lo <= hi:
        raise ValueError(f"window must satisfy 0 <= LO <= HI, got {text!r}")
    return lo, hi


def _window(runs: Sequence[Run], ref: ReferenceCurve | None, lo: int, hi: int) -> WindowSummary:
    per_seed: dict[int, tuple[float, int]] = {}
    excluded: dict[int, str] = {}
    eval_steps: set[float] = set()
    for run in runs:
        if run.steps[0] > lo or run.steps[-1] < hi:
            # A seed cut short inside the window would average only its early evaluations.
            excluded[run.seed] = (f"evaluations span {run.steps[0]:.0f}..{run.steps[-1]:.0f}, "
                                  "not the whole window")
            continue
        inside = (run.steps >= lo) & (run.steps <= hi)
        if not inside.any():
            excluded[run.seed] = "no evaluation inside the window"
            continue
        per_seed[run.seed] = (float(run.returns[inside].mean()), int(inside.sum()))
        eval_steps.update(run.steps[inside].tolist())
    n, mean, sd = _mean_sd(np.array([m for m, _ in per_seed.values()], dtype=np.float64))
    ref_mean = ref_sd = math.nan
    at = np.array(sorted(eval_steps), dtype=np.float64)
    if ref is not None and len(at):
        m = interpolate(ref.steps, ref.mean, at)
        s = interpolate(ref.steps, ref.sd, at)
        if np.all(np.isfinite(m)):  # the reference covers every step: same x on both sides
            ref_mean, ref_sd = float(m.mean()), float(s.mean())
    return WindowSummary(lo, hi, per_seed, excluded, n, mean, sd, ref_mean, ref_sd, len(at),
                         _z(mean, ref_mean, ref_sd))


def compare_env(runs: Sequence[Run], reference: ReferenceCurve | None, every: int = 10_000,
                windows: Sequence[tuple[int, int]] = ()) -> EnvComparison:
    """Tables the runs of ONE environment every `every` env steps against `reference`.

    Grid: every multiple of `every` from `every` up to the last evaluation of the longest
    run, and that last evaluation itself (e.g. 125,000 with every = 10,000); points no run
    reaches (n = 0) are left out.
    """
    if not runs:
        raise ValueError("runs must hold at least one run")
    envs = {r.env_id for r in runs}
    if len(envs) != 1:
        raise ValueError(f"runs must be of one environment, got {sorted(envs)}")
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise ValueError(f"every must be a positive integer number of env steps, got {every!r}")
    for lo, hi in windows:
        if not 0 <= lo <= hi:
            raise ValueError(f"windows must be (lo, hi) with 0 <= lo <= hi, got ({lo}, {hi})")
    last = max(r.steps[-1] for r in runs)
    grid = np.arange(every, last + 1, every, dtype=np.float64)
    if not len(grid) or grid[-1] != last:
        grid = np.append(grid, last)
    per_seed = np.stack([interpolate(r.steps, r.returns, grid) for r in runs])
    if reference is not None:
        ref_mean = interpolate(reference.steps, reference.mean, grid)
        ref_sd = interpolate(reference.steps, reference.sd, grid)
    else:
        ref_mean = ref_sd = np.full(len(grid), np.nan)
    rows = []
    for j, step in enumerate(grid):
        n, mean, sd = _mean_sd(per_seed[:, j])
        if n == 0:
            continue
        rows.append(TableRow(int(step), n, per_seed[:, j].copy(), mean, sd, float(ref_mean[j]),
                             float(ref_sd[j]), _z(mean, float(ref_mean[j]), float(ref_sd[j]))))
    return EnvComparison(runs[0].env_id, list(runs), reference, int(every), rows,
                         [_window(runs, reference, lo, hi) for lo, hi in windows])


def compare(run_dirs: Sequence[PathLike], reference: PathLike | None = None,
            every: int = 10_000, windows: Sequence[tuple[int, int]] = ()) -> list[EnvComparison]:
    """Loads `run_dirs` (and the `reference` CSV, if given), groups them by environment and
    compares each group; one :class:`EnvComparison` per environment, in order of first
    appearance. Raises FileNotFoundError / ValueError as :func:`load_run` and
    :func:`load_reference` do."""
    if not run_dirs:
        raise ValueError("give at least one run directory")
    curves = load_reference(reference) if reference is not None else {}
    groups = group_runs(load_run(d) for d in run_dirs)
    return [compare_env(runs, curves.get(reference_task(env)), every, windows)
            for env, runs in groups.items()]


# ---------------------------------------------------------------- output


def _fmt(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else ""


def _eval_convention(runs: Sequence[Run]) -> str:
    """"5 deterministic episodes every 1000 env steps", or the list when runs differ."""
    kinds = sorted({(r.config.get("eval_episodes"), r.config.get("eval_freq")) for r in runs},
                   key=str)
    parts = [f"{'?' if ep is None else ep} deterministic episodes every "
             f"{'?' if freq is None else freq} env steps" for ep, freq in kinds]
    return " / ".join(parts) + (" (differs between seeds)" if len(parts) > 1 else "")


def _random_steps(runs: Sequence[Run]) -> str:
    values = sorted({r.config.get("init_random_steps") for r in runs}, key=str)
    return "/".join("?" if v is None else f"{v:,}" for v in values)


#: config keys that legitimately differ between the seeds of one comparison
_PER_RUN_KEYS = {"seed", "logdir", "total_steps", "device", "checkpoint_freq"}


#: config keys that older versions of the library did not write, with the behaviour those
#: versions had (the feature did not exist yet): a run without the key ran that way. (No
#: entry for "trainer": the versions before it trained with torch, which is not the default.)
_ABSENT_MEANS = {"termination": "builtin", "max_disagreement": None, "uncertainty_penalty": 0.0,
                 "autocast_bf16": False}


def _config_value(run: Run, key: str):
    return run.config[key] if key in run.config else _ABSENT_MEANS.get(key)


def config_differences(runs: Sequence[Run]) -> dict[str, list]:
    """Config keys (other than seed, logdir, total_steps, device, checkpoint_freq) whose
    values differ between `runs`: key -> the value of each run, in order. A key that an
    older version did not write counts as that version's behaviour (``_ABSENT_MEANS``:
    no ``termination`` key = the built-in termination), otherwise as None."""
    keys = sorted(set().union(*(r.config for r in runs)) - _PER_RUN_KEYS)
    return {k: [_config_value(r, k) for r in runs] for k in keys
            if len({json.dumps(_config_value(r, k), sort_keys=True) for r in runs}) > 1}


def _markdown_env(c: EnvComparison) -> str:
    ref = c.reference
    seeds = ", ".join(str(s) for s in c.seeds)
    out = [f"### {c.env_id}: {len(c.runs)} seed{'s' if len(c.runs) > 1 else ''} ({seeds})", ""]
    out.append("Runs: " + ", ".join(f"`{r.path}` (seed {r.seed}, last evaluation at "
                                    f"{r.steps[-1]:.0f})" for r in c.runs) + ".")
    out.append(f"x: env steps including the random phase ({_random_steps(c.runs)} random "
               f"steps here); our evaluation: {_eval_convention(c.runs)}, per seed the mean "
               "return, linearly interpolated onto the grid, never extrapolated.")
    if ref is not None:
        out.append(f"Reference: `{ref.task}`, one deterministic episode per evaluation, "
                   "mean ± sd over the paper's seeds, interpolated likewise; "
                   "z = (seed mean − published mean) / published sd.")
    else:
        out.append(f"Reference: none for `{reference_task(c.env_id)}`.")
    diffs = config_differences(c.runs)
    if diffs:
        out.append("**Configs differ between seeds**: " + "; ".join(
            f"{k} = {', '.join(json.dumps(v) for v in vals)}" for k, vals in diffs.items()))
    out.append("")
    if c.rows:  # (always: the longest run's last evaluation is a grid point)
        head = ["env steps", "n", f"seeds ({seeds})", "seed mean", "sd"]
        if ref is not None:
            head += ["published mean ± sd", "z"]
        out += ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
        for r in c.rows:
            cells = [str(r.step), str(r.n), " / ".join(_fmt(v) or "–" for v in r.per_seed),
                     _fmt(r.mean), _fmt(r.sd)]
            if ref is not None:
                cells += [f"{r.ref_mean:.1f} ± {r.ref_sd:.1f}" if math.isfinite(r.ref_mean)
                          else "", _fmt(r.z, 2)]
            out.append("| " + " | ".join(cells) + " |")
    for w in c.windows:
        title = f"Average over {w.lo}–{w.hi} env steps"
        if w.n == 0:
            out += ["", f"{title}: no seed spans the window (" + "; ".join(
                f"seed {s}: {why}" for s, why in w.excluded.items()) + ")."]
            continue
        out += ["", f"{title} (each seed: the mean of its evaluations in the window):", ""]
        head = ["seeds counted", "per seed (evaluations)", "seed mean", "sd"]
        if ref is not None:
            head += ["published mean ± sd", "published mean − sd", "z"]
        cells = [str(w.n), "; ".join(f"{s}: {m:.1f} ({k})" for s, (m, k) in w.per_seed.items())
                 or "–", _fmt(w.mean), _fmt(w.sd)]
        if ref is not None:
            covered = math.isfinite(w.ref_mean)
            cells += [f"{w.ref_mean:.1f} ± {w.ref_sd:.1f} ({w.ref_points} steps)" if covered
                      else "not covered", _fmt(w.ref_mean - w.ref_sd), _fmt(w.z, 2)]
        out += ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head),
                "| " + " | ".join(cells) + " |"]
        for s, why in w.excluded.items():
            out.append(f"\nSeed {s} not counted: {why}.")
    return "\n".join(out)


def format_markdown(comparisons: Sequence[EnvComparison]) -> str:
    """Markdown: per environment a header, the conventions, the grid table and the window
    averages."""
    return "\n\n".join(_markdown_env(c) for c in comparisons) + "\n"


def plot_paths(out: PathLike, env_ids: Sequence[str]) -> dict[str, Path]:
    """Where :func:`plot` writes each environment's PNG for ``--out OUT``: OUT itself for
    one environment; ``<OUT stem>-<env id><suffix>`` beside it for several; inside OUT,
    ``<env id>.png``, when OUT is an existing directory or ends with a slash."""
    out_text = str(out)
    out = Path(out)
    if out.is_dir() or out_text.endswith(("/", "\\")):
        return {e: out / f"{e}.png" for e in env_ids}
    if len(env_ids) == 1:
        return {env_ids[0]: out}
    return {e: out.with_name(f"{out.stem}-{e}{out.suffix or '.png'}") for e in env_ids}


def plot(c: EnvComparison, path: PathLike) -> Path:
    """Draws one environment: each seed thin, the seed mean ± sd band (where n >= 2; dashed
    where fewer seeds than the most remain), the published mean ± sd band; writes a PNG."""
    from .plotting import figure, save_png

    path = Path(path)
    last = max(r.steps[-1] for r in c.runs)
    fig = figure((8, 5.4), 110)  # ImportError without matplotlib
    from matplotlib import colormaps

    ax = fig.add_subplot()
    colors = colormaps["tab10"]
    single = len(c.runs) == 1  # then the seed is the whole estimate: draw it boldly
    for i, r in enumerate(c.runs):
        ax.plot(r.steps, r.returns, lw=1.5 if single else 0.8, alpha=1.0 if single else 0.6,
                color="black" if single else colors(i % 10), marker="o" if single else None,
                ms=2.5, label=f"seed {r.seed}")
    # The band uses every evaluation step of any seed, not just the table's coarse grid.
    x = np.array(sorted(set().union(*(r.steps.tolist() for r in c.runs))), dtype=np.float64)
    values = np.stack([interpolate(r.steps, r.returns, x) for r in c.runs])
    n = np.isfinite(values).sum(axis=0)
    if len(c.runs) >= 2 and np.any(n >= 2):
        mean, sd = _column_mean_sd(values)
        full = n == n.max()
        mean_full = np.where(full & (n >= 2), mean, np.nan)
        # Where seeds have dropped out the mean is over fewer seeds: dashed, joined to the
        # last full point so the line stays continuous.
        fewer = (~full) & (n >= 2)
        partial_mask = fewer.copy()
        partial_mask[:-1] |= full[:-1] & fewer[1:]
        mean_partial = np.where(partial_mask, mean, np.nan)
        ax.plot(x, mean_full, color="black", lw=2,
                label=f"seed mean ± sd (n = {n.max()})")
        if partial_mask.any():
            ax.plot(x, mean_partial, color="black", lw=1.5, ls="--",
                    label="seed mean ± sd (fewer seeds)")
        ax.fill_between(x, mean - sd, mean + sd, where=n >= 2, color="black", alpha=0.15,
                        lw=0)
    ref = c.reference
    if ref is not None:
        # Reference points up to the first one past our last evaluation: the published curve
        # beyond our runs would only rescale the plot.
        k = int(np.searchsorted(ref.steps, last, side="left")) + 1
        rs, rm, rsd = ref.steps[:k], ref.mean[:k], ref.sd[:k]
        ax.plot(rs, rm, color="tab:red", lw=1.5, label=f"published MBPO {ref.task} mean ± sd")
        ax.fill_between(rs, rm - rsd, rm + rsd, color="tab:red", alpha=0.15, lw=0)
    ax.set_xlim(0, last * 1.02)
    ax.set_xlabel(f"env steps, random phase included (ours: {_random_steps(c.runs)} random "
                  "steps)")
    ax.set_ylabel("evaluation return")
    ax.set_title(f"MBPO {c.env_id}: {len(c.runs)} seed{'s' if len(c.runs) > 1 else ''}"
                 + (f" vs published {ref.task} (v2)" if ref is not None else ""))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    caption = f"ours: {_eval_convention(c.runs)}, mean return per seed; sd across seeds (ddof=1)"
    if ref is not None:
        caption += ("\nreference: one deterministic episode per 1,000-step epoch, "
                    "mean ± sd over the paper's seeds (Janner et al. 2019)")
    fig.text(0.01, 0.01, caption, fontsize=7.5, va="bottom", ha="left")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    save_png(fig, path)
    return path
