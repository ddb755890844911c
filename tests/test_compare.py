"""mbpo-fast compare: seeds against a published curve on synthetic runs with known numbers.

The fixture's numbers are chosen so that every table entry is exact:

- reference "Hopper": points at 0, 5k, 15k, 25k, 35k with mean = step / 100 and
  sd = step / 500, so the linear interpolation at 10k/20k/30k is 100 ± 20, 200 ± 40, 300 ± 60;
- Hopper-v5 seed 0 (evaluations every 5k to 30k): 100, 200, 240 at 10k, 20k, 30k;
  seed 1 (every 4k to 32k, return = 0.012 * step, so interpolation is exact): 120, 240, 360;
  seed 2 (every 5k, stops at 20k): 140, 280;
- hence 10k: mean 120, sd 20, z 1; 20k: mean 240, sd 40, z 1; 30k: n 2, mean 300,
  sd 60 * sqrt(2), z 0;
- InvertedPendulum-v5 has no reference curve.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mbpo_fast import cli
from mbpo_fast import compare as cmp
from mbpo_fast.mbpo import PROGRESS_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_run(root: Path, name: str, env_id: str, seed: int, steps, returns,
               **config) -> Path:
    run = root / name
    run.mkdir(parents=True)
    cfg = {"env_id": env_id, "seed": seed, "eval_episodes": 5, "eval_freq": 1000,
           "init_random_steps": 5000, **config}
    (run / "config.json").write_text(json.dumps(cfg))
    with open(run / "progress.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=PROGRESS_COLUMNS)
        w.writeheader()
        for s, r in zip(steps, returns, strict=True):
            row = dict.fromkeys(PROGRESS_COLUMNS, 1.0)  # the other columns are not compared
            row.update(env_steps=s, eval_return_mean=r, eval_return_std=0.0)
            w.writerow(row)
    return run


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    path = tmp_path / "ref.csv"
    lines = ["env,step,return_mean,return_std,time_s"]
    for s in (0, 5000, 15000, 25000, 35000):
        lines.append(f"Hopper,{s},{s / 100},{s / 500},0.0")
    lines.append("Walker2d,0,1.0,0.0,0.0")
    lines.append("Walker2d,7001,300.0,50.0,0.0")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    s0 = np.arange(5000, 30001, 5000)
    s1 = np.arange(4000, 32001, 4000)
    s2 = np.arange(5000, 20001, 5000)
    return {
        # listed out of seed order on purpose: the tool sorts by seed
        "h1": _write_run(tmp_path, "h1", "Hopper-v5", 1, s1, 0.012 * s1),
        "h0": _write_run(tmp_path, "h0", "Hopper-v5", 0, s0, [50, 100, 150, 200, 220, 240]),
        "h2": _write_run(tmp_path, "h2", "Hopper-v5", 2, s2, [70, 140, 210, 280]),
        "ip": _write_run(tmp_path, "ip", "InvertedPendulum-v5", 0, [1000, 2000, 3000],
                         [10.0, 500.0, 1000.0], eval_freq=250, init_random_steps=500),
    }


def _hopper(result: list[cmp.EnvComparison]) -> cmp.EnvComparison:
    return next(c for c in result if c.env_id == "Hopper-v5")


def test_table_numbers_are_exact(runs, reference):
    result = cmp.compare([runs["h1"], runs["ip"], runs["h0"], runs["h2"]], reference)
    assert [c.env_id for c in result] == ["Hopper-v5", "InvertedPendulum-v5"]
    hop = _hopper(result)
    assert hop.seeds == [0, 1, 2]
    assert hop.reference is not None and hop.reference.task == "Hopper"
    got = [(r.step, r.n) for r in hop.rows]
    # multiples of 10k, then the last evaluation of the longest run (seed 1, 32k)
    assert got == [(10000, 3), (20000, 3), (30000, 2), (32000, 1)]
    expect = [  # mean, sd, ref mean, ref sd, z
        (120.0, 20.0, 100.0, 20.0, 1.0),
        (240.0, 40.0, 200.0, 40.0, 1.0),
        (300.0, 60.0 * math.sqrt(2.0), 300.0, 60.0, 0.0),
    ]
    for row, (mean, sd, rm, rsd, z) in zip(hop.rows[:3], expect, strict=True):
        assert row.mean == pytest.approx(mean, abs=1e-9)
        assert row.sd == pytest.approx(sd, abs=1e-9)
        assert row.ref_mean == pytest.approx(rm, abs=1e-9)
        assert row.ref_sd == pytest.approx(rsd, abs=1e-9)
        assert row.z == pytest.approx(z, abs=1e-9)
    # the early-stopping seed 2 has no value at 30k (no extrapolation past its 20k)
    np.testing.assert_allclose(hop.rows[2].per_seed[:2], [240.0, 360.0])
    assert math.isnan(hop.rows[2].per_seed[2])
    assert hop.rows[3].mean == 384.0 and math.isnan(hop.rows[3].sd)
    assert hop.rows[3].ref_mean == pytest.approx(320.0)


def test_no_extrapolation_before_the_first_evaluation_and_single_seed_sd(runs, reference):
    hop = _hopper(cmp.compare([runs["h0"], runs["h1"], runs["h2"]], reference, every=2000))
    by_step = {r.step: r for r in hop.rows}
    assert 2000 not in by_step  # no seed has evaluated yet: the row is left out
    assert by_step[4000].n == 1 and math.isnan(by_step[4000].sd)  # only seed 1 (first at 4k)
    assert by_step[4000].mean == pytest.approx(48.0)
    assert by_step[6000].n == 3
    # seed 0: between 5k (50) and 10k (100); seed 2: between 5k (70) and 10k (140)
    np.testing.assert_allclose(by_step[6000].per_seed, [60.0, 72.0, 84.0])
    assert by_step[32000].n == 1  # seed 1 alone reaches 32k
    md = cmp.format_markdown([hop])
    line = next(ln for ln in md.splitlines() if ln.startswith("| 4000 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:5] == ["4000", "1", "– / 48.0 / –", "48.0", ""]  # sd blank for n = 1


def test_env_without_reference_is_reported_without_reference_columns(runs, reference):
    result = cmp.compare([runs["ip"]], reference, every=1000)
    (ip,) = result
    assert ip.reference is None
    assert [(r.step, r.n, r.mean) for r in ip.rows] == [(1000, 1, 10.0), (2000, 1, 500.0),
                                                        (3000, 1, 1000.0)]
    assert all(math.isnan(r.ref_mean) and math.isnan(r.z) for r in ip.rows)
    md = cmp.format_markdown(result)
    assert "published" not in md and "Reference: none for `InvertedPendulum`" in md
    assert "5 deterministic episodes every 250 env steps" in md
    assert "500 random steps" in md


def test_without_a_reference_file(runs):
    hop = _hopper(cmp.compare([runs["h0"], runs["h1"]]))
    assert hop.reference is None and hop.rows[0].mean == pytest.approx(110.0)


def test_window_average(runs, reference):
    hop = _hopper(cmp.compare([runs["h0"], runs["h1"], runs["h2"]], reference,
                              windows=[(20000, 30000)]))
    (w,) = hop.windows
    # seed 0: evaluations 200, 220, 240; seed 1: 240, 288, 336 (20k, 24k, 28k)
    assert w.per_seed == {0: (pytest.approx(220.0), 3), 1: (pytest.approx(288.0), 3)}
    assert set(w.excluded) == {2}  # stops at 20k: would average only the window's start
    assert w.n == 2
    assert w.mean == pytest.approx(254.0)
    assert w.sd == pytest.approx(34.0 * math.sqrt(2.0))
    # reference at the counted seeds' evaluation steps 20k, 24k, 25k, 28k, 30k
    assert w.ref_points == 5
    assert w.ref_mean == pytest.approx((200 + 240 + 250 + 280 + 300) / 5)
    assert w.ref_sd == pytest.approx((40 + 48 + 50 + 56 + 60) / 5)
    assert w.z == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match=r"0 <= lo <= hi, got \(30000, 20000\)"):
        cmp.compare([runs["h0"]], reference, windows=[(30000, 20000)])
    with pytest.raises(ValueError, match="every must be a positive integer"):
        cmp.compare([runs["h0"]], reference, every=0)
    md = cmp.format_markdown([hop])
    assert "Average over 20000–30000 env steps" in md
    assert "0: 220.0 (3); 1: 288.0 (3)" in md and "Seed 2 not counted" in md


def test_window_beyond_the_reference_and_beyond_every_run(runs, reference, tmp_path):
    hop = _hopper(cmp.compare([runs["h1"]], reference, windows=[(28000, 32000), (40000, 50000)]))
    covered, none = hop.windows
    assert covered.n == 1 and covered.mean == pytest.approx((336 + 384) / 2)  # 28k, 32k
    assert math.isnan(covered.sd)  # one seed
    assert covered.ref_mean == pytest.approx(300.0) and covered.ref_sd == pytest.approx(60.0)
    assert covered.z == pytest.approx(1.0)
    assert none.n == 0 and math.isnan(none.mean) and math.isnan(none.ref_mean)
    assert "no seed spans the window" in cmp.format_markdown([hop])
    # a run past the reference's last point (35k): the window is not averaged on one side only
    steps = np.arange(1000, 40001, 1000)
    long = _write_run(tmp_path, "long", "Hopper-v5", 7, steps, steps / 100)
    (w,) = _hopper(cmp.compare([long], reference, windows=[(30000, 40000)])).windows
    assert w.mean == pytest.approx(350.0) and math.isnan(w.ref_mean) and math.isnan(w.z)
    md = cmp.format_markdown(cmp.compare([long], reference, windows=[(30000, 40000)]))
    assert "| 1 | 7: 350.0 (11) | 350.0 |  | not covered |  |  |" in md


def test_reference_task_names():
    assert cmp.reference_task("Hopper-v5") == "Hopper"
    assert cmp.reference_task("Walker2d-v5") == "Walker2d"
    assert cmp.reference_task("HalfCheetah-v5") == "HalfCheetah"
    assert cmp.reference_task("Ant-v5") == "Ant"
    assert cmp.reference_task("Humanoid-v4") == "Humanoid"
    assert cmp.reference_task("Pendulum-v1") == "Pendulum"


def test_reference_against_the_published_file():
    path = Path("/work/shared/reference/mbpo_official_curves/mbpo_official_curves.csv")
    if not path.is_file():
        pytest.skip("the shared reference data is not on this machine")
    curves = cmp.load_reference(path)
    assert {"Hopper", "Walker2d", "HalfCheetah", "Ant", "Humanoid"} <= set(curves)
    hop = curves["Hopper"]
    # 20,019 is logged as 530.? ± 157: at 20,000 the interpolation sits just below it
    i = int(np.searchsorted(hop.steps, 20019))
    assert hop.steps[i] == 20019
    v = cmp.interpolate(hop.steps, hop.mean, np.array([20000.0, 20019.0]))
    assert hop.mean[i - 1] < v[0] < v[1] == hop.mean[i]


def test_config_differences_are_reported(tmp_path):
    a = _write_run(tmp_path, "a", "Hopper-v5", 0, [1000, 2000], [1.0, 2.0], num_sac_updates=20)
    b = _write_run(tmp_path, "b", "Hopper-v5", 1, [1000, 2000], [3.0, 4.0], num_sac_updates=10,
                   logdir="elsewhere")
    md = cmp.format_markdown(cmp.compare([a, b], every=1000))
    assert "**Configs differ between seeds**: num_sac_updates = 20, 10" in md
    assert "logdir" not in md


def test_a_key_an_older_version_did_not_write_means_its_behaviour(tmp_path):
    # a run from before the learned termination has no "termination" key: it used the
    # built-in one, so it does not differ from a run with termination="builtin" ...
    a = _write_run(tmp_path, "a", "Hopper-v5", 0, [1000, 2000], [1.0, 2.0])
    b = _write_run(tmp_path, "b", "Hopper-v5", 1, [1000, 2000], [3.0, 4.0],
                   termination="builtin", uncertainty_penalty=0.0, max_disagreement=None)
    assert cmp.config_differences([cmp.load_run(a), cmp.load_run(b)]) == {}
    # ... but it does differ from a learned one, and an unknown absent key stays None
    c = _write_run(tmp_path, "c", "Hopper-v5", 2, [1000, 2000], [3.0, 4.0],
                   termination="learned", some_new_key=3)
    runs = [cmp.load_run(a), cmp.load_run(c)]
    assert cmp.config_differences(runs) == {"termination": ["builtin", "learned"],
                                            "some_new_key": [None, 3]}


# ---------------------------------------------------------------- the command line


def test_cli_prints_the_tables_and_writes_png(runs, reference, tmp_path, capsys):
    out = tmp_path / "plots" / "hopper.png"
    rc = cli.main(["compare", str(runs["h0"]), str(runs["h1"]), str(runs["h2"]),
                   "--reference", str(reference), "--out", str(out), "--window",
                   "20000:30000"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "| 10000 | 3 | 100.0 / 120.0 / 140.0 | 120.0 | 20.0 | 100.0 ± 20.0 | 1.00 |" \
        in captured.out
    assert "| 30000 | 2 | 240.0 / 360.0 / – | 300.0 | 84.9 | 300.0 ± 60.0 | 0.00 |" \
        in captured.out
    assert f"wrote {out}" in captured.err
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000


def test_cli_one_png_per_environment(runs, reference, tmp_path, capsys):
    out = tmp_path / "curves.png"
    rc = cli.main(["compare", str(runs["h0"]), str(runs["ip"]), "--reference", str(reference),
                   "--out", str(out), "--every", "1000"])
    assert rc == 0, capsys.readouterr().err
    for env in ("Hopper-v5", "InvertedPendulum-v5"):
        assert (tmp_path / f"curves-{env}.png").read_bytes()[:8] == PNG_MAGIC
    assert not out.exists()
    folder = tmp_path / "pngs"
    folder.mkdir()
    assert cli.main(["compare", str(runs["ip"]), "--out", str(folder), "--every", "1000"]) == 0
    assert (folder / "InvertedPendulum-v5.png").read_bytes()[:8] == PNG_MAGIC


def _garble(kind: str, run: Path, reference: Path) -> list[str]:
    """Breaks one thing and returns the compare arguments that must fail."""
    args = [str(run), "--reference", str(reference)]
    if kind == "missing run dir":
        return [str(run.parent / "nope"), "--reference", str(reference)]
    if kind == "run is a file":
        return [str(run / "config.json")]
    if kind == "no progress.csv":
        (run / "progress.csv").unlink()
    elif kind == "no config.json":
        (run / "config.json").unlink()
    elif kind == "config not json":
        (run / "config.json").write_text("{env_id: Hopper")
    elif kind == "config without seed":
        (run / "config.json").write_text(json.dumps({"env_id": "Hopper-v5"}))
    elif kind == "progress without column":
        (run / "progress.csv").write_text("env_steps,eval_return_std\n1000,3.0\n")
    elif kind == "progress not numeric":
        (run / "progress.csv").write_text("env_steps,eval_return_mean\n1000,abc\n")
    elif kind == "progress empty":
        (run / "progress.csv").write_text("env_steps,eval_return_mean\n")
    elif kind == "progress not increasing":
        (run / "progress.csv").write_text("env_steps,eval_return_mean\n2000,1\n1000,2\n")
    elif kind == "missing reference":
        reference.unlink()
    elif kind == "reference without column":
        reference.write_text("env,step,return_mean\nHopper,0,1\n")
    elif kind == "reference repeated step":
        reference.write_text("env,step,return_mean,return_std\nHopper,0,1,0\nHopper,0,2,0\n")
    elif kind == "reference negative sd":
        reference.write_text("env,step,return_mean,return_std\nHopper,0,1,-1\n")
    elif kind == "same seed twice":
        args.insert(1, str(run))
    elif kind == "bad window":
        args += ["--window", "125000-115000"]
    elif kind == "reversed window":
        args += ["--window", "125000:115000"]
    elif kind == "every zero":
        args += ["--every", "0"]
    return args


@pytest.mark.parametrize("kind, message", [
    ("missing run dir", "does not exist"),
    ("run is a file", "is not a directory"),
    ("no progress.csv", "no progress.csv"),
    ("no config.json", "no config.json"),
    ("config not json", "not readable JSON"),
    ("config without seed", "'seed' must be an integer"),
    ("progress without column", "missing column(s) ['eval_return_mean']"),
    ("progress not numeric", "'eval_return_mean' is not a number: 'abc'"),
    ("progress empty", "no data rows"),
    ("progress not increasing", "strictly increasing"),
    ("missing reference", "ref.csv does not exist"),
    ("reference without column", "missing column(s) ['return_std']"),
    ("reference repeated step", "step 0 more than once"),
    ("reference negative sd", "return_std must be >= 0"),
    ("same seed twice", "both Hopper-v5 seed 0"),
    ("bad window", "window must be LO:HI"),
    ("reversed window", "0 <= LO <= HI"),
    ("every zero", "--every must be >= 1"),
])
def test_cli_errors_exit_2_with_a_message(runs, reference, capsys, kind, message):
    args = _garble(kind, runs["h0"], reference)
    rc = cli.main(["compare", *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("mbpo-fast compare: error: ") and message in err, err


def test_learning_report_keeps_its_report_and_forwards_compare(runs, reference, capsys):
    spec = importlib.util.spec_from_file_location("learning_report",
                                                  ROOT / "benchmarks" / "learning_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    assert report.main([str(runs["ip"])]) == 0
    out = capsys.readouterr().out
    assert "### InvertedPendulum-v5 (seed 0" in out and "| 3000 | 1000.0 ± 0.0 |" in out
    assert report.main(["compare", str(runs["h0"]), "--reference", str(reference)]) == 0
    assert "| 20000 | 1 | 200.0 | 200.0 |  | 200.0 ± 40.0 | 0.00 |" in capsys.readouterr().out
    assert report.main(["compare", str(runs["h0"].parent / "nope")]) == 2


def test_import_does_not_load_matplotlib():
    code = ("import sys, mbpo_fast.compare; "
            "sys.exit(1 if 'matplotlib' in sys.modules else 0)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120, env=env)


def test_cli_defaults_to_the_packaged_mbpo_curves(capsys):
    # The published curves ship with the package: a clean checkout compares without a path.
    shipped = cmp.load_reference(cmp.MBPO_REFERENCE)
    assert {"Hopper", "Walker2d", "HalfCheetah", "Ant", "Humanoid"} <= set(shipped)
    hopper_run = Path(__file__).resolve().parents[1] / "docs" / "results" / "hopper-s0"
    assert cli.main(["compare", str(hopper_run)]) == 0
    out = capsys.readouterr().out
    assert "| 20000 | 1 | 322.4 | 322.4 |  | 529.4 ± 156.6 | -1.32 |" in out
    assert cli.main(["compare", str(hopper_run), "--reference", "none"]) == 0
    assert "529.4" not in capsys.readouterr().out
