"""The benchmark scripts run end to end (tiny model, a few steps): a broken script would waste a
scarce GPU run. These check the scripts and their arithmetic, not the speed."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("bench"))


def run_script(*args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_gpu_benchmark_script_runs_and_its_ratios_add_up(checkpoint):
    out = run_script("benchmarks/gpu.py", "--device", "cpu", "--precision", "fp32", "--quick",
                     "--full-steps", "12", "--reference-steps", "3", "--models", str(checkpoint))
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| reference") or line.startswith("| engine")]
    assert len(rows) == 5, out
    reference_ms = float(rows[0][1])
    for cells in rows[1:]:
        ms, ratio, similarity = float(cells[1]), float(cells[3].strip().rstrip("x")), float(cells[7])
        assert ms > 0 and 0 < similarity <= 1
        assert ratio == pytest.approx(reference_ms / ms, rel=0.06, abs=0.06)
    assert "runs eagerly" in rows[2][0]  # off CUDA no row may claim a graph was replayed
    assert re.search(r"12 steps, 1 restart, one whole run: \*\*[\d.]+ s\*\*", out)
    assert re.search(r"2 restarts / 1: [\d.]+x; 3 restarts / 1: [\d.]+x", out)


def test_cpu_speed_script_runs(checkpoint):
    out = run_script("benchmarks/speed.py", "--model", str(checkpoint), "--steps", "3", "--restarts", "2")
    assert re.search(r"speed-up of the engine over the reference loop \(1 restart, full vocab\): [\d.]+x", out)
    assert re.search(r"cost of 2 restarts over 1 restart \(full vocab\): [\d.]+x", out)


def test_gpu_targets_are_judged_in_the_right_direction():
    from benchmarks.gpu import target_line
    assert target_line("3000 steps (s)", 9.1, False, 8).endswith("**NOT met**")
    assert target_line("3000 steps (s)", 7.9, False, 8).endswith("met")
    assert target_line("speed-up", 19.0, True, 20).endswith("**NOT met**")
    assert target_line("speed-up", 25.0, True, 20).endswith("— met")
    assert "not measured" in target_line("speed-up", None, True, 20)
