"""Prompts around the user's own words: a template with one slot ``{}`` (pez_core.engine.template and the
CLIP scorer that reads the whole prompt)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pez_core
from pez_core import Objective, PezConfig, PezError
from pez_core.clip.objective import ClipScorer
from pez_core.engine.template import FramedPrior, Template
from helpers import write_variant

IMAGE = np.random.default_rng(5).random((24, 24, 3))


@pytest.mark.parametrize("text, message", [
    ("a tiger", "has no {} slots"), ("{} and {}", "has 2 {} slots"), (None, "one {} where"),
])
def test_a_template_needs_exactly_one_slot(text, message):
    with pytest.raises(PezError, match=message):
        PezConfig(template=text).validate()


def test_the_scorer_reads_the_fixed_words_beside_the_learned_ones(model):
    """The loop's embedding path and the string path score the same whole prompt."""
    target = pez_core.clip.tasks._image_features(model, [IMAGE])
    objective = Objective.stack([[(target[0], 1.0)]])
    scorer = ClipScorer(model, objective, template=Template.parse("a photo of {}, in oil"))
    ids = model.tokenize("red fox")
    by_embedding = scorer.gains(model.token_embeddings[torch.tensor([ids])].float(), torch.tensor([0]))[1]
    by_string = scorer.score_texts(["red fox"], torch.tensor([0]))[1]
    whole = pez_core.score(model, "a photo of red fox, in oil", [IMAGE])[0, 0]
    assert float(by_embedding) == pytest.approx(float(by_string), abs=1e-5)
    assert float(by_string) == pytest.approx(float(whole), abs=1e-5)
    plain = ClipScorer(model, objective).score_texts(["red fox"], torch.tensor([0]))[1]
    assert abs(float(plain) - float(by_string)) > 1e-4  # the fixed words count


def test_invert_returns_the_whole_prompt_and_the_learned_words(model):
    config = PezConfig(prompt_len=4, steps=30, template="a tiger, {} style")
    result = pez_core.invert(model, [IMAGE], config)[0]
    assert result.prompt == f"a tiger, {result.learned_prompt} style"
    assert result.token_ids == model.tokenize(result.prompt)
    assert 1 <= len(model.tokenize(result.learned_prompt)) <= 4
    assert result.unpolished_prompt.startswith("a tiger, ") and result.unpolished_prompt.endswith(" style")
    assert result.similarity == pytest.approx(float(pez_core.score(model, result.prompt, [IMAGE])[0, 0]), abs=1e-5)
    plain = pez_core.invert(model, [IMAGE], PezConfig(prompt_len=4, steps=30))[0]
    assert plain.learned_prompt is None  # no template: the result is as it always was


def test_live_progress_shows_whole_prompts(model):
    seen = []
    pez_core.distill(model, "a red circle", PezConfig(prompt_len=3, steps=6, template="{}, photo"),
                     callback=lambda p: seen.append(p.prompt))
    assert seen and all(p.endswith(", photo") for p in seen)


def test_fixed_words_and_the_prompt_must_fit_clip_together(model):
    template = " ".join(["word"] * 70) + " {}"
    with pytest.raises(PezError, match=r"fixed words take 70 CLIP tokens and prompt_length is 8: 78 in all.*"
                                       r"lower prompt_length to 5"):
        pez_core.invert(model, [IMAGE], PezConfig(template=template))


def test_a_joint_prompt_with_a_template(tmp_path):
    models = [pez_core.load_model(write_variant(tmp_path, name, width, 32, seed), device="cpu")
              for name, width, seed in (("tiny-a", 16, 0), ("tiny-b", 24, 1))]
    result = pez_core.distill(models, "a red circle", PezConfig(prompt_len=3, steps=20, template="sks, {}"))
    assert result.prompt == f"sks, {result.learned_prompt}"
    each = [float(s[0, 0]) for s in pez_core.score_each(models, result.prompt, other_texts="a red circle")]
    assert result.similarities == pytest.approx(each, abs=1e-5)


class _Recorder:
    name = "recorder"

    def __init__(self):
        self.scored, self.asked = [], []

    def log_probs(self, texts):
        self.scored += list(texts)
        return [0.0] * len(texts)

    def next_words(self, prefixes, count):
        self.asked += list(prefixes)
        return [["red"]] * len(prefixes)

    def scoped(self):
        return self


def test_the_prior_reads_the_whole_prompt():
    inner = _Recorder()
    framed = FramedPrior(inner, Template.parse("a tiger, {} at night"))
    framed.log_probs(["in snow"])
    framed.next_words(["", "in"], 3)
    assert inner.scored == ["a tiger, in snow at night"] and inner.asked == ["a tiger,", "a tiger, in"]
