"""The fluency prior in the search (pez_core.engine.prior): its term in the gain, the words it proposes,
the perplexity a result reports, and nothing changed at fluency 0. The priors here are small rules, so a
test can say which word must win; a real language model as the prior: tests/lm/test_prior.py."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import pez_core
from pez_core import PezConfig, PezError, Scorer
from helpers import write_tiny_checkpoint

FAVOURITE = "lovely"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return pez_core.load_model(str(write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))), device="cpu")


class FreeTail(Scorer):
    """The gain reads the first two tokens only (cosine to "red circle"): the rest of the prompt is free,
    so only a prior can choose it, and the gradient there is zero (it ranks no word above another)."""

    def __init__(self, model):
        self.model, self.device, self.problems = model, torch.device("cpu"), 1
        self.table = torch.randn(49408, 24, generator=torch.Generator().manual_seed(0))
        self.allowed = pez_core.allowed_token_ids(model.tokenizer, "words")
        self.target = F.normalize(self.table[model.tokenize("red circle")].mean(0), dim=0)
        self.max_prompt_len, self.prompt_len_note = 8, "a test's limit"

    def gains(self, prompts, problems):
        sim = F.normalize(prompts[:, :2].mean(1), dim=-1) @ self.target
        return sim, sim

    def score_texts(self, texts, problems):
        with torch.no_grad():
            rows = [self.table[self.tokenize(t)] for t in texts]
            return self.gains(torch.stack([r if len(r) >= 2 else r.repeat(2, 1) for r in rows]), problems)

    def bytes_per_prompt(self, prompt_len):
        return 1 << 16

    def decode(self, ids):
        return self.model.decode(ids)

    def tokenize(self, text):
        return self.model.tokenize(text)


class FavouriteWord:
    """A prior that likes one word: every other word costs 5 nats; it always proposes that word first."""
    name = "favourite-word"

    def __init__(self):
        self.proposed = 0

    def log_probs(self, texts):
        return [sum(0.0 if w == FAVOURITE else -5.0 for w in t.split()) / max(1, len(t.split())) for t in texts]

    def next_words(self, prefixes, count):
        self.proposed += len(prefixes)
        return [[FAVOURITE, "the"][:count] for _ in prefixes]


CONFIG = PezConfig(prompt_len=3, steps=30, restarts=2, seed=4)


def test_fluency_zero_gives_the_same_prompt_as_no_prior(model):
    prior = FavouriteWord()
    [plain] = pez_core.search(FreeTail(model), CONFIG)
    [with_prior] = pez_core.search(FreeTail(model), CONFIG, prior=prior)
    assert (with_prior.prompt, with_prior.similarity) == (plain.prompt, plain.similarity)
    assert prior.proposed == 0  # no proposals at weight 0
    assert plain.perplexity is None and with_prior.perplexity == pytest.approx(math.exp(-prior.log_probs([plain.prompt])[0]))
    assert with_prior.fluency_model == "favourite-word"


def test_the_prior_chooses_what_the_similarity_leaves_free(model):
    """The prior's word is proposed (the gradient is zero at the free position) and kept for its
    log-probability, at no cost in similarity."""
    prior = FavouriteWord()
    [plain] = pez_core.search(FreeTail(model), CONFIG)
    [fluent] = pez_core.search(FreeTail(model), dataclasses.replace(CONFIG, fluency=0.1), prior=prior)
    assert FAVOURITE not in plain.prompt.split()
    assert fluent.prompt.split()[2:] == [FAVOURITE], fluent.prompt
    assert prior.proposed > 0
    assert fluent.similarity >= plain.similarity - 1e-6
    assert fluent.perplexity < math.exp(5.0) - 1


@pytest.mark.parametrize("fluency", [-1.0, math.nan, 11.0, "1"])
def test_bad_fluency_is_refused_naming_it(fluency):
    with pytest.raises(PezError, match="fluency must be a number from 0"):
        PezConfig(fluency=fluency).validate()


def test_empty_fluency_model_is_refused():
    with pytest.raises(PezError, match="fluency model must be"):
        PezConfig(fluency=1.0, fluency_model="  ").validate()
