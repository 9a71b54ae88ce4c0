"""The reference point beside a result's similarity (``PezResult.reference_similarity``): what the plain
caption ``REFERENCE_CAPTION`` scores against the same targets, by the same measure."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import pez_core
from pez_core import PezConfig
from pez_core.clip.objective import REFERENCE_CAPTION
from helpers import DEMO_IMAGE, write_tiny_checkpoint, write_variant
from paths import REPO_ROOT

QUICK = PezConfig(prompt_len=4, steps=6, seed=0)
TEXT = "a large red circle on the left of a gray background"


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    return list(np.random.default_rng(seed).random((n, 24, 24, 3), dtype=np.float32))


def similarity(model, caption: str, **targets) -> np.ndarray:
    return pez_core.score(model, caption, **targets)[0].numpy()


def test_invert_reference_is_the_plain_captions_score_against_each_image(model):
    pictures = images(3)
    results = pez_core.invert(model, pictures, QUICK, negative_images=images(1, seed=1))
    assert [r.reference_caption for r in results] == [REFERENCE_CAPTION] * 3
    # each image's own reference; the negatives count as little as in the result's similarity (not at all)
    assert [r.reference_similarity for r in results] == pytest.approx(
        similarity(model, REFERENCE_CAPTION, images=pictures).tolist(), abs=1e-5)


def test_style_reference_is_the_mean_over_the_images_as_its_similarity_is(model):
    pictures = images(3, seed=2)
    result = pez_core.style(model, pictures, QUICK, negative_texts="a blue square")
    assert result.similarity == pytest.approx(float(similarity(model, result.prompt, images=pictures).mean()), abs=1e-5)
    assert result.reference_similarity == pytest.approx(
        float(similarity(model, REFERENCE_CAPTION, images=pictures).mean()), abs=1e-5)


def test_distill_reference_is_the_plain_captions_score_against_the_text(model):
    result = pez_core.distill(model, TEXT, QUICK)
    assert result.reference_caption == REFERENCE_CAPTION
    assert result.reference_similarity == pytest.approx(float(similarity(model, REFERENCE_CAPTION, other_texts=TEXT)[0]),
                                                        abs=1e-5)
    assert -1 <= result.reference_similarity <= 1


def test_with_a_template_the_reference_fills_it(model):
    """The plain caption in the user's template: beside the result, what the learned words add to the fixed ones."""
    result = pez_core.distill(model, TEXT, PezConfig(prompt_len=3, steps=6, template="a tiger, {}"))
    assert result.reference_caption == f"a tiger, {REFERENCE_CAPTION}"
    assert result.reference_similarity == pytest.approx(
        float(similarity(model, result.reference_caption, other_texts=TEXT)[0]), abs=1e-5)


def test_joint_reference_is_the_weighted_mean_of_each_models(tmp_path):
    a, b = (pez_core.load_model(write_variant(tmp_path, name, width, dim, seed), device="cpu")
            for name, width, dim, seed in (("tiny-a", 16, 32, 0), ("tiny-b", 24, 40, 1)))
    result = pez_core.distill(pez_core.combine([a, b], [1, 3]), TEXT, QUICK)
    each = [float(s[0, 0]) for s in pez_core.score_each([a, b], REFERENCE_CAPTION, other_texts=TEXT)]
    assert result.reference_similarity == pytest.approx(0.25 * each[0] + 0.75 * each[1], abs=1e-5)
    assert result.to_dict()["reference_caption"] == REFERENCE_CAPTION


def test_a_learned_prompt_beats_the_plain_caption_on_the_demo_image():
    """Measured (benchmarks/reference.py): on the demo star the learned prompt leads the plain caption by
    0.32-0.35 over seeds, step counts and with the fluency prior on or off; 0.2 leaves room."""
    model = pez_core.load_model("shapes-demo", device="cpu")
    star = np.asarray(Image.open(DEMO_IMAGE).convert("RGB"), dtype=np.float32) / 255
    [result] = pez_core.invert(model, [star], PezConfig(prompt_len=6, steps=20, seed=0))
    assert result.similarity - result.reference_similarity > 0.2, (result.prompt, result.similarity)


def test_the_cli_prints_the_plain_caption_beside_the_similarity(tmp_path):
    checkpoint = str(write_tiny_checkpoint(tmp_path))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}

    def pez(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "pez_core", "distill", TEXT, "--model", checkpoint, "--steps", "4",
                               "--prompt-len", "3", *args], capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        return done
    line = pez().stdout.strip()
    found = re.search(r"\(similarity (-?[\d.]+); plain caption '(.+)': (-?[\d.]+)\)$", line)
    assert found and found[2] == REFERENCE_CAPTION, line
    row = json.loads(pez("--json").stdout)
    assert (row["reference_caption"], round(row["reference_similarity"], 3)) == (REFERENCE_CAPTION, float(found[3]))
