"""benchmarks/reference.py runs end to end, small (the demo model, a few steps): one row per target with the
learned prompt's similarity, the plain caption's and their difference; not the figures."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from paths import REPO_ROOT


def test_reference_benchmark_prints_a_row_per_target():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "benchmarks/reference.py", "--steps", "3", "--prompt-len", "3", "--seeds", "1"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in done.stdout.splitlines()
            if line.startswith(("| invert", "| style", "| distill"))]
    # the three demo images and the 1x1 black one, a style prompt and a distilled caption
    assert [r[0] for r in rows] == ["invert"] * 4 + ["style", "distill"]
    assert "black 1x1" in [r[1] for r in rows]
    for r in rows:
        similarity, reference, margin = float(r[4]), float(r[5]), float(r[6])
        assert -1 <= similarity <= 1 and -1 <= reference <= 1
        assert margin == pytest.approx(similarity - reference, abs=0.0015)  # each cell rounded to 3 places
