"""The CLI's CLIP commands (pez_core.cli) end to end, in a subprocess, as a user runs it; and what its
argument parser refuses before any model is loaded."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from helpers import write_tiny_checkpoint
from paths import REPO_ROOT


def pez(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "pez_core", *args], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    checkpoint = write_tiny_checkpoint(folder)
    images = []
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        path = folder / f"image{i}.png"
        Image.new("RGB", (40, 30), colour).save(path)
        images.append(str(path))
    return str(checkpoint), images


def test_invert_json_one_line_per_image_in_order(setup):
    checkpoint, images = setup
    done = pez("invert", *images, "--model", checkpoint, "--steps", "15", "--prompt-len", "4", "--json",
               "--polish", "off")  # pruning may shorten a prompt
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [row["input"] for row in rows] == images
    for row in rows:
        assert {"prompt", "similarity", "token_ids", "steps", "seconds"} <= row.keys()
        assert row["steps"] == 15 and len(row["prompt"].split()) == 4 and row["seconds"] > 0
    assert "step" in done.stderr  # the progress bar goes to stderr, not into the JSON stream


def test_style_distill_and_score(setup):
    checkpoint, images = setup
    style = pez("style", *images, "--model", checkpoint, "--steps", "5", "--json")
    distill = pez("distill", "a very long prompt about a red circle", "--model", checkpoint,
                  "--steps", "5", "--ratio", "0.5", "--json", "--vocab", "ascii", "--blocklist", "red")
    score = pez("score", "--text", "a red circle", "--text", "a blue square", *images, "--model", checkpoint, "--json")
    assert style.returncode == distill.returncode == score.returncode == 0, style.stderr + distill.stderr + score.stderr
    assert len(style.stdout.splitlines()) == 1
    row = json.loads(distill.stdout)
    assert len(row["token_ids"]) <= 5 and "red" not in row["prompt"].split()
    sims = [json.loads(line) for line in score.stdout.splitlines()]
    assert len(sims) == 4 and all(-1 <= s["similarity"] <= 1 for s in sims)


def test_polish_and_stopping_options(setup):
    checkpoint, images = setup
    done = pez("invert", images[0], "--model", checkpoint, "--steps", "100000", "--prompt-len", "4", "--json",
               "--polish", "swap+prune", "--time-budget", "3", "--target-similarity", "0.999")
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)
    assert row["stopped_early"] and row["steps"] < 100000 and row["unpolished_prompt"]
    assert row["similarity"] >= row["unpolished_similarity"] - 1e-6
    bad = pez("invert", images[0], "--model", checkpoint, "--time-budget", "-1")
    assert bad.returncode == 2 and "time budget" in bad.stderr


def test_models_lists_presets():
    done = pez("models")
    assert done.returncode == 0
    names = [line.split("\t")[0] for line in done.stdout.splitlines()]
    assert "ViT-L-14 · openai" in names and "ViT-H-14 · laion2b_s32b_b79k" in names


def test_errors_exit_2_with_a_message(setup, tmp_path):
    checkpoint, _ = setup
    missing = pez("invert", str(tmp_path / "nope.png"), "--model", checkpoint)
    assert missing.returncode == 2 and "image not found" in missing.stderr
    offline = pez("distill", "a cat", "--model", "ViT-L-14 · openai")
    assert offline.returncode == 2 and "HF_HUB_OFFLINE" in offline.stderr and "Traceback" not in offline.stderr


def test_threads_option(setup):
    checkpoint, images = setup
    two = pez("invert", images[0], "--model", checkpoint, "--steps", "4", "--prompt-len", "3", "--threads", "2",
              "--json")
    assert two.returncode == 0 and json.loads(two.stdout)["prompt"], two.stderr
    zero = pez("invert", images[0], "--model", checkpoint, "--threads", "0")
    assert zero.returncode == 2 and "--threads must be at least 1" in zero.stderr


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "lots"])
def test_the_cli_refuses_a_non_finite_negative_weight_before_loading(value, capsys, monkeypatch):
    from pez_core import cli

    monkeypatch.setattr(cli, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as exited:
        cli.main(["invert", "any.png", "--negative-weight", value])
    assert exited.value.code == 2
    assert f"argument --negative-weight: '{value}': must be a finite number >= 0" in capsys.readouterr().err
