"""benchmarks/template.py runs end to end, small (a tiny random CLIP for the planted and cost parts, the demo model
for the style part, a few steps): its tables, its JSON, its joins and its targets, not the figures (about 15 s)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import pez_core
from helpers import write_tiny_checkpoint
from paths import REPO_ROOT

TINY = ("--seeds", "1", "2", "--steps", "4", "--style-steps", "4", "--style-polish", "off", "--fluency", "0",
        "--pairs", "red:black", "blue:white", "--style-images", "5", "--held-out", "2", "--cost-steps", "3",
        "--cost-repeats", "3")


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "benchmarks/template.py", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def table(out: str, first_cell: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines() if line.startswith(first_cell)]


def test_template_benchmark_runs_every_part(tmp_path):
    checkpoint = write_tiny_checkpoint(tmp_path)
    results = tmp_path / "template.json"
    done = run("--model", str(checkpoint), *TINY, "--json", str(results))
    assert done.returncode == 0, done.stderr[-3000:]
    out, data = done.stdout, json.loads(results.read_text())
    join = pez_core.join_prompts  # the Concat Prompts node's rule

    planted = data["planted"]
    assert [(r["seed"], r["method"]) for r in planted] == [
        (s, m) for s in (1, 2) for m in ("template", "from scratch", "concat")]
    for r in planted:
        fixed = r["fixed"]
        assert len(r["planted"].split()) == 8 and r["planted"].startswith(fixed + " ") and len(fixed.split()) == 4
        assert -1 <= r["similarity"] <= 1 and 0 <= r["slot_recovered"] <= 4 and 0 <= r["recovered"] <= 8
        if r["method"] == "template":  # the whole prompt, its fixed words first; the engine scored that string
            assert r["prompt"] == f"{fixed} {r['learned']}" and r["recovered"] >= 4
            assert r["similarity"] == pytest.approx(r["engine_similarity"], abs=1e-4)
        elif r["method"] == "concat":
            assert r["prompt"] == join([fixed, r["learned"]], " ") and r["recovered"] >= 4
        else:
            assert r["prompt"] == r["learned"]
    rows = table(out, "| 1 |") + table(out, "| 2 |")
    assert [(int(c[0]), c[1], float(c[3])) for c in rows] == [
        (r["seed"], r["method"], pytest.approx(r["similarity"], abs=6e-5)) for r in planted]

    style = data["style"]
    assert [(r["colour"], r["method"]) for r in style] == [
        (c, m) for c in ("red", "blue") for m in ("template", "concat", "subject alone")]
    for r in style:
        assert -1 <= r["held_out_score"] <= 1 and -1 <= r["style_similarity"] <= 1
        if r["method"] == "template":
            assert r["prompt"] == f"a star, {r['learned']}"
        elif r["method"] == "concat":
            assert r["prompt"] == join(["a star", r["learned"]], ", ")
        else:
            assert r["prompt"] == "a star" and r["learned"] == ""
    assert len(table(out, "| red on black (0) |")) == len(table(out, "| blue on white (0) |")) == 3

    cost = data["cost"]
    assert [len(v) for v in cost["seconds_per_step"].values()] == [3, 3]
    assert all(s > 0 for v in cost["seconds_per_step"].values() for s in v)
    assert cost["ratio"] == pytest.approx(cost["median"]["template"] / cost["median"]["plain"])
    assert cost["cpu_ratio"] == pytest.approx(cost["cpu_median"]["template"] / cost["cpu_median"]["plain"])
    assert f"template / plain: **{cost['ratio']:.3f}x** wall, {cost['cpu_ratio']:.3f}x CPU time" in out

    targets = data["targets"]
    assert [t["part"] for t in targets] == ["planted", "planted", "style", "style", "cost"]
    printed = [line for line in out.splitlines() if line.startswith("- ")]
    assert len(printed) == 5 and all(line.endswith(" — met" if t["met"] else " — **NOT met**")
                                     for line, t in zip(printed, targets))


def test_template_benchmark_refuses_a_bad_pair_at_once():
    done = run("--pairs", "red:red")
    assert done.returncode == 2 and "give colour:background" in done.stderr
