"""The polishing stage (pez_core.engine.polish): swaps, pruning and its budget, kicks, the floor."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pez_core
from pez_core import Objective, PezConfig, Scorer
from pez_core.engine import polish as polish_module
from helpers import planted_problem, string_gain


class BagOfWords(Scorer):
    """A scorer whose optimum is known: cosine of the prompt's mean token embedding to that of ``words``.
    Any Scorer can be polished; this one lets a test say exactly which removals pay."""

    def __init__(self, model, words: str):
        self.model, self.device, self.problems = model, torch.device("cpu"), 1
        self.table = torch.randn(49408, 24, generator=torch.Generator().manual_seed(0))
        self.allowed = pez_core.allowed_token_ids(model.tokenizer, "words", allowlist="red, circle, star, big, on")
        self.target = F.normalize(self.table[model.tokenize(words)].mean(0), dim=0)

    def gains(self, prompts, problems):
        sim = F.normalize(prompts.mean(1), dim=-1) @ self.target
        return sim, sim

    def score_texts(self, texts, problems):
        with torch.no_grad():
            return self.gains(torch.stack([self.table[self.tokenize(t)].mean(0, keepdim=True) for t in texts]), problems)

    def decode(self, ids):
        return self.model.decode(ids)

    def tokenize(self, text):
        return self.model.tokenize(text)


class Lock(Scorer):
    """A local optimum no single swap leaves: "red circle big big" scores 0.7; the best, "red circle star on",
    scores 1.2, but each of its two later words alone (0.5) scores below "big big" (0.5 + the prefix).
    A kick at the third word ("star big", 0.5) leads there by one more swap."""

    WORDS = "red, circle, star, on, big"

    def __init__(self, model):
        self.model, self.device, self.problems = model, torch.device("cpu"), 1
        self.table = torch.randn(49408, 8, generator=torch.Generator().manual_seed(0))
        self.allowed = pez_core.allowed_token_ids(model.tokenizer, "words", allowlist=self.WORDS)

    def value(self, words: list[str]) -> float:
        prefix = 0.1 * sum(a == b for a, b in zip(words[:2], ["red", "circle"]))
        later = tuple(words[2:4])
        if later == ("star", "on"):
            return prefix + 1.0
        if later == ("big", "big"):
            return prefix + 0.5
        return prefix + 0.3 * (later[:1] == ("star",) or later[1:2] == ("on",))

    def gains(self, prompts, problems):  # prompts here are rows of the table: read back which
        keys = self.table[self.allowed]
        ids = self.allowed[(prompts @ keys.T).argmax(-1)]
        values = torch.tensor([self.value(self.model.decode(row).split()) for row in ids.tolist()])
        gain = values + 0 * prompts.sum((1, 2))  # differentiable, with a zero gradient: every move is tried
        return gain, gain

    def score_texts(self, texts, problems):
        values = torch.tensor([self.value(t.split()) for t in texts])
        return values, values

    def decode(self, ids):
        return self.model.decode(ids)

    def tokenize(self, text):
        return self.model.tokenize(text)


def test_swap_improves_a_short_run_and_reports_the_string(model):
    objective, _ = planted_problem(model, length=8, seed=1)
    result = pez_core.optimize(model, objective, PezConfig(prompt_len=8, steps=10, polish="swap+prune"))[0]
    assert result.similarity > result.unpolished_similarity + 1e-4 and result.polished
    assert result.similarity == pytest.approx(string_gain(model, objective, result.prompt), abs=1e-5)
    assert model.tokenize(result.prompt) == result.token_ids
    off = pez_core.optimize(model, objective, PezConfig(prompt_len=8, steps=10, polish="off"))[0]
    assert off.prompt == result.unpolished_prompt and off.unpolished_prompt is None and not off.polished


def test_polish_never_scores_below_the_unpolished_prompt_on_the_whole_objective(model):
    rng = np.random.default_rng(7)
    images, negative = [rng.random((32, 32, 3)) for _ in range(2)], rng.random((32, 32, 3))
    for mode in ("prune", "swap+prune"):
        for seed in range(3):
            config = PezConfig(prompt_len=6, steps=8, seed=seed, polish=mode)
            result = pez_core.style(model, images, config, negative_images=[negative], negative_weight=1.0)
            feats = model.encode_images(images + [negative])
            objective = Objective.stack([[(feats[0], 0.5), (feats[1], 0.5), (feats[2], -1.0)]])
            assert string_gain(model, objective, result.prompt) >= string_gain(model, objective, result.unpolished_prompt) - 1e-6
            assert len(result.token_ids) <= len(model.tokenize(result.unpolished_prompt))


def test_swaps_keep_to_the_word_bank_and_blocklist(model):
    bank = ["red", "green", "circle", "square", "large", "small", "dog"]
    result = pez_core.distill(model, "a big red circle", PezConfig(prompt_len=5, steps=5, allowlist=bank,
                                                                   blocklist="dog", polish="swap+prune"))
    assert set(result.prompt.split()) <= set(bank) - {"dog"}


def test_prune_removes_a_repeated_token_that_does_not_pay(model):
    scorer = BagOfWords(model, "red circle on star")
    [done] = pez_core.polish_prompts(scorer, ["red circle on star star"], "prune")
    assert done.prompt == "red circle on star" and done.similarity == pytest.approx(1.0, abs=1e-6)


def test_prune_spends_at_most_its_total_budget(model, monkeypatch):
    scorer = BagOfWords(model, "red circle on star big")
    start = "red circle on star big big on red"
    [before] = pez_core.polish_prompts(scorer, [start], "off")
    lengths = []
    for budget in (0.0, 0.05, 0.5):
        monkeypatch.setattr(polish_module, "PRUNE_BUDGET", budget)
        [done] = pez_core.polish_prompts(scorer, [start], "prune", floor=[-1.0])  # only the budget binds
        assert done.gain >= before.gain - budget * before.similarity - 1e-6
        lengths.append(len(done.token_ids))
        [guarded] = pez_core.polish_prompts(scorer, [start], "prune")  # the default floor: never below the start
        assert guarded.gain >= before.gain - 1e-6
    assert lengths == sorted(lengths, reverse=True) and lengths[-1] < lengths[0] < len(model.tokenize(start))


def test_swap_reaches_the_optimum_of_a_bag_of_words(model):
    scorer = BagOfWords(model, "red circle on star")
    [done] = pez_core.polish_prompts(scorer, ["big big big big"], "swap+prune")
    assert sorted(done.prompt.split()) == sorted("red circle on star".split())
    [swapped] = pez_core.polish_prompts(scorer, ["big big big big big"], "swap")  # swaps keep the length
    assert len(swapped.token_ids) == 5 and swapped.gain > 0.9


def test_a_kick_leaves_a_local_optimum_of_single_swaps(model):
    scorer = Lock(model)
    shown = []

    def report(prompts, similarities):
        shown.append(similarities[0])

    [done] = pez_core.polish_prompts(scorer, ["red circle big big"], "swap", report=report)
    assert done.prompt == "red circle star on" and done.similarity == pytest.approx(1.2)
    # while a kicked prompt is searched, progress shows the best held, never the worse kicked one
    assert shown[0] == pytest.approx(0.7) and shown == sorted(shown)
    # no kick starts once kick_budget strings are scored; without kicks single swaps stay where they are
    [stuck] = pez_core.polish_prompts(scorer, ["red circle big big"], "swap", kick_budget=0)
    assert stuck.prompt == "red circle big big"
