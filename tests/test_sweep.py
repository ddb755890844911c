"""`mbpo-fast sweep` (mbpo_fast/sweep.py): planning, the per-trial resume logic, the summary,
the missing-Ray message, and (with Ray installed) real sweeps on a local Ray instance: two
Pendulum-v1 trials, and a sweep whose head process is killed and that a rerun finishes."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import mbpo_fast as mf
from mbpo_fast import cli, compare, sweep
from mbpo_fast.config import MBPOConfig

REPO = Path(__file__).resolve().parent.parent

#: A Pendulum-v1 run small enough for a few seconds per few hundred steps: evaluation and
#: checkpoint every 200 steps, one 200-step episode per evaluation.
TINY = ["init_random_steps=200", "epoch_length=100", "model_train_freq=100", "num_sac_updates=1",
        "rollout_batch_size=50", "rollout_schedule=[0,1,1,1]", "retain_epochs=1",
        "sac_hidden_size=32", "sac_batch_size=32", "model_hidden_size=32", "model_num_layers=2",
        "ensemble_size=3", "num_elites=2", "model_max_epochs=2", "eval_freq=200",
        "eval_episodes=1", "checkpoint_freq=200"]


def _progress_steps(logdir: Path) -> list[int]:
    rows = csv.DictReader(io.StringIO((logdir / "progress.csv").read_text()))
    return [int(float(r["env_steps"])) for r in rows]


def _checkpoint_step(logdir: Path) -> int | None:
    try:
        name = (logdir / "checkpoints" / "latest").read_text().strip()
    except FileNotFoundError:
        return None
    return int(name.removeprefix("ckpt-"))


# ---------------------------------------------------------------- parsing and planning


def test_parse_seeds() -> None:
    assert sweep.parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert sweep.parse_seeds("0,3,7") == [0, 3, 7]
    assert sweep.parse_seeds(" 0-2, 10 ") == [0, 1, 2, 10]
    assert sweep.parse_seeds("5") == [5]
    for bad, words in [("", "--seeds"), ("a", "'a'"), ("-1", "'-1'"), ("3-1", "empty"),
                       ("0-2,1", "[1]"), ("1.5", "'1.5'"), ("0,,1", "--seeds")]:
        with pytest.raises(ValueError, match="--seeds") as info:
            sweep.parse_seeds(bad)
        assert words in str(info.value)


def test_split_values_keeps_json_values_whole() -> None:
    assert sweep.split_values("10,20") == ["10", "20"]
    assert sweep.split_values("[20,150,1,15],[20,150,1,1]") == ["[20,150,1,15]", "[20,150,1,1]"]
    assert sweep.split_values('{"a": 1, "b": 2},{}') == ['{"a": 1, "b": 2}', "{}"]
    assert sweep.split_values('"x,y",z') == ['"x,y"', "z"]
    for bad in ("[1,2", "1]", '"abc'):
        with pytest.raises(ValueError, match="unbalanced"):
            sweep.split_values(bad)


def test_parse_grid_errors_name_the_option() -> None:
    assert sweep.parse_grid(["num_sac_updates=10,20", "sac_lr=1e-4"]) == [
        ("num_sac_updates", ["10", "20"]), ("sac_lr", ["1e-4"])]
    cases = [(["num_sac_updates"], "expected KEY=VALUE"), (["seed=1,2"], "--seeds"),
             (["env_id=Hopper-v5"], "--env"), (["logdir=x"], "--logdir"),
             (["sac_lr=1e-4,,3e-4"], "empty value"), (["sac_lr=1e-4,1e-4"], "more than once"),
             (["sac_lr=1e-4", "sac_lr=3e-4"], "'sac_lr' given more than once"),
             (["rollout_schedule=[1,2"], "unbalanced")]
    for items, words in cases:
        with pytest.raises(ValueError, match="--grid") as info:
            sweep.parse_grid(items)
        assert words in str(info.value), (items, str(info.value))


def test_setting_name() -> None:
    assert sweep.setting_name(()) == "base"
    assert sweep.setting_name(["num_sac_updates=10", "rollout_schedule=[20,150,1,15]"]) == \
        "num_sac_updates=10+rollout_schedule=20,150,1,15"
    assert sweep.setting_name(['env_kwargs={"a": "b/c"}']) == "env_kwargs=a-b-c"
    long = sweep.setting_name([f"k{i}=" + "v" * 30 for i in range(10)])
    assert len(long) <= 150 and long == sweep.setting_name([f"k{i}=" + "v" * 30
                                                              for i in range(10)])
    assert long != sweep.setting_name([f"k{i}=" + "w" * 30 for i in range(10)])


def test_plan_trials_product_order_and_configs(tmp_path: Path) -> None:
    trials = sweep.plan_trials(["Pendulum-v1"], [0, 3], tmp_path / "sw", sets=["eval_freq=200"],
                               grid=["num_sac_updates=3,5",
                                     "rollout_schedule=[0,1,1,1],[0,2,1,2]"], steps=600)
    assert len(trials) == 2 * 2 * 2
    got = [(t.setting, t.seed) for t in trials]
    settings = ["num_sac_updates=3+rollout_schedule=0,1,1,1",
                "num_sac_updates=3+rollout_schedule=0,2,1,2",
                "num_sac_updates=5+rollout_schedule=0,1,1,1",
                "num_sac_updates=5+rollout_schedule=0,2,1,2"]
    assert got == [(s, seed) for s in settings for seed in (0, 3)]
    for t in trials:
        ups, sched = t.overrides
        assert t.config.num_sac_updates == int(ups.split("=")[1])
        assert t.config.rollout_schedule == tuple(json.loads(sched.split("=")[1]))
        assert (t.config.seed, t.config.total_steps, t.config.eval_freq) == (t.seed, 600, 200)
        assert t.config.env_id == "Pendulum-v1"
        assert t.logdir == (tmp_path / "sw" / "Pendulum-v1" / t.setting / f"seed{t.seed}")
        assert t.logdir.is_absolute() and t.config.logdir == str(t.logdir)
        assert t.trial_id == f"Pendulum-v1/{t.setting}/seed{t.seed}"
        assert MBPOConfig.from_dict(t.spec(2)["config"]) == t.config
    # no grid: one setting "base"; presets per env; device only where not set explicitly
    two = sweep.plan_trials(["Pendulum-v1", "InvertedPendulum-v5"], [1], tmp_path, device="cuda")
    assert [(t.env_id, t.setting, t.config.device) for t in two] == [
        ("Pendulum-v1", "base", "cuda"), ("InvertedPendulum-v5", "base", "cuda")]
    assert two[1].config.epoch_length == 250  # InvertedPendulum's preset
    kept = sweep.plan_trials(["Pendulum-v1"], [1], tmp_path, sets=["device=cpu"], device="cuda")
    assert kept[0].config.device == "cpu"


@pytest.mark.parametrize("kwargs, words", [
    (dict(envs=[]), "--env"),
    (dict(envs=["Pendulum-v1", "Pendulum-v1"]), "--env"),
    (dict(envs=["NoSuchEnv-v0"]), "NoSuchEnv-v0"),
    (dict(seeds=[]), "--seeds"),
    (dict(seeds=[-1]), "--seeds"),
    (dict(steps=0), "--steps"),
    (dict(sets=["num_sac_updates=abc"]), "MBPOConfig.num_sac_updates"),
    (dict(sets=["no_such_key=1"]), "no_such_key"),
    (dict(sets=["seed=3"]), "--seeds"),
    (dict(sets=["sac_lr=1e-4", "sac_lr=3e-4"]), "'sac_lr' given more than once"),
    (dict(grid=["no_such_key=1,2"]), "no_such_key"),
    (dict(grid=["num_elites=2,9"]), "num_elites"),
    (dict(sets=["sac_lr=1e-4"], grid=["sac_lr=1e-4,3e-4"]), "give it once"),
    (dict(grid=["env_kwargs={\"a\": 1},{\"a\":1}"]), "share the directory"),
])
def test_plan_trials_rejects_bad_input(tmp_path: Path, kwargs: dict, words: str) -> None:
    args = dict(envs=["Pendulum-v1"], seeds=[0], logdir=tmp_path) | kwargs
    with pytest.raises(ValueError) as info:
        sweep.plan_trials(**args)
    assert words in str(info.value), str(info.value)


def test_auto_every(tmp_path: Path) -> None:
    def every(env: str, *sets: str) -> int:
        return sweep._auto_every(sweep.plan_trials([env], [0], tmp_path, sets=list(sets)))
    assert every("Pendulum-v1") == 1000           # 5,000 steps, eval every 1,000
    assert every("Hopper-v5") == 10_000           # 125,000 / 20 = 6,250 -> 10,000
    assert every("InvertedPendulum-v5") == 1000   # 15,000 / 20 = 750 -> 1,000
    assert every("Pendulum-v1", "total_steps=600", "eval_freq=200") == 200


# ---------------------------------------------------------------- one trial, no Ray


def _tiny_trials(root: Path, seeds: list[int], steps: int, *extra: str) -> list[sweep.Trial]:
    return sweep.plan_trials(["Pendulum-v1"], seeds, root, sets=[*TINY, *extra], steps=steps)


def test_run_trial_starts_skips_resumes_and_refuses_other_configs(tmp_path: Path) -> None:
    (t,) = _tiny_trials(tmp_path, [0], 400)
    assert sweep.trial_state(t.logdir, t.config) == sweep.TrialState("new", 0, 400)
    out = sweep.run_trial(t.spec(1))
    assert (out["action"], out["started_at"], out["env_steps"]) == ("started", 0, 400)
    assert (out["trial"], out["backend"]) == ("Pendulum-v1/base/seed0", mf.backend())
    assert math.isfinite(out["eval_return_mean"]) and out["wall_seconds"] > 0
    assert _progress_steps(t.logdir) == [200, 400]
    assert sweep.trial_state(t.logdir, t.config) == sweep.TrialState("finished", 400, 400)
    mtime = (t.logdir / "progress.csv").stat().st_mtime_ns

    again = sweep.run_trial(t.spec(1))  # finished: nothing is trained or rewritten
    assert (again["action"], again["env_steps"]) == ("skipped", 400)
    assert again["eval_return_mean"] == out["eval_return_mean"]
    assert (t.logdir / "progress.csv").stat().st_mtime_ns == mtime

    # the same trial asked for more steps, checkpointing more often
    (longer,) = _tiny_trials(tmp_path, [0], 600)
    longer = dataclasses.replace(longer, config=longer.config.with_overrides(
        ["checkpoint_freq=100"]))
    assert sweep.trial_state(longer.logdir, longer.config) == sweep.TrialState("resume", 400,
                                                                               600)
    res = sweep.run_trial(longer.spec(1))
    assert (res["action"], res["started_at"], res["env_steps"]) == ("resumed", 400, 600)
    assert _progress_steps(t.logdir) == [200, 400, 600]
    assert _checkpoint_step(t.logdir) == 600
    saved = json.loads((t.logdir / "checkpoints" / "ckpt-600" / "config.json").read_text())
    assert (saved["total_steps"], saved["checkpoint_freq"]) == (600, 100)

    other = dataclasses.replace(longer, config=longer.config.with_overrides(
        ["num_sac_updates=2"]))
    with pytest.raises(ValueError, match=r"num_sac_updates: checkpoint 1, sweep 2"):
        sweep.trial_state(other.logdir, other.config)
    with pytest.raises(ValueError, match="different config"):
        sweep.run_trial(other.spec(1))
    with pytest.raises(ValueError, match="threads"):
        sweep.run_trial(t.spec(0))


def test_run_trial_refuses_a_trial_another_process_holds(tmp_path: Path) -> None:
    (t,) = _tiny_trials(tmp_path, [0], 400)
    t.logdir.mkdir(parents=True)
    with sweep._trial_lock(t.logdir):
        with pytest.raises(RuntimeError, match=f"another process \\(pid {os.getpid()} on "):
            sweep.run_trial(t.spec(1))
    assert not (t.logdir / "progress.csv").exists()


def test_summarize_reuses_compare_and_tables_every_trial(tmp_path: Path) -> None:
    root = tmp_path / "sw"
    trials = _tiny_trials(root, [0, 1, 2], 400)
    for t in trials[:2]:
        sweep.run_trial(t.spec(1))  # seed 2 never starts
    ref = tmp_path / "ref.csv"  # a made-up published curve for Pendulum: reference columns
    ref.write_text("env,step,return_mean,return_std\nPendulum,0,-1500,100\n"
                   "Pendulum,1000,-500,50\n")
    outcome = sweep.SweepOutcome(results={trials[0].trial_id: {"action": "started"}},
                                 skipped=[trials[1].trial_id])
    s = sweep.summarize(trials, root, outcome, reference=ref)

    dirs = [t.logdir for t in trials[:2]]
    (expected,) = compare.compare(dirs, ref, every=200)
    group = root / "Pendulum-v1" / "base"
    text = (group / "summary.md").read_text()
    assert text.endswith(compare.format_markdown([expected]))
    assert "seeds with evaluations: 2 of 3" in text
    assert (group / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    finals = [compare.load_run(d).returns[-1] for d in dirs]
    (row,) = s.settings
    assert (row.env_id, row.setting, row.seeds_done, row.seeds, row.step, row.n) == (
        "Pendulum-v1", "base", 2, 3, 400, 2)
    assert row.mean == pytest.approx(np.mean(finals))
    assert row.sd == pytest.approx(np.std(finals, ddof=1))
    assert row.ref_mean == pytest.approx(-1500 + 0.4 * 1000)  # interpolated at 400
    assert row.ref_sd == pytest.approx(80)
    assert row.z == pytest.approx((np.mean(finals) + 1100) / 80)

    assert [(r.seed, r.status, r.env_steps, r.eval_step) for r in s.trials] == [
        (0, "ran from scratch", 400, 400), (1, "skipped (finished before)", 400, 400),
        (2, "not started", 0, 0)]
    assert s.trials[0].final_return == pytest.approx(finals[0])
    assert math.isnan(s.trials[2].final_return)
    rows = list(csv.DictReader(io.StringIO((root / "trials.csv").read_text())))
    assert [(r["seed"], r["env_steps"], r["logdir"]) for r in rows] == [
        ("0", "400", "Pendulum-v1/base/seed0"), ("1", "400", "Pendulum-v1/base/seed1"),
        ("2", "0", "Pendulum-v1/base/seed2")]
    assert float(rows[1]["final_return_mean"]) == pytest.approx(finals[1])
    md = (root / "summary.md").read_text()
    assert md == s.markdown and "| Pendulum-v1 | base | 2 | not started | 0/400 |" in md
    assert f"{finals[0]:.1f} ± 0.0" in md
    assert {p.name for p in s.files} == {"summary.md", "curves.png", "trials.csv"}


def test_error_text_unwraps_ray_errors() -> None:
    class Wrapper(Exception):  # like ray.exceptions.RayTaskError: a traceback and .cause
        def __init__(self, cause: BaseException) -> None:
            super().__init__("ray::ImplicitFunc.train() (pid=1)\n  File x\nboom")
            self.cause = cause

    inner = RuntimeError("dir is being trained by another process (pid 7 on h)")
    assert sweep._error_text(Wrapper(inner)) == \
        "RuntimeError: dir is being trained by another process (pid 7 on h)"
    try:
        raise ValueError("outer") from KeyError("k")
    except ValueError as exc:
        assert sweep._error_text(exc) == "KeyError: 'k'"
    assert sweep._error_text(Exception("Traceback\n  File y\nValueError: bad")) == \
        "ValueError: bad"
    assert sweep._error_text(OSError()) == "OSError: "


# ---------------------------------------------------------------- without Ray


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes ``import ray`` fail as it does where Ray is not installed."""
    for name in list(sys.modules):
        if name == "ray" or name.startswith("ray."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # -> ImportError on import


def test_sweep_without_ray_says_how_to_install(no_ray: None, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    status = cli.main(["sweep", "--seeds", "0-1", "--logdir", str(tmp_path / "sw")])
    err = capsys.readouterr().err
    assert status == 2
    assert "mbpo-fast sweep: error:" in err and 'pip install "mbpo_fast[sweep]"' in err
    assert not (tmp_path / "sw").exists()  # nothing written
    trials = _tiny_trials(tmp_path, [0], 400)
    with pytest.raises(sweep.RayNotInstalledError, match=r"mbpo_fast\[sweep\]"):
        sweep.run_sweep(trials, tmp_path)
    with pytest.raises(ImportError):  # it is an ImportError for callers that catch those
        sweep.run_sweep(trials, tmp_path)


@pytest.mark.parametrize("argv, words", [
    (["--seeds", "2-1"], "--seeds"),
    (["--grid", "seed=1,2"], "--seeds"),
    (["--set", "num_sac_updates=x"], "num_sac_updates"),
    (["--cpus-per-trial", "0"], "--cpus-per-trial"),
    (["--gpus-per-trial", "-1"], "--gpus-per-trial"),
    (["--max-failures", "-1"], "--max-failures"),
    (["--num-cpus", "2", "--address", "auto"], "--num-cpus"),
    (["--num-cpus", "2", "--cpus-per-trial", "3"], "--cpus-per-trial 3"),
    (["--every", "0"], "--every"),
    (["--window", "5:1"], "window"),
    (["--reference", "missing.csv"], "--reference"),
])
def test_sweep_cli_rejects_bad_arguments(no_ray: None, tmp_path: Path, argv: list[str],
                                         words: str, capsys: pytest.CaptureFixture) -> None:
    status = cli.main(["sweep", "--logdir", str(tmp_path / "sw"), *argv])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("mbpo-fast sweep: error:") and words in err, err
    assert "pip install" not in err  # the argument is reported, before the Ray check
    assert not (tmp_path / "sw").exists()


# ---------------------------------------------------------------- with Ray


def _sweep_cmd(logdir: Path, steps: int) -> list[str]:
    cmd = [sys.executable, "-m", "mbpo_fast.cli", "sweep", "--env", "Pendulum-v1",
           "--seeds", "0-1", "--steps", str(steps), "--logdir", str(logdir), "--num-cpus", "2",
           "--quiet"]
    for item in TINY:
        cmd += ["--set", item]
    return cmd


def _sweep_env() -> dict[str, str]:
    # the source tree on the driver's path only: the workers get it from the sweep itself
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    return env


def _run_sweep_cli(logdir: Path, steps: int, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(_sweep_cmd(logdir, steps), cwd=cwd, env=_sweep_env(),
                          capture_output=True, text=True, timeout=600)


def _trial_rows(logdir: Path) -> dict[str, dict[str, str]]:
    rows = csv.DictReader(io.StringIO((logdir / "trials.csv").read_text()))
    return {r["seed"]: r for r in rows}


def test_two_trial_pendulum_sweep_on_local_ray(tmp_path: Path) -> None:
    pytest.importorskip("ray.tune")
    root = tmp_path / "sweep"
    proc = _run_sweep_cli(root, 400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for seed in (0, 1):
        d = root / "Pendulum-v1" / "base" / f"seed{seed}"
        assert _progress_steps(d) == [200, 400]
        assert _checkpoint_step(d) == 400
        cfg = json.loads((d / "config.json").read_text())
        assert (cfg["seed"], cfg["num_sac_updates"], cfg["logdir"]) == (seed, 1, str(d))
    rows = _trial_rows(root)
    assert {s: (r["status"], r["env_steps"]) for s, r in rows.items()} == {
        "0": ("ran from scratch", "400"), "1": ("ran from scratch", "400")}
    finals = [float(rows[s]["final_return_mean"]) for s in ("0", "1")]
    assert finals[0] != finals[1]  # two seeds, two different runs
    assert (root / "Pendulum-v1" / "base" / "curves.png").is_file()
    assert "### Pendulum-v1: 2 seeds (0, 1)" in (root / "Pendulum-v1" / "base" /
                                                 "summary.md").read_text()
    assert f"| Pendulum-v1 | base | 2/2 | 400 | 2 | {np.mean(finals):.1f} |" in proc.stdout
    assert "| Pendulum-v1 | base | 1 | ran from scratch | 400/400 |" in proc.stdout
    assert json.loads((root / "sweep.json").read_text())["trials"][1]["logdir"] == \
        "Pendulum-v1/base/seed1"
    # what the Ray workers reported to Tune: they imported the same build as this process
    # (a worker that fell back to the Numba mirror would still train, only slower)
    reported = [json.loads(line) for p in (root / "_ray").glob("*/*/result.json")
                for line in p.read_text().splitlines() if line.strip()]
    assert sorted(r["trial"] for r in reported) == ["Pendulum-v1/base/seed0",
                                                    "Pendulum-v1/base/seed1"]
    assert {(r["action"], r["backend"], r["env_steps"]) for r in reported} == {
        ("started", mf.backend(), 400)}


def _lock_free(logdir: Path) -> bool:
    import fcntl

    path = logdir / ".sweep.lock"
    if not path.exists():
        return True
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def _kill_lock_holders(dirs: list[Path]) -> None:
    """SIGKILLs the processes holding a trial's flock (its Ray worker), found in /proc/locks
    by the lock file's inode: the node is gone at once, as in a crash. Without this a quick
    trial can finish in the seconds before its worker notices that the raylet died."""
    inodes = {(d / ".sweep.lock").stat().st_ino for d in dirs if (d / ".sweep.lock").exists()}
    with open("/proc/locks") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 6 or parts[1] != "FLOCK":
                continue
            pid, inode = int(parts[4]), int(parts[5].split(":")[-1])
            if inode in inodes:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _wait_until_locks_free(dirs: list[Path], seconds: float) -> None:
    """Waits until no process holds a trial's lock (its worker has exited)."""
    deadline = time.monotonic() + seconds
    while not all(_lock_free(d) for d in dirs if d.exists()):
        assert time.monotonic() < deadline, f"trial workers still alive {seconds} s after " \
            "the sweep stopped"
        time.sleep(0.5)


def _start_sweep_and_wait_for_a_checkpoint(root: Path, steps: int, cwd: Path,
                                           dirs: list[Path]) -> subprocess.Popen:
    """Starts the sweep in its own process group (like a terminal's foreground job) and
    returns once one trial has a checkpoint; kills the group if that does not happen."""
    proc = subprocess.Popen(_sweep_cmd(root, steps), cwd=cwd, env=_sweep_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while not any((_checkpoint_step(d) or 0) >= 200 for d in dirs):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            err = proc.communicate()[1]
            pytest.fail(f"no checkpoint before the sweep ended or 300 s passed: {err[-5000:]}")
        time.sleep(0.1)
    return proc


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="process groups, flock, /proc/locks")
def test_sweep_killed_mid_way_resumes_and_finishes(tmp_path: Path) -> None:
    pytest.importorskip("ray.tune")
    root, steps = tmp_path / "sweep", 1600
    dirs = [root / "Pendulum-v1" / "base" / f"seed{s}" for s in (0, 1)]
    proc = _start_sweep_and_wait_for_a_checkpoint(root, steps, tmp_path, dirs)
    # The whole node dies at once: the head (driver, Ray's GCS, raylet and agents: one
    # process group) and the trial workers.
    os.killpg(proc.pid, signal.SIGKILL)
    _kill_lock_holders(dirs)
    proc.communicate()
    _wait_until_locks_free(dirs, 120)
    before = {d.name: _checkpoint_step(d) for d in dirs}
    assert any(b is not None and 0 < b < steps for b in before.values()), before

    proc = _run_sweep_cli(root, steps, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = _trial_rows(root)
    for d in dirs:
        seed = d.name.removeprefix("seed")
        assert _checkpoint_step(d) == steps
        # every evaluation exactly once, in order: the resumed run dropped the rows logged
        # after its checkpoint and redid them
        assert _progress_steps(d) == list(range(200, steps + 1, 200))
        b = before[d.name]
        expected = ("ran from scratch" if b is None else f"resumed at step {b}")
        assert (rows[seed]["status"], rows[seed]["env_steps"]) == (expected, str(steps))

    # once more: every trial is finished, so Ray is not even started
    experiments = sorted(p.name for p in (root / "_ray").iterdir())
    proc = _run_sweep_cli(root, steps, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert sorted(p.name for p in (root / "_ray").iterdir()) == experiments
    assert {r["status"] for r in _trial_rows(root).values()} == {"skipped (finished before)"}


def test_failed_trial_is_reported_and_the_sweep_exits_1(tmp_path: Path) -> None:
    pytest.importorskip("ray.tune")
    root = tmp_path / "sweep"
    held = root / "Pendulum-v1" / "base" / "seed1"
    held.mkdir(parents=True)
    with sweep._trial_lock(held):  # as if a stray process were still training seed 1
        proc = _run_sweep_cli(root, 200, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = _trial_rows(root)
    assert (rows["0"]["status"], rows["0"]["env_steps"]) == ("ran from scratch", "200")
    assert rows["1"]["status"].startswith("error: ") and rows["1"]["env_steps"] == "0"
    assert "being trained by another process" in rows["1"]["status"], rows["1"]["status"]
    assert f"(pid {os.getpid()} on " in rows["1"]["status"]
    assert "1 trial(s) failed" in proc.stderr and not (held / "progress.csv").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a process group")
def test_ctrl_c_stops_the_trials_and_reports_where_they_stand(tmp_path: Path) -> None:
    pytest.importorskip("ray.tune")
    root, steps = tmp_path / "sweep", 20_000  # far more than runs before the Ctrl-C lands
    dirs = [root / "Pendulum-v1" / "base" / f"seed{s}" for s in (0, 1)]
    proc = _start_sweep_and_wait_for_a_checkpoint(root, steps, tmp_path, dirs)
    try:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole group
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, out[-3000:] + err[-5000:]
    assert "interrupted; rerun the same command to resume" in err
    _wait_until_locks_free(dirs, 30)  # no trial trains on
    rows = _trial_rows(root)
    for d in dirs:
        row, step = rows[d.name.removeprefix("seed")], _checkpoint_step(d)
        if step is None:
            assert row["status"] == "not started" and row["env_steps"] == "0"
        else:
            assert 0 < step < steps
            assert (row["status"], row["env_steps"]) == (f"unfinished (checkpoint at {step})",
                                                         str(step))
    assert "**Interrupted**" in (root / "summary.md").read_text()
