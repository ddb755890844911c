"""mbpo_fast sets GOMP_SPINCOUNT before torch starts (mbpo_fast/_openmp.py), unless the user
chose a wait policy, opted out, or torch was imported first. Each case runs in a fresh
interpreter, since the setting only matters before torch's libgomp is loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, os, sys
{pre}
import mbpo_fast as mf
print(json.dumps({{"state": mf.build_info()["openmp_spin"],
                   "spin": os.environ.get("GOMP_SPINCOUNT"),
                   "torch_loaded": "torch" in sys.modules}}))
"""


def probe(pre: str = "", **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "MBPO_FAST_OPENMP_SPIN")}
    clean["PYTHONPATH"] = os.pathsep.join([str(ROOT), clean.get("PYTHONPATH", "")])
    clean.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE.format(pre=pre)], env=clean, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_sets_a_short_spin_before_torch_starts():
    r = probe()
    assert r["spin"] == "20000" and r["state"] == "mbpo_fast: GOMP_SPINCOUNT=20000"
    assert r["torch_loaded"]  # mbpo_fast imported torch, after setting the variable


@pytest.mark.parametrize("var,value", [("OMP_WAIT_POLICY", "passive"),
                                       ("GOMP_SPINCOUNT", "5000")])
def test_the_users_choice_wins(var, value):
    r = probe(**{var: value})
    assert r["state"] == f"user: {var}={value}"
    assert r["spin"] == (value if var == "GOMP_SPINCOUNT" else None)


def test_torch_imported_first_is_left_alone_and_reported():
    r = probe(pre="import torch")
    assert r["spin"] is None
    assert r["state"].startswith("torch imported before mbpo_fast")
    assert "GOMP_SPINCOUNT=20000" in r["state"]  # says what to set


def test_opt_out():
    r = probe(MBPO_FAST_OPENMP_SPIN="0")
    assert r["spin"] is None and r["state"].startswith("off")
